import Confidential
import GuestKit
import GuestMemory
import HostSystem
import KVM
import Synchronization
import Virtio

/// `private_mem.manager.*`: Kestrel's `ConversionManager` (the one
/// `kestrel run` uses) answering a guest's KVM_HC_MAP_GPA_RANGE hypercalls
/// with their real attribute (bit 4, ENCRYPTED, means private), on a
/// KVM_X86_SW_PROTECTED_VM: the discards are seen by the guest, bad ranges are
/// refused with -KVM_EINVAL, and a virtio device refuses a buffer the guest
/// made private.
enum PrivateMemoryManagerTests {
    static let ramAddress = ConvertibleMachine.ramAddress
    static let ramSize = ConvertibleMachine.ramSize
    /// A virtio-rng transport inside the first GiB, past the harness's RAM.
    static let deviceWindow: Range<UInt64> = 0x3000_0000..<(0x3000_0000 + MMIOTransport.windowSize)
    static let encrypted = ConversionManager.mapGPARangeEncrypted
    static let invalid = ConversionManager.hypercallInvalid

    static func tests() -> [ConformanceTest] {
        [
            ConformanceTest(
                suite: PrivateMemorySuite.name, name: "manager.conversions",
                summary: "Kestrel's conversion manager converts what the guest asks: released shared pages and punched private "
                    + "pages read back zero in the guest, half-converted and repeated ranges change only what differs, and ranges "
                    + "outside RAM, over device MMIO or with unknown attributes are refused with -KVM_EINVAL",
                requires: PrivateMemorySuite.withHypercalls
            ) { context in try conversions(context) },
            ConformanceTest(
                suite: PrivateMemorySuite.name, name: "manager.device_refuses_private_buffer",
                summary: "a guest driving virtio-rng over MMIO gets a shared buffer filled; after it converts the next buffer to "
                    + "private, the device refuses that request (DEVICE_NEEDS_RESET, one log line) and the private data is intact",
                requires: PrivateMemorySuite.withHypercalls
            ) { context in try deviceRefusesPrivateBuffer(context) },
        ]
    }

    // MARK: Conversions

