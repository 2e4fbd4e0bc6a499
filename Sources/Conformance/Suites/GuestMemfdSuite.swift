import FoundationEssentials
import Glibc
import GuestKit
import GuestMemory
import KVM
import SystemPackage

/// Suite `guest_memfd`: every case of the kernel's guest_memfd selftest, run for
/// each VM type in KVM_CAP_VM_TYPES and each flag set that type allows, then a
/// guest that reads and writes guest_memfd memory mapped at 4 GiB.
public enum GuestMemfdSuite {
    public static let name = "guest_memfd"
    static let pageSize = MemoryMapping.pageSize
    /// Size of the guest_memfd most cases use (as upstream: four pages).
    static let totalSize = 4 * pageSize

    public static func tests(host: HostProbe) -> [ConformanceTest] {
        host.vmTypes.flatMap { tests(for: $0, host: host) }
    }

    /// The flag sets a VM type is tested with: none, MMAP, MMAP|INIT_SHARED, as
    /// far as KVM_CAP_GUEST_MEMFD_FLAGS on a VM of the type allows.
    static func flagSets(allowed: GuestMemfdFlags) -> [GuestMemfdFlags] {
        var sets: [GuestMemfdFlags] = [[]]
        if allowed.contains(.mmap) { sets.append(.mmap) }
        if allowed.contains(.initShared) { sets.append([.mmap, .initShared]) }
        return sets
    }

