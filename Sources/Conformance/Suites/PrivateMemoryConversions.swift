import GuestKit
import GuestMemory
import HostSystem
import KVM

/// private_mem_conversions_test: a guest converts ranges of a guest_memfd
/// slot between shared and private with KVM_HC_MAP_GPA_RANGE, and checks
/// that private writes never show in shared memory, that the host always
/// sees the shared data, and that punching a hole in the guest_memfd frees
/// private memory (it reads back zero). The host answers the hypercalls the
/// way the selftest does: its attribute bits are the test's own (set
/// attributes, shared, fallocate), which KVM passes through unread.
enum ConversionsTest {
    static let dataAddress: UInt64 = 1 << 32
    static let firstDataSlot: UInt32 = 10
    /// What one vCPU converts: 2 MiB and a page, so 2 MiB ranges can start
    /// on a page boundary and still fit.
    static let dataSize = PrivateMemorySuite.hugePage + PrivateMemorySuite.page
    /// The guest_memfd: `dataSize` aligned up to 2 MiB.
    static let memfdSize: UInt64 = 2 * PrivateMemorySuite.hugePage

    /// The selftest's attribute bits ("arbitrary values, KVM doesn't care").
    static let setAttributes: UInt64 = 1 << 0
    static let mapShared: UInt64 = 1 << 1
    static let doFallocate: UInt64 = 1 << 2

    /// SYNC stages: the host checks shared data (and writes a new pattern), or only checks.
    static let syncShared: UInt64 = 0
    static let syncPrivate: UInt64 = 1

    /// (offset, size) pairs, as upstream's test_ranges.
    static let ranges: [(UInt64, UInt64)] = {
        let page = PrivateMemorySuite.page, huge = PrivateMemorySuite.hugePage
        return [(0, page), (0, huge), (page, page), (page, huge), (huge, page)]
    }()

    static func tests() -> [ConformanceTest] {
        [(1, "one_slot", "one slot"), (2, "two_slots", "two slots splitting the guest_memfd at 2 MiB, so ranges cross a slot boundary")]
            .map { slots, caseName, what in
                ConformanceTest(
                    suite: PrivateMemorySuite.name, name: "conversions.\(caseName)",
                    summary: "explicit shared/private conversions (with and without fallocate) and hole punches over \(what): "
                        + "private data stays out of shared memory, the host sees shared data, a punched private range reads zero",
                    requires: PrivateMemorySuite.withHypercalls
                ) { context in try run(context, slots: slots) }
            }
    }

    // MARK: The guest

    static func program(_ instruction: HypercallInstruction) -> GuestProgram {
        let guest = ConversionGuest(instruction: instruction)
        explicitConversion(guest, fallocate: false)
        explicitConversion(guest, fallocate: true)
        punchHole(guest, precise: false)
        punchHole(guest, precise: true)
        guest.program.done()
        return guest.program
    }

    static func map(_ guest: ConversionGuest, _ gpa: UInt64, _ size: UInt64, shared: Bool, fallocate: Bool) {
        let attributes = setAttributes | (shared ? mapShared : 0) | (fallocate ? doFallocate : 0)
        guest.mapGPARange(gpa, size, attributes: attributes, "\(shared ? "shared" : "private") 0x\(String(gpa, radix: 16))")
    }