    static func conversions(_ context: TestContext) throws {
        let setup = try ConvertibleMachine(kvm: context.kvm, mmio: [("virtio-rng", deviceWindow)])
        let guest = ConversionGuest(instruction: try setup.instruction)
        let base = ramAddress, page = PrivateMemorySuite.page, two = 2 * PrivateMemorySuite.page
        guest.fill(base, 0x11, two)
        guest.sync(1)
        guest.mapGPARange(base, two, attributes: encrypted, "to private")
        guest.expectFill(base, 0, two, "in private memory never written")
        guest.fill(base, 0x22, two)
        guest.sync(2)
        guest.mapGPARange(base, two, attributes: 0, "back to shared")
        guest.expectFill(base, 0, two, "in shared memory after a round trip (the manager released the old shared pages)")
        guest.fill(base, 0x33, two)
        guest.sync(3)
        guest.mapGPARange(base, two, attributes: encrypted, "to private again")
        guest.expectFill(base, 0, two, "in private memory after a round trip (the manager punched out the 0x22)")
        guest.mapGPARange(base, 3 * page, attributes: encrypted, "of three pages, two of them private already")
        guest.mapGPARange(base, 3 * page, attributes: encrypted, "repeated")
        guest.mapGPARange(base + PrivateMemorySuite.hugePage, PrivateMemorySuite.hugePage, attributes: encrypted, "of 2 MiB to private")
        guest.mapGPARange(base + PrivateMemorySuite.hugePage, PrivateMemorySuite.hugePage, attributes: 0, "of 2 MiB to shared")
        guest.sync(4)
        guest.mapGPARange(base + ramSize, page, attributes: encrypted, expected: invalid, "past the end of RAM")
        guest.mapGPARange(base + ramSize - page, two, attributes: encrypted, expected: invalid, "across the end of RAM")
        guest.mapGPARange(deviceWindow.lowerBound, page, attributes: encrypted, expected: invalid, "over the device's MMIO window")
        guest.mapGPARange(base, page, attributes: 0x100, expected: invalid, "with an unknown attribute bit")
        guest.mapGPARange(base + 0x800, page, attributes: encrypted, expected: invalid, "of an unaligned address (KVM refuses it)")
        guest.sync(5)
        guest.program.done()
        try setup.machine.loadLongMode(guest.program)

        var outcomes: [ConversionManager.Outcome] = []
        func next(_ stage: UInt64) throws {
            let ucall = try setup.machine.runUntilUcall(timeout: 30) { setup.serve($0, outcomes: &outcomes) }
            if case .assertFailed(let message, let values) = ucall { throw guestAssertionFailure(message, values) }
            guard case .sync(stage, _) = ucall else { throw GuestMachine.mismatch(ucall, expected: "SYNC(stage \(stage))") }
        }
        func expectShared(_ pattern: UInt8, _ what: String) throws {
            let bytes = setup.sharedBytes(0, two)
            if let bad = bytes.firstIndex(where: { $0 != pattern }) {
                throw TestFailure("\(what): host read 0x\(String(bytes[bad], radix: 16)) at offset \(bad), expected 0x\(String(pattern, radix: 16))")
            }
        }
        let privateRange = base..<(base + two)
        try next(1)
        try expectShared(0x11, "shared memory the guest wrote")
        try next(2)
        try expectShared(0, "shared memory behind a range now private (released by the manager; the guest's 0x22 must not show)")
        try context.expectEqual(setup.machine.memory.privateParts(of: privateRange), [privateRange], "private ranges in the address space")
        try context.expect((try? setup.machine.memory.buffer(at: GuestAddress(base), length: 1)) == nil,
                           "the address space handed out a buffer in private memory")
        try next(3)
        try expectShared(0x33, "shared memory the guest wrote after converting back")
        try next(4)
        let expected: [ConversionManager.Outcome] = [
            .converted(changed: two), .converted(changed: two), .converted(changed: two), .converted(changed: page), .unchanged,
            .converted(changed: PrivateMemorySuite.hugePage), .converted(changed: PrivateMemorySuite.hugePage),
        ]
        try context.expectEqual(outcomes, expected, "the manager's outcomes for the valid requests")
        try next(5)
        let refusals = outcomes.dropFirst(expected.count)
        try context.expectEqual(refusals.count, 4, "MAP_GPA_RANGE exits for the bad requests (the unaligned one never exits): \(refusals)")
        try context.expect(refusals.allSatisfy { if case .refused = $0 { return true } else { return false } },
                           "the manager refused every bad request: \(refusals)")
        try context.expectEqual(setup.machine.memory.privateRanges, [base..<(base + 3 * page)], "private ranges after the refusals")
        try setup.machine.expectDone()
        let statistics = setup.manager.statistics
        context.note("manager: \(statistics.toPrivate) to private, \(statistics.toShared) to shared, \(statistics.unchanged) unchanged, "
            + "\(statistics.refused) refused, \(statistics.discardFailures) discard failures")
        try context.expectEqual(statistics.discardFailures, 0, "discard failures")
        try context.expectEqual(setup.log.lines.count, 4, "log lines for the four refusals")
    }

    // MARK: A device request into private memory

    /// Queue memory in the harness's own RAM (shared, slot 0).
    static let descriptors: UInt64 = 0x20_0000, available: UInt64 = 0x20_1000, used: UInt64 = 0x20_2000
    static let queueSize: UInt32 = 8
    static let requestLength: UInt32 = 64

    /// The guest as a virtio driver: MMIO writes of `value` to a register.
    static func writeRegister(_ guest: ConversionGuest, _ offset: Int, _ value: UInt32) {
        store32(guest, deviceWindow.lowerBound + UInt64(offset), value)
    }

