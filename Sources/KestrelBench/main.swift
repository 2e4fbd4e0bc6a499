import KVM
import GuestKit
import GuestMemory
let kvm = try KVMSystem()
for variant in ["hva=0", "hva=gmem mapping", "hva=anon"] {
  let gpa: UInt64 = 4 << 30
  let p = GuestProgram()
  let a = p.assembler
  a.movzxb(.rax, .at(.rdi))
  p.sync(stage: 1, .reg(.rax))
  a.mov(.rax, 0xff); a.movb(.at(.rdi), .rax)
  p.done()
  let m = try GuestMachine(kvm: kvm)
  let fd = try m.vm.createGuestMemfd(size: 4096, flags: [.mmap, .initShared])
  let map = try MemoryMapping(fileDescriptor: fd.fileDescriptor, size: 4096)
  map.bytes[0] = 0xaa
  let anon = try MemoryMapping(anonymousSize: 4096)
  let hva: UInt64 = variant == "hva=0" ? 0 : variant == "hva=anon" ? anon.address : map.address
  do {
    try m.vm.setUserMemoryRegion2(MemorySlot(slot: 1, flags: .guestMemfd, guestPhysicalAddress: gpa, size: 4096, userspaceAddress: hva, guestMemfd: fd.fileDescriptor))
    try m.mapGigabyte(containing: gpa)
    try m.loadLongMode(p, arguments: [gpa])
    print(variant, try m.runUntilUcall(), try m.runUntilUcall(), "host sees", map.bytes[0], "anon", anon.bytes[0])
  } catch { print(variant, "ERR", error) }
}