    static func explicitConversion(_ guest: ConversionGuest, fallocate: Bool) {
        let base = dataAddress, end = dataAddress + dataSize, page = PrivateMemorySuite.page
        let (defaultPattern, initialPattern): (UInt8, UInt8) = (0xAA, 0xCC)
        let (p1, p2, p3, p4): (UInt8, UInt8, UInt8, UInt8) = (0x11, 0x22, 0x33, 0x44)
        // Memory is shared by default.
        guest.fill(base, defaultPattern, dataSize)
        guest.expectFill(base, defaultPattern, dataSize, "in shared memory it just wrote")
        guest.sync(syncShared, base, dataSize, UInt64(defaultPattern), UInt64(initialPattern))
        guest.expectFill(base, initialPattern, dataSize, "after the host wrote shared memory")
        for (offset, size) in ranges {
            let gpa = base + offset
            guest.fill(gpa, p1, size)
            // Private now: the guest's writes go to the guest_memfd, and the
            // host keeps seeing the shared pattern one.
            map(guest, gpa, size, shared: false, fallocate: fallocate)
            if size > page {
                guest.fill(gpa, p2, page)
            } else {
                guest.fill(gpa, p2, size)
                guest.sync(syncPrivate, gpa, size, UInt64(p1))
                guest.expectFill(gpa, p2, size, "in private memory")
                if gpa > base { guest.expectFill(base, initialPattern, gpa - base, "in shared memory below the private range") }
                if gpa + size < end { guest.expectFill(gpa + size, initialPattern, end - (gpa + size), "in shared memory above the private range") }
                // Odd pages back to shared: holes in a private range.
                for pageOffset in stride(from: UInt64(0), to: size, by: Int(page)) {
                    if (pageOffset / page) & 1 == 1 {
                        map(guest, gpa + pageOffset, page, shared: true, fallocate: fallocate)
                        guest.sync(syncShared, gpa + pageOffset, page, UInt64(p1), UInt64(p3))
                        guest.expectFill(gpa + pageOffset, p3, page, "in a page converted back to shared")
                    } else {
                        guest.sync(syncPrivate, gpa + pageOffset, page, UInt64(p1))
                    }
                }
            }
            // All of it back to shared; the even pages get pattern three.
            map(guest, gpa, size, shared: true, fallocate: fallocate)
            guest.fill(gpa, p3, size)
            guest.sync(syncShared, gpa, size, UInt64(p3), UInt64(p4))
            guest.expectFill(gpa, p4, size, "after the host wrote the range converted back to shared")
            guest.fill(gpa, initialPattern, size)
            // Free all private memory, so each range starts clean.
            map(guest, base, dataSize, shared: true, fallocate: true)
        }
    }

    static func punchHole(_ guest: ConversionGuest, precise: Bool) {
        let base = dataAddress, initialPattern: UInt8 = 0xCC
        // All private: this case is about the guest_memfd alone.
        map(guest, base, dataSize, shared: false, fallocate: false)
        for (offset, size) in ranges {
            let gpa = base + offset
            guest.mapGPARange(base, dataSize, attributes: mapShared | doFallocate, "punching the whole guest_memfd")
            if precise {
                guest.fill(gpa, initialPattern, size)
                guest.expectFill(gpa, initialPattern, size, "in private memory faulted in again")
            } else {
                guest.fill(base, initialPattern, dataSize)
                guest.expectFill(base, initialPattern, dataSize, "in private memory faulted in again")
            }
            guest.mapGPARange(gpa, size, attributes: mapShared | doFallocate, "punching 0x\(String(gpa, radix: 16))")
            guest.expectFill(gpa, 0, size, "in private memory after PUNCH_HOLE")
        }
    }

    // MARK: The host