    /// Reads a register into RAX.
    static func readRegister(_ guest: ConversionGuest, _ offset: Int) {
        let a = guest.assembler
        a.mov(.rdi, deviceWindow.lowerBound + UInt64(offset))
        a.movl(.rax, .at(.rdi))
    }

    /// Reads `offset` until `(value & mask) != 0`, at most `tries` times (each
    /// read is an exit, so the device's thread gets to run); RAX holds the
    /// last value.
    static func poll(_ guest: ConversionGuest, _ offset: Int, mask: Int32, tries: UInt64, _ what: String) {
        let a = guest.assembler
        a.mov(.rcx, tries)
        let loop = a.here(), done = a.newLabel()
        readRegister(guest, offset)
        a.mov(.rdx, .rax)
        a.and(.rdx, mask)
        a.j(.notEqual, done)
        a.dec(.rcx)
        a.j(.notEqual, loop)
        guest.program.ucall(.assertFailed, [.register(.rax)], message: "guest gave up waiting for \(what)")
        guest.program.hang()
        a.bind(done)
    }

    static func store64(_ guest: ConversionGuest, _ address: UInt64, _ value: UInt64) {
        let a = guest.assembler
        a.mov(.rdi, address)
        a.mov(.rax, value)
        a.mov(.at(.rdi), .rax)
    }

    static func store32(_ guest: ConversionGuest, _ address: UInt64, _ value: UInt32) {
        let a = guest.assembler
        a.mov(.rdi, address)
        a.mov(.rax, UInt64(value))
        a.movl(.at(.rdi), .rax)
    }