    static func tests(for type: VMType, host: HostProbe) -> [ConformanceTest] {
        let allowed = GuestMemfdFlags(rawValue: UInt64(host.capability(.guestMemfdFlags, vmType: type)))
        let base: [Requirement] = [.capability(.guestMemfd), .vmType(type)]
        var tests = [ConformanceTest(
            suite: name, name: "\(type.shortName).create_flags",
            summary: "each of the 64 flag bits succeeds exactly when KVM_CAP_GUEST_MEMFD_FLAGS has it",
            requires: base
        ) { context in try createFlags(context, type: type) }]
        for flags in flagSets(allowed: allowed) {
            let prefix = "\(type.shortName).flags_0x\(String(flags.rawValue, radix: 16))"
            var cases: [(String, String, @Sendable (TestContext, VirtualMachine, GuestMemfdFlags) throws -> Void)] = [
                ("create_multiple", "two guest_memfds have their own sizes and inodes", createMultiple),
                ("invalid_sizes", "sizes 1 to page size - 1 fail with EINVAL", invalidSizes),
                ("file_read_write", "read, write, pread and pwrite are refused", fileReadWrite),
            ]
            if flags.contains(.mmap) {
                if flags.contains(.initShared) {
                    cases += [
                        ("mmap_supported", "MAP_SHARED mapping reads and writes; a punched page reads back zero", mmapSupported),
                        ("fault_overflow", "access beyond the file size raises SIGBUS", faultOverflow),
                        ("collapse", "MADV_COLLAPSE fails with EINVAL; refaulting after DONTNEED works", collapse),
                        ("numa_allocation", "pages are allocated on the node mbind names (move_pages), also after a punch", numaAllocation),
                    ]
                } else {
                    cases.append(("fault_private", "every access to a page that is not shared raises SIGBUS", faultPrivate))
                }
                cases.append(("mmap_cow", "MAP_PRIVATE mapping is refused", mmapCopyOnWrite))
                cases.append(("mbind", "mbind policies (interleave, bind, default) read back with get_mempolicy; mode 999 fails with EINVAL", mbind))
            } else {
                cases.append(("mmap_not_supported", "mmap is refused without GUEST_MEMFD_FLAG_MMAP", mmapNotSupported))
            }
            cases += [
                ("file_size", "fstat gives the size and the page size as block size", fileSize),
                ("fallocate", "fallocate accepts aligned ranges and refuses the rest", fallocate),
                ("invalid_punch_hole", "unaligned PUNCH_HOLE offsets and lengths fail with EINVAL", invalidPunchHole),
            ]
            let requirements = base + (flags.isEmpty ? [] : [.capabilityBits(.guestMemfdFlags, mask: Int(flags.rawValue), vmType: type)])
            for (caseName, summary, body) in cases {
                tests.append(ConformanceTest(suite: name, name: "\(prefix).\(caseName)", summary: summary, requires: requirements) { context in
                    let vm = try context.kvm.createVirtualMachine(type: type)
                    try body(context, vm, flags)
                })
            }
        }
        tests.append(ConformanceTest(
            suite: name, name: "\(type.shortName).invalid_binding",
            summary: "KVM_SET_USER_MEMORY_REGION2 refuses foreign fds, other VMs' guest_memfds, unaligned or out-of-range offsets, LOG_DIRTY/READONLY, a range bound twice (EINVAL), a closed fd (EBADF) and overlapping slots (EEXIST)",
            requires: base + [.capability(.userMemory2)]
        ) { context in try invalidBinding(context, type: type) })
        let shared: GuestMemfdFlags = [.mmap, .initShared]
        tests.append(ConformanceTest(
            suite: name, name: "\(type.shortName).guest_access",
            summary: "a guest reads the host's 0xaa from guest_memfd memory at 4 GiB and writes 0xff back",
            requires: base + [.capability(.userMemory2), .capabilityBits(.guestMemfdFlags, mask: Int(shared.rawValue), vmType: type)]
        ) { context in try guestAccess(context, type: type) })
        tests.append(ConformanceTest(
            suite: name, name: "\(type.shortName).guest_access_mapped",
            summary: "as guest_access, with the slot's userspace_addr at the guest_memfd's own MAP_SHARED mapping",
            requires: base + [.capability(.userMemory2), .capabilityBits(.guestMemfdFlags, mask: Int(shared.rawValue), vmType: type)]
        ) { context in try runGuestAccess(context, type: type, slotAddress: .guestMemfdMapping) })
        tests.append(ConformanceTest(
            suite: name, name: "\(type.shortName).guest_access_emulated",
            summary: "as guest_access, with the read forced through KVM's instruction emulator (kvm.force_emulation_prefix): "
                + "it returns the guest_memfd's 0xaa, as the guest's own accesses do",
            requires: base + [.capability(.userMemory2), .capabilityBits(.guestMemfdFlags, mask: Int(shared.rawValue), vmType: type),
                              .kvmParameter("force_emulation_prefix")]
        ) { context in try guestAccessEmulated(context, type: type) })
        tests.append(ConformanceTest(
            suite: name, name: "\(type.shortName).guest_ram",
            summary: "a harness guest runs with all its RAM (code, page tables, stack, ucalls) in one MMAP|INIT_SHARED guest_memfd, "
                + "as `kestrel run --memory-backend guest_memfd` backs a VM; its writes land in the file",
            requires: base + [.capability(.userMemory2), .capabilityBits(.guestMemfdFlags, mask: Int(shared.rawValue), vmType: type)]
        ) { context in try guestRAM(context, type: type) })
        return tests
    }

    // MARK: Creation

    static func createFlags(_ context: TestContext, type: VMType) throws {
        let vm = try context.kvm.createVirtualMachine(type: type)
        let valid = try vm.supportedGuestMemfdFlags()
        context.note("KVM_CAP_GUEST_MEMFD_FLAGS = 0x\(String(valid.rawValue, radix: 16))")
        for bit in 0..<64 {
            let flag = GuestMemfdFlags(rawValue: 1 << UInt64(bit))
            if valid.contains(flag) {
                try context.expectSuccess("guest_memfd with flag bit \(bit) (allowed)") {
                    _ = try vm.createGuestMemfd(size: UInt64(pageSize), flags: flag)
                }
            } else {
                try context.expectErrno(.invalidArgument, "guest_memfd with flag bit \(bit) (not allowed)") {
                    _ = try vm.createGuestMemfd(size: UInt64(pageSize), flags: flag)
                }
            }
        }
    }

