import Glibc
import KVM

/// `guest_memfd.<type>.invalid_binding`: which guest_memfd bindings
/// KVM_SET_USER_MEMORY_REGION2 refuses, and with which errno (the binding
/// cases of the kernel's set_memory_region_test.c, plus the ones
/// kvm_gmem_bind() refuses without a test there).
extension GuestMemfdSuite {
    static let bindingSize: UInt64 = 2 << 20
    static let bindingAddress: UInt64 = 0xC000_0000

    static func bindingSlot(_ fd: Int32, slot: UInt32 = 10, address: UInt64 = bindingAddress, offset: UInt64 = 0,
                            flags: MemorySlotFlags = [.guestMemfd]) -> MemorySlot {
        MemorySlot(slot: slot, flags: flags, guestPhysicalAddress: address, size: bindingSize, userspaceAddress: 0,
                   guestMemfd: fd, guestMemfdOffset: offset)
    }

    static func invalidBinding(_ context: TestContext, type: VMType) throws {
        let vm = try context.kvm.createVirtualMachine(type: type)
        let memfd = try vm.createGuestMemfd(size: bindingSize)
        // The valid binding first: a VM type that binds no guest_memfd slot at all
        // lacks the feature, which is a SKIP, not a list of failures.
        if let errno = try context.errno(of: { try vm.setUserMemoryRegion2(bindingSlot(memfd.fileDescriptor)) }) {
            try context.skip("a \(type.name) VM binds no guest_memfd memslot (KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: \(errno.symbolicName))")
        }
        try vm.setUserMemoryRegion2(MemorySlot(slot: 10, guestPhysicalAddress: bindingAddress, size: 0, userspaceAddress: 0))

        // Files that are not this VM's guest_memfd.
        let other = try context.kvm.createVirtualMachine(type: type)
        let foreign = try other.createGuestMemfd(size: bindingSize)
        var template = Array("/tmp/kestrel-gmem-bind.XXXXXX".utf8CString)
        let regular = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try context.expect(regular >= 0, "mkstemp failed")
        defer { close(regular) }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        _ = ftruncate(regular, off_t(bindingSize))
        for (what, fd) in [("the /dev/kvm fd", context.kvm.fileDescriptor), ("the VM's own fd", vm.fileDescriptor),
                           ("a regular file", regular), ("another VM's guest_memfd", foreign.fileDescriptor)] {
            try context.expectErrno(.invalidArgument, "binding \(what)") { try vm.setUserMemoryRegion2(bindingSlot(fd)) }
        }
        try context.expectSuccess("binding the other VM's guest_memfd in its own VM") {
            try other.setUserMemoryRegion2(bindingSlot(foreign.fileDescriptor))
        }
        let closed = dup(memfd.fileDescriptor)
        close(closed)
        try context.expectErrno(.badFileDescriptor, "binding a closed fd") { try vm.setUserMemoryRegion2(bindingSlot(closed)) }

        // Offsets: every unaligned one, and one that runs past the file's end.
        for offset in UInt64(1)..<UInt64(pageSize) {
            try context.expectErrno(.invalidArgument, "binding at unaligned offset \(offset)") {
                try vm.setUserMemoryRegion2(bindingSlot(memfd.fileDescriptor, offset: offset))
            }
        }
        try context.expectErrno(.invalidArgument, "binding 2 MiB at offset \(pageSize) of a 2 MiB guest_memfd (past its end)") {
            try vm.setUserMemoryRegion2(bindingSlot(memfd.fileDescriptor, offset: UInt64(pageSize)))
        }

        // Flags guest_memfd slots cannot have.
        for (name, flag) in [("KVM_MEM_LOG_DIRTY_PAGES", MemorySlotFlags.logDirtyPages), ("KVM_MEM_READONLY", .readOnly)] {
            try context.expectErrno(.invalidArgument, "KVM_MEM_GUEST_MEMFD with \(name)") {
                try vm.setUserMemoryRegion2(bindingSlot(memfd.fileDescriptor, flags: [.guestMemfd, flag]))
            }
        }

        // Overlaps: a guest_memfd range bound twice, and guest-physical ranges that overlap.
        let big = try vm.createGuestMemfd(size: 4 * bindingSize)
        try vm.setUserMemoryRegion2(bindingSlot(big.fileDescriptor, slot: 10, address: bindingAddress, offset: 0))
        // kvm_gmem_bind() refuses a range another slot holds: EINVAL until Linux
        // 7.2 made it EEXIST (7ea987a90585, "KVM: guest_memfd: Return -EEXIST for
        // overlapping bindings"), so either is right.
        let twice = try context.errno(of: {
            try vm.setUserMemoryRegion2(bindingSlot(big.fileDescriptor, slot: 11, address: 0x1_8000_0000, offset: bindingSize / 2))
        })
        try context.expect(twice == .invalidArgument || twice == .fileExists,
                           "binding a guest_memfd range that slot 10 already has, at another address: expected EINVAL or EEXIST, got "
                               + (twice.map { $0.symbolicName } ?? "success"))
        context.note("a guest_memfd range bound twice: \(twice?.symbolicName ?? "accepted")")
        try vm.setUserMemoryRegion2(bindingSlot(big.fileDescriptor, slot: 11, address: 0x1_8000_0000, offset: 2 * bindingSize))
        for address: UInt64 in [0x1_8000_0000 - bindingSize / 2, 0x1_8000_0000 + bindingSize / 2] {
            try context.expectErrno(.fileExists, "slot 12 at 0x\(String(address, radix: 16)) overlapping slot 11 in guest-physical space") {
                try vm.setUserMemoryRegion2(bindingSlot(big.fileDescriptor, slot: 12, address: address, offset: bindingSize))
            }
        }

        // An offset whose end passes INT64_MAX (the kernel's guest_memfd_test,
        // test_invalid_binding): offset + size does not wrap as a u64, which is
        // all the generic slot checks look at, so kvm_gmem_bind() must refuse it.
        let hugeOffset = UInt64(Int64.max) & ~UInt64(pageSize - 1)
        let huge = try context.errno(of: {
            try vm.setUserMemoryRegion2(bindingSlot(memfd.fileDescriptor, slot: 13, address: 0x2_0000_0000, offset: hugeOffset))
        })
        if huge == nil {
            throw TestFailure("""
                binding 2 MiB at offset 0x\(String(hugeOffset, radix: 16)) of a 2 MiB guest_memfd succeeded instead of EINVAL \
                (the range ends 0x\(String(hugeOffset + bindingSize, radix: 16)), past INT64_MAX and past the file's end)
                diagnosis: kvm_gmem_bind() (virt/kvm/guest_memfd.c) checks offset + size > i_size in signed loff_t arithmetic; \
                past INT64_MAX the sum wraps negative and passes. Fixed in Linux 7.2 by eba85fee7fc6 "KVM: guest_memfd: Treat \
                memslot binding offset+size as unsigned values"
                """)
        }
        try context.expect(huge == .invalidArgument,
                           "binding at offset 0x\(String(hugeOffset, radix: 16)), past INT64_MAX: expected EINVAL, got \(huge!.symbolicName)")
    }
}
