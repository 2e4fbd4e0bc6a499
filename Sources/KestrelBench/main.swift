import KVM
import GuestKit
let kvm = try KVMSystem()
let p = GuestProgram()
let a = p.assembler
a.mov(.rax, 0x1234)
p.sync(stage: 1, .reg(.rax), 7)
p.expectingException { a.ud2() }
p.expectingException { a.mov(.rbx, p.layout.unmappedAddress); a.mov(.rax, .at(.rbx)) }
p.assertEqual(.rax, 0x1234, "rax preserved")
p.expectingException { a.int3() }
p.done()
let m = try GuestMachine(kvm: kvm)
try m.loadLongMode(p)
for _ in 0..<6 {
  do { print(try m.runUntilUcall(timeout: 3)) } catch { print("ERR", error); break }
}