    static func createMultiple(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let first = try vm.createGuestMemfd(size: UInt64(pageSize), flags: flags)
        let firstStatus = try HostCall.fileStatus(first.fileDescriptor)
        try context.expectEqual(Int(firstStatus.st_size), pageSize, "first guest_memfd st_size")
        let second = try vm.createGuestMemfd(size: UInt64(2 * pageSize), flags: flags)
        let secondStatus = try HostCall.fileStatus(second.fileDescriptor)
        try context.expectEqual(Int(secondStatus.st_size), 2 * pageSize, "second guest_memfd st_size")
        let again = try HostCall.fileStatus(first.fileDescriptor)
        try context.expectEqual(Int(again.st_size), pageSize, "first guest_memfd st_size after creating the second")
        try context.expect(again.st_ino != secondStatus.st_ino, "two guest_memfds share inode \(again.st_ino)")
    }

    static func invalidSizes(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        for size in 1..<pageSize {
            try context.expectErrno(.invalidArgument, "guest_memfd of unaligned size \(size)") {
                _ = try vm.createGuestMemfd(size: UInt64(size), flags: flags)
            }
        }
    }

    // MARK: File operations

    static func fileReadWrite(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let fd = memfd.fileDescriptor
        for (call, body) in [("read", { try HostCall.read(fd) }), ("write", { try HostCall.write(fd) }),
                             ("pread", { try HostCall.pread(fd) }), ("pwrite", { try HostCall.pwrite(fd) })] as [(String, () throws -> Void)] {
            try context.expect(try context.errno(of: body) != nil, "\(call) on a guest_memfd succeeded")
        }
    }

    static func fileSize(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let status = try HostCall.fileStatus(memfd.fileDescriptor)
        try context.expectEqual(Int(status.st_size), totalSize, "st_size")
        try context.expectEqual(Int(status.st_blksize), pageSize, "st_blksize")
    }

    static func fallocate(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let fd = memfd.fileDescriptor
        let keep: FileSpace.Mode = .keepSize
        let punch: FileSpace.Mode = [.keepSize, .punchHole]
        let page = pageSize
        let cases: [(String, FileSpace.Mode, Int, Int, Bool)] = [
            ("allocate the whole file", keep, 0, totalSize, true),
            ("punch with unaligned offset", punch, page - 1, page, false),
            ("allocate at the file size", keep, totalSize, page, false),
            ("allocate beyond the file size", keep, totalSize + page, page, false),
            ("punch at the file size", punch, totalSize, page, true),
            ("punch beyond the file size", punch, totalSize + page, page, true),
            ("punch with unaligned length", punch, page, page - 1, false),
            ("punch an aligned page", punch, page, page, true),
            ("allocate the punched page again", keep, page, page, true),
        ]
        for (what, mode, offset, length, succeeds) in cases {
            let errno = try context.errno(of: { try FileSpace.allocate(fd, mode: mode, offset: offset, length: length) })
            if succeeds {
                try context.expect(errno == nil, "fallocate: \(what) (offset \(offset), length \(length)) failed with \(errno?.symbolicName ?? "")")
            } else {
                try context.expect(errno != nil, "fallocate: \(what) (offset \(offset), length \(length)) succeeded")
            }
        }
    }

    static func invalidPunchHole(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let page = pageSize
        let cases: [(Int, Int)] = [
            (0, 1), (0, page - 1), (0, page + 1),
            (1, 1), (1, page - 1), (1, page), (1, page + 1),
            (page, 1), (page, page - 1), (page, page + 1),
        ]
        for (offset, length) in cases {
            try context.expectErrno(.invalidArgument, "PUNCH_HOLE at offset \(offset), length \(length)") {
                try FileSpace.allocate(memfd.fileDescriptor, mode: [.keepSize, .punchHole], offset: offset, length: length)
            }
        }
    }

    // MARK: Mapping

    static func mmapNotSupported(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        for size in [pageSize, totalSize] {
            try context.expect(try mappingErrno(memfd, size: size, sharing: .shared) != nil,
                               "MAP_SHARED mmap of \(size) bytes succeeded without GUEST_MEMFD_FLAG_MMAP")
        }
    }

    static func mmapCopyOnWrite(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        try context.expect(try mappingErrno(memfd, size: totalSize, sharing: .private) != nil,
                           "MAP_PRIVATE (copy-on-write) mmap of a guest_memfd succeeded")
    }