    static func run(_ context: TestContext, slots: Int) throws {
        let instruction = HypercallInstruction.native(for: try context.kvm.supportedCPUID())
        var memfdKept: GuestMemfd?
        do {
            let machine = try GuestMachine(kvm: context.kvm, type: .softwareProtected)
            try machine.vm.enableCapability(.exitHypercall, arguments: [1 << BasicsSuite.mapGPARange])
            let memfd = try machine.vm.createGuestMemfd(size: memfdSize)
            memfdKept = memfd
            let slotSize = memfdSize / UInt64(slots)
            var shared: [MemoryMapping] = []
            for index in 0..<slots {
                let offset = slotSize * UInt64(index)
                let mapping = try MemoryMapping(anonymousSize: Int(slotSize), sharing: .private)
                try machine.vm.install(MemoryRegion(slot: firstDataSlot + UInt32(index), start: GuestAddress(dataAddress + offset),
                                                    mapping: mapping, guestMemfd: memfd, guestMemfdOffset: offset))
                shared.append(mapping)
            }
            try machine.mapGigabyte(containing: dataAddress)
            try machine.loadLongMode(program(instruction))
            let host = SharedView(mappings: shared, slotSize: slotSize)
            var syncs = 0, hypercalls = 0
            loop: while true {
                let ucall = try machine.runUntilUcall(timeout: 60) { exit in
                    guard case .hypercall(let call) = exit, call.number == BasicsSuite.mapGPARange else { return false }
                    let arguments = call.arguments
                    let (gpa, size, flags) = (arguments[0], arguments[1] * PrivateMemorySuite.page, arguments[2])
                    if flags & doFallocate != 0 {
                        let mode: FileSpace.Mode = flags & mapShared != 0 ? [.keepSize, .punchHole] : [.keepSize]
                        try FileSpace.allocate(memfd.fileDescriptor, mode: mode, offset: Int(gpa - dataAddress), length: Int(size))
                    }
                    if flags & setAttributes != 0 {
                        try machine.vm.setMemoryAttributes(address: gpa, size: size, attributes: flags & mapShared != 0 ? [] : .private)
                    }
                    call.setReturnValue(0)
                    hypercalls += 1
                    return true
                }
                switch ucall {
                case .sync(let stage, let values) where (stage == syncShared && values.count == 4) || (stage == syncPrivate && values.count == 3):
                    // Whatever the guest did privately, the host sees the shared data.
                    try host.expect(context, values[0], values[1], pattern: UInt8(truncatingIfNeeded: values[2]),
                                    "host reading shared memory at a SYNC (\(stage == syncShared ? "shared" : "private") range)")
                    if stage == syncShared { host.fill(values[0], values[1], UInt8(truncatingIfNeeded: values[3])) }
                    syncs += 1
                case .done:
                    break loop
                case .assertFailed(let message, let values):
                    throw guestAssertionFailure(message, values)
                default:
                    throw GuestMachine.mismatch(ucall, expected: "SYNC or DONE")
                }
            }
            context.note("\(hypercalls) MAP_GPA_RANGE exits and \(syncs) host checks over \(slots) slot(s)")
        }
        // As upstream: the guest_memfd holds a reference to its VM, so with the
        // VM's descriptors gone it can still be punched and allocated.
        guard let memfd = memfdKept else { return }
        try context.expectSuccess("PUNCH_HOLE over the guest_memfd after its VM is gone") {
            try FileSpace.allocate(memfd.fileDescriptor, mode: [.keepSize, .punchHole], offset: 0, length: Int(memfdSize))
        }
        try context.expectSuccess("allocating the guest_memfd after its VM is gone") {
            try FileSpace.allocate(memfd.fileDescriptor, mode: [.keepSize], offset: 0, length: Int(memfdSize))
        }
    }

    /// The host's view of the data range: the slots' shared mappings.
    struct SharedView {
        let mappings: [MemoryMapping]
        let slotSize: UInt64

        func bytes(_ gpa: UInt64, _ size: UInt64) -> [UnsafeMutableRawBufferPointer] {
            var pieces: [UnsafeMutableRawBufferPointer] = []
            var cursor = gpa - dataAddress
            let end = cursor + size
            while cursor < end {
                let slot = Int(cursor / slotSize), offset = Int(cursor % slotSize)
                let length = Int(min(end - cursor, slotSize - UInt64(offset)))
                pieces.append(UnsafeMutableRawBufferPointer(rebasing: mappings[slot].bytes[offset..<offset + length]))
                cursor += UInt64(length)
            }
            return pieces
        }

        func expect(_ context: TestContext, _ gpa: UInt64, _ size: UInt64, pattern: UInt8, _ what: String) throws {
            var address = gpa
            for piece in bytes(gpa, size) {
                if let bad = piece.firstIndex(where: { $0 != pattern }) {
                    throw TestFailure("\(what): expected 0x\(String(pattern, radix: 16)) at gpa 0x\(String(address + UInt64(bad), radix: 16)), found 0x\(String(piece[bad], radix: 16))")
                }
                address += UInt64(piece.count)
            }
        }

        func fill(_ gpa: UInt64, _ size: UInt64, _ pattern: UInt8) {
            for piece in bytes(gpa, size) { piece.initializeMemory(as: UInt8.self, repeating: pattern) }
        }
    }
}