    static func deviceRefusesPrivateBuffer(_ context: TestContext) throws {
        typealias R = MMIOTransport.Register
        let setup = try ConvertibleMachine(kvm: context.kvm, mmio: [("virtio-rng", deviceWindow)])
        let loop = try EventLoop(name: "private_mem virtio")
        let entropy = try EntropyDevice()
        let interrupts = Atomic<Int>(0)
        let log = setup.log
        let transport = try MMIOTransport(device: entropy, name: "virtio-rng", memory: setup.machine.memory, loop: loop,
                                          interruptLine: { interrupts.add(1, ordering: .relaxed) },
                                          log: { line in log.append(line) })
        try loop.start()
        defer { loop.stop() }

        let guest = ConversionGuest(instruction: try setup.instruction)
        let a = guest.assembler
        let sharedBuffer = ramAddress, privateBuffer = ramAddress + PrivateMemorySuite.page
        // Initialisation (virtio 1.2, 3.1.1), VERSION_1 only.
        writeRegister(guest, R.status, 0)
        writeRegister(guest, R.status, VirtioStatus([.acknowledge, .driver]).rawValue)
        writeRegister(guest, R.driverFeaturesSelect, 1)
        writeRegister(guest, R.driverFeatures, UInt32(VirtioFeature.version1 >> 32))
        writeRegister(guest, R.driverFeaturesSelect, 0)
        writeRegister(guest, R.driverFeatures, 0)
        writeRegister(guest, R.status, VirtioStatus([.acknowledge, .driver, .featuresOK]).rawValue)
        writeRegister(guest, R.queueSelect, 0)
        writeRegister(guest, R.queueSize, queueSize)
        for (low, address) in [(R.queueDescriptorLow, descriptors), (R.queueDriverLow, available), (R.queueDeviceLow, used)] {
            writeRegister(guest, low, UInt32(truncatingIfNeeded: address))
            writeRegister(guest, low + 4, UInt32(truncatingIfNeeded: address >> 32))
        }
        writeRegister(guest, R.queueReady, 1)
        writeRegister(guest, R.status, VirtioStatus([.acknowledge, .driver, .featuresOK, .driverOK]).rawValue)
        readRegister(guest, R.status)
        guest.program.assertEqual(.rax, .immediate(UInt64(VirtioStatus([.acknowledge, .driver, .featuresOK, .driverOK]).rawValue)),
                                  "device status after DRIVER_OK")
        // Two device-writable descriptors: 0 into shared memory, 1 into the
        // page the guest will make private. Ring entries 0 and 1 name them.
        for (index, buffer) in [sharedBuffer, privateBuffer].enumerated() {
            store64(guest, descriptors + 16 * UInt64(index), buffer)
            store64(guest, descriptors + 16 * UInt64(index) + 8, UInt64(requestLength) | 2 << 32)  // len, VIRTQ_DESC_F_WRITE
        }
        store64(guest, available, 1 << 48)  // flags 0, idx 0, ring[0] = 0, ring[1] = 1
        // The control: a request into shared memory is served.
        guest.fill(sharedBuffer, 0, PrivateMemorySuite.page)
        store32(guest, available, 1 << 16)  // idx 1
        writeRegister(guest, R.queueNotify, 0)
        poll(guest, R.interruptStatus, mask: 1, tries: 50_000, "the used-buffer interrupt")
        writeRegister(guest, R.interruptAcknowledge, 1)
        a.mov(.rdi, used)
        a.movl(.rbx, .at(.rdi))
        a.shr(.rbx, 16)
        guest.program.assertEqual(.rbx, .immediate(1), "used ring index after the shared request")
        // The test: the next buffer becomes private, holds the guest's data,
        // and is handed to the device.
        guest.mapGPARange(privateBuffer, PrivateMemorySuite.page, attributes: encrypted, "of the second buffer to private")
        guest.fill(privateBuffer, 0x5A, PrivateMemorySuite.page)
        store32(guest, available, 2 << 16)  // idx 2
        writeRegister(guest, R.queueNotify, 0)
        poll(guest, R.status, mask: Int32(VirtioStatus.needsReset.rawValue), tries: 50_000, "DEVICE_NEEDS_RESET")
        a.mov(.rbx, .rax)
        a.mov(.rdi, used)
        a.movl(.rdx, .at(.rdi))
        a.shr(.rdx, 16)
        guest.program.sync(stage: 1, .register(.rbx), .register(.rdx))
        guest.expectFill(privateBuffer, 0x5A, PrivateMemorySuite.page, "in its private buffer after the device refused it")
        guest.program.done()
        try setup.machine.loadLongMode(guest.program)

        var outcomes: [ConversionManager.Outcome] = []
        var mmioExits = 0
        let ucall = try setup.machine.runUntilUcall(timeout: 60) { exit in
            if case .mmio(let access) = exit, deviceWindow.contains(access.address) {
                let offset = access.address - deviceWindow.lowerBound
                if access.isWrite { transport.write(offset: offset, from: UnsafeRawBufferPointer(access.data)) } else { transport.read(offset: offset, into: access.data) }
                mmioExits += 1
                return true
            }
            return setup.serve(exit, outcomes: &outcomes)
        }
        if case .assertFailed(let message, let values) = ucall { throw guestAssertionFailure(message, values) }
        guard case .sync(1, let values) = ucall, values.count == 2 else { throw GuestMachine.mismatch(ucall, expected: "SYNC(stage 1)") }
        try context.expect(VirtioStatus(rawValue: UInt32(truncatingIfNeeded: values[0])).contains(.needsReset),
                           "device status the guest read: \(VirtioStatus(rawValue: UInt32(truncatingIfNeeded: values[0])))")
        try context.expectEqual(values[1], 1, "used ring index after the private request (the device must not complete it)")
        try context.expectEqual(entropy.bytesServed, Int(requestLength), "bytes the device served (the shared request only)")
        try context.expectEqual(outcomes, [.converted(changed: PrivateMemorySuite.page)], "the manager's outcome for the conversion")
        let lines = log.lines
        try context.expect(lines.count == 1 && lines[0].contains("lies in private memory; devices reach shared memory only"),
                           "the device's log for the refused request: \(lines)")
        try setup.machine.expectDone()
        context.note("\(mmioExits) MMIO exits; \(interrupts.load(ordering: .relaxed)) interrupts; device log: \(lines[0])")
    }
}