    /// The errno of an mmap attempt, or nil when it succeeded (then unmapped).
    static func mappingErrno(_ memfd: GuestMemfd, size: Int, sharing: MemoryMapping.Sharing) throws -> Errno? {
        do {
            _ = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: size, sharing: sharing)
            return nil
        } catch let error as SystemCallError {
            return error.errno
        }
    }

    /// Reads the whole buffer under the SIGBUS guard and checks every byte.
    static func expectBytes(_ context: TestContext, _ buffer: UnsafeMutableRawBufferPointer, _ expected: (Int) -> UInt8, _ what: String) throws {
        let (bytes, outcome) = GuardedAccess.read(UnsafeRawBufferPointer(buffer))
        if case .sigbus(let offset) = outcome { throw TestFailure("\(what): SIGBUS reading offset \(offset)") }
        if let offset = bytes.indices.first(where: { bytes[$0] != expected($0) }) {
            throw TestFailure("\(what): byte at offset \(offset) is 0x\(String(bytes[offset], radix: 16)), expected 0x\(String(expected(offset), radix: 16))")
        }
    }

    static func expectFill(_ context: TestContext, _ buffer: UnsafeMutableRawBufferPointer, _ value: UInt8, _ what: String) throws {
        if case .sigbus(let offset) = GuardedAccess.fill(buffer, with: value) {
            throw TestFailure("\(what): SIGBUS writing offset \(offset)")
        }
    }

    static func mmapSupported(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: totalSize, sharing: .shared)
        try expectFill(context, mapping.bytes, 0xAA, "filling the mapping")
        try expectBytes(context, mapping.bytes, { _ in 0xAA }, "after filling with 0xaa")
        try FileSpace.allocate(memfd.fileDescriptor, mode: [.keepSize, .punchHole], offset: 0, length: pageSize)
        try expectBytes(context, mapping.bytes, { $0 < pageSize ? 0 : 0xAA }, "after punching the first page")
        try expectFill(context, UnsafeMutableRawBufferPointer(rebasing: mapping.bytes[0..<pageSize]), 0xAA, "refilling the punched page")
        try expectBytes(context, mapping.bytes, { _ in 0xAA }, "after refilling the punched page")
    }

    static func faultOverflow(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: 4 * totalSize, sharing: .shared)
        let fill = GuardedAccess.fill(mapping.bytes, with: 0xAA)
        try context.expectEqual(fill, .sigbus(offset: totalSize), "filling a mapping 4x the file size")
        let (_, read) = GuardedAccess.read(UnsafeRawBufferPointer(rebasing: mapping.bytes[totalSize..<(totalSize + 1)]))
        try context.expectEqual(read, .sigbus(offset: 0), "reading the first byte beyond the file size")
        try expectBytes(context, UnsafeMutableRawBufferPointer(rebasing: mapping.bytes[0..<totalSize]), { _ in 0xAA }, "the file's own pages")
    }

    static func faultPrivate(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        let memfd = try vm.createGuestMemfd(size: UInt64(totalSize), flags: flags)
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: totalSize, sharing: .shared)
        for page in 0..<(totalSize / pageSize) {
            let start = page * pageSize
            let write = GuardedAccess.fill(UnsafeMutableRawBufferPointer(rebasing: mapping.bytes[start..<(start + pageSize)]), with: 0xAA)
            try context.expectEqual(write, .sigbus(offset: 0), "writing page \(page) (not shared)")
            let (_, read) = GuardedAccess.read(UnsafeRawBufferPointer(rebasing: mapping.bytes[(start + pageSize - 1)..<(start + pageSize)]))
            try context.expectEqual(read, .sigbus(offset: 0), "reading the last byte of page \(page) (not shared)")
        }
    }

    static func collapse(_ context: TestContext, _ vm: VirtualMachine, _ flags: GuestMemfdFlags) throws {
        guard let hugePage = HostCall.transparentHugePageSize() else {
            try context.skip("transparent huge pages are not configured (no hpage_pmd_size)")
        }
        let memfd = try vm.createGuestMemfd(size: UInt64(hugePage), flags: flags)
        // Reserve twice the huge page size so a huge-page-aligned address exists
        // inside, then map the guest_memfd there with MAP_FIXED.
        let reservation = try MemoryMapping(anonymousSize: 2 * hugePage, sharing: .private)
        let aligned = (reservation.address + UInt64(hugePage) - 1) & ~UInt64(hugePage - 1)
        guard let target = UnsafeMutableRawPointer(bitPattern: UInt(aligned)) else { throw TestFailure("null aligned address") }
        // Sound: [target, target + hugePage) lies inside `reservation`, which we own;
        // MAP_FIXED replaces part of it and `reservation`'s munmap removes it later.
        let mapped = mmap(target, hugePage, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_SHARED, memfd.fileDescriptor, 0)
        guard mapped == target else {
            throw TestFailure("MAP_FIXED|MAP_SHARED mmap of the guest_memfd failed: \(Errno(rawValue: Glibc.errno).symbolicName)")
        }
        let buffer = UnsafeMutableRawBufferPointer(start: target, count: hugePage)
        // Populate with reads only, so no page is dirtied.
        for offset in stride(from: 0, to: hugePage, by: pageSize) {
            let (_, outcome) = GuardedAccess.read(UnsafeRawBufferPointer(rebasing: buffer[offset..<(offset + 1)]))
            try context.expectEqual(outcome, .completed, "reading page at offset \(offset)")
        }
        try context.expect(madvise(target, hugePage, MADV_HUGEPAGE) == 0,
                           "MADV_HUGEPAGE failed: \(Errno(rawValue: Glibc.errno).symbolicName)")
        let collapseResult = madvise(target, hugePage, 25 /* MADV_COLLAPSE */)
        let collapseErrno = Errno(rawValue: Glibc.errno)
        try context.expect(collapseResult == -1, "MADV_COLLAPSE on guest_memfd memory succeeded")
        try context.expectEqual(collapseErrno, .invalidArgument, "MADV_COLLAPSE errno")
        try context.expect(madvise(target, hugePage, MADV_DONTNEED) == 0,
                           "MADV_DONTNEED failed: \(Errno(rawValue: Glibc.errno).symbolicName)")
        let (_, refault) = GuardedAccess.read(UnsafeRawBufferPointer(rebasing: buffer[0..<1]))
        try context.expectEqual(refault, .completed, "refaulting after MADV_DONTNEED")
    }

    // MARK: Guest access

    /// Where the guest_access slot's `userspace_addr` points.
    enum SlotAddress {
        /// 0, as upstream: KVM must serve guest faults from the guest_memfd.
        case none
        /// The guest_memfd's own MAP_SHARED mapping (what a VMM may also pass).
        case guestMemfdMapping
        /// Unrelated anonymous memory: a probe of which backing KVM really uses.
        case unrelatedMemory
    }

    /// The guest program: RDI = gpa, RSI = size; check every byte is 0xaa,
    /// then fill with 0xff.
    static func guestAccessProgram() -> GuestProgram {
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rbx, .rdi)
        a.mov(.rcx, .rsi)
        let check = a.here()
        a.movzxb(.rax, .at(.rbx))
        let good = a.newLabel()
        a.cmp(.rax, 0xAA)
        a.j(.equal, good)
        a.mov(.rdx, .rbx)
        a.sub(.rdx, .rdi)
        program.ucall(.assertFailed, [.register(.rax), .immediate(0xAA), .register(.rdx)],
                      message: "guest expected 0xaa in guest_memfd memory")
        program.hang()
        a.bind(good)
        a.inc(.rbx)
        a.dec(.rcx)
        a.j(.notEqual, check)
        a.mov(.rcx, .rsi)
        a.mov(.rax, 0xFF)
        a.repStosb()
        program.done()
        return program
    }

    /// Runs the guest against a one-page guest_memfd slot at 4 GiB whose
    /// contents the host set to 0xaa, then checks the host sees 0xff.
    static func runGuestAccess(_ context: TestContext, type: VMType, slotAddress: SlotAddress) throws {
        let (machine, mapping) = try accessMachine(context, type: type, slotAddress: slotAddress)
        try machine.loadLongMode(guestAccessProgram(), arguments: [accessAddress, UInt64(pageSize)])
        let ucall = try machine.runUntilUcall()
        if case .assertFailed(let message, let values) = ucall, values.count == 3 {
            throw TestFailure("\(message): got 0x\(String(values[0], radix: 16)) at offset \(values[2])")
        }
        guard case .done = ucall else { throw GuestMachine.mismatch(ucall, expected: "DONE") }
        try expectBytes(context, mapping.bytes, { _ in 0xFF }, "host reading what the guest wrote, through the guest_memfd mapping")
    }

    /// Where the guest_access slot lies: 4 GiB, one page.
    static let accessAddress: UInt64 = 4 << 30

    /// A machine with a one-page MMAP|INIT_SHARED guest_memfd slot at
    /// `accessAddress`, which the host filled with 0xaa, its `userspace_addr`
    /// as `slotAddress` says; and the host's own mapping of the file.
    static func accessMachine(_ context: TestContext, type: VMType, slotAddress: SlotAddress) throws -> (GuestMachine, MemoryMapping) {
        let gpa = accessAddress
        let size = pageSize
        let machine = try GuestMachine(kvm: context.kvm, type: type)
        let memfd = try machine.vm.createGuestMemfd(size: UInt64(size), flags: [.mmap, .initShared])
        let mapping = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: size, sharing: .shared)
        try expectFill(context, mapping.bytes, 0xAA, "host filling guest_memfd before the guest runs")
        // The region owns whichever host memory its slot points at, and the VM
        // keeps the region while the guest runs: the unrelated mapping of the
        // probe run cannot be freed under the guest.
        let hostMemory: MemoryMapping?
        switch slotAddress {
        case .none: hostMemory = nil
        case .guestMemfdMapping: hostMemory = mapping
        case .unrelatedMemory: hostMemory = try MemoryMapping(anonymousSize: size, sharing: .shared)
        }
        try machine.vm.install(MemoryRegion(slot: 1, start: GuestAddress(gpa), mapping: hostMemory, size: UInt64(size),
                                            guestMemfd: memfd, guestMemfdOffset: 0))
        try machine.mapGigabyte(containing: gpa)
        return (machine, mapping)
    }

    /// What one forced-emulated read of the slot's first byte gave.
    enum EmulatedRead: Equatable {
        case value(UInt64)
        case mmioExit(address: UInt64)
    }

    /// Reads the first byte of the guest_access slot with an instruction KVM
    /// must emulate (the forced-emulation prefix), and reports what came back.
    static func emulatedRead(_ context: TestContext, type: VMType, slotAddress: SlotAddress) throws -> EmulatedRead {
        let (machine, _) = try accessMachine(context, type: type, slotAddress: slotAddress)
        let program = GuestProgram()
        let a = program.assembler
        a.forcedEmulationPrefix()
        a.movzxb(.rax, .at(.rdi))
        program.sync(stage: 1, .register(.rax))
        program.done()
        try machine.loadLongMode(program, arguments: [accessAddress])
        let exit = try machine.runUntilExit()
        switch exit {
        case .mmio(let mmio):
            return .mmioExit(address: mmio.address)
        case .io(let io) where io.port == ucallPort:
            let ucall = try UcallRecord.decode(at: UInt64(io.value), in: machine.memory)
            guard case .sync(1, let values) = ucall else { throw GuestMachine.mismatch(ucall, expected: "SYNC(stage 1)") }
            return .value(values[0])
        default:
            throw machine.unexpected(exit)
        }
    }

    /// KVM's emulator reads guest memory through the slot's `userspace_addr`
    /// (kvm_vcpu_read_guest() -> gfn_to_hva_memslot()), for a gmem-only slot
    /// too, and falls back to MMIO when that fails; only the MMU's fault path
    /// takes an MMAP guest_memfd. The control reads the same byte with
    /// `userspace_addr` at the guest_memfd's mapping.
    static func guestAccessEmulated(_ context: TestContext, type: VMType) throws {
        let read = try emulatedRead(context, type: type, slotAddress: .none)
        if read == .value(0xAA) { return }
        let control = try emulatedRead(context, type: type, slotAddress: .guestMemfdMapping)
        let what: String
        switch read {
        case .value(let value): what = "returned 0x\(String(value, radix: 16)) instead of 0xaa"
        case .mmioExit(let address): what = "left KVM as KVM_EXIT_MMIO at 0x\(String(address, radix: 16))"
        }
        let controlText: String
        switch control {
        case .value(let value): controlText = "returned 0x\(String(value, radix: 16))"
        case .mmioExit(let address): controlText = "left KVM as KVM_EXIT_MMIO at 0x\(String(address, radix: 16)) too"
        }
        throw TestFailure("""
            a forced-emulated read of the MMAP guest_memfd slot at 4 GiB (userspace_addr 0) \(what); with userspace_addr at the \
            guest_memfd's mapping, the same read \(controlText)
            diagnosis: KVM's instruction emulator reaches guest memory through the slot's userspace_addr \
            (kvm_vcpu_read_guest() and gfn_to_hva_memslot() in virt/kvm/kvm_main.c), for a gmem-only MMAP slot too, and \
            turns a failed access into MMIO (emulator_read_write_onepage()); only the MMU's fault path takes an MMAP \
            guest_memfd (Documentation/virt/kvm/api.rst, KVM_CREATE_GUEST_MEMFD). A gmem-only slot needs userspace_addr \
            at the file's mapping for any access KVM emulates
            """)
    }

    /// A whole harness VM on guest_memfd RAM: the guest checks the host's 0xaa
    /// in a scratch page and writes 0xff; the host then reads the page through
    /// a second, independent mapping of the file.
    static func guestRAM(_ context: TestContext, type: VMType) throws {
        // The flags come from a VM of the same type (KVM_CAP_GUEST_MEMFD_FLAGS is per type).
        let flags = try context.kvm.createVirtualMachine(type: type).guestMemfdFlagsForRAM()
        let machine = try GuestMachine(kvm: context.kvm, type: type, ramBacking: .guestMemfd(flags))
        guard let region = machine.vm.regions.first, let memfd = region.guestMemfd else {
            throw TestFailure("slot 0 has no guest_memfd: the machine was not built on guest_memfd RAM")
        }
        let page = GuestAddress(LongModeLayout(memorySize: machine.memorySize).scratchAddress)
        try expectFill(context, try machine.memory.buffer(at: page, length: pageSize), 0xAA, "host filling a scratch page of guest_memfd RAM")
        try machine.loadLongMode(guestAccessProgram(), arguments: [page.rawValue, UInt64(pageSize)])
        let ucall = try machine.runUntilUcall()
        if case .assertFailed(let message, let values) = ucall, values.count == 3 {
            throw TestFailure("\(message): got 0x\(String(values[0], radix: 16)) at offset \(values[2])")
        }
        guard case .done = ucall else { throw GuestMachine.mismatch(ucall, expected: "DONE") }
        let second = try MemoryMapping(fileDescriptor: memfd.fileDescriptor, size: pageSize, offset: Int(page.rawValue), sharing: .shared)
        try expectBytes(context, second.bytes, { _ in 0xFF }, "a second mapping of the guest_memfd reading what the guest wrote")
    }

    /// Upstream's guest test: the slot has no userspace address, so every guest
    /// access must be served by the MMAP guest_memfd. When it fails, a second
    /// run with the slot's address pointing at unrelated memory shows which
    /// backing KVM actually used.
    static func guestAccess(_ context: TestContext, type: VMType) throws {
        do {
            try runGuestAccess(context, type: type, slotAddress: .none)
        } catch let error as HarnessError {
            let probe: String
            do {
                try runGuestAccess(context, type: type, slotAddress: .unrelatedMemory)
                probe = "with userspace_addr pointing at unrelated memory, the guest read the guest_memfd's data (unexpectedly fine)"
            } catch let probeError {
                probe = "with userspace_addr pointing at unrelated memory instead, the guest ran against that memory (\(probeError))"
            }
            throw TestFailure("""
                KVM did not serve the guest's access to the GUEST_MEMFD_FLAG_MMAP slot at 4 GiB from the guest_memfd \
                (userspace_addr 0): \(error)
                diagnosis: \(probe); this host took the guest's accesses through the slot's userspace_addr, as KVM's \
                instruction emulator does for every access it emulates, gmem-only slots included (guest_access_emulated \
                shows the same on upstream KVM with forced emulation); a host that emulates guest instructions, such as \
                kvm_pvm, meets it on every access
                """)
        }
    }

}
