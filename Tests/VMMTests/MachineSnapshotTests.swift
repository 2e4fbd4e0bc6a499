import Glibc
import KVM
import Testing
import Virtio
@testable import VMM
import X86

/// The snapshot state file: what is written reads back the same, and a file
/// that is corrupt, truncated, of another version or not a snapshot at all is
/// refused with a reason, before anything would be built from it.
@Suite(.timeLimit(.minutes(5))) struct MachineSnapshotTests {
    static func sample() throws -> MachineSnapshot {
        var registers = Registers()
        registers.rip = 0x100_0013
        registers.rbx = 41
        let cpuid = [CPUIDEntry(function: 0, eax: 0xD, ebx: 0x756E_6547), CPUIDEntry(function: 1, ecx: 1 << 26)]
        var xsave = [UInt8](repeating: 0, count: 4096)
        xsave[512] = 7
        let vcpu = VCPUSnapshot(
            registers: registers, specialRegisters: SpecialRegisters(), fpu: FPUState(), extendedControlRegisters: ExtendedControlRegisters(),
            events: VCPUEvents(), mpState: .halted, msrs: [MSREntry(index: 0x10, value: 123_456_789), MSREntry(index: 0xC000_0080, value: 0xD01)],
            guestSSP: nil, features: CPUFeatureSet(table: CPUIDTable(entries: cpuid)), xsave: try XSAVEState(bytes: xsave),
            localAPIC: [UInt8](repeating: 3, count: 1024), debugRegisters: try DebugRegisters(stateBytes: [UInt8](repeating: 0, count: 128)))
        let queue = MMIOTransport.SavedQueue(configuration: QueueConfiguration(size: 256, descriptorTable: 0x10_0000, availableRing: 0x10_1000, usedRing: 0x10_2000),
                                             ready: true, nextAvailable: 65_535, nextUsed: 7, notifiedUsed: 6)
        let device = MMIOTransport.SavedState(deviceType: 4, deviceFeaturesSelect: 1, driverFeaturesSelect: 1, driverFeatures: 1 << 32,
                                              queueSelect: 0, status: 15, active: true, interruptStatus: 1, queues: [queue])
        return MachineSnapshot(
            kestrelVersion: "0.1.0", configuration: #"{"boot-source":{"kernel_image_path":"/k"}}"#,
            memory: [.init(guestAddress: 0, size: 64 << 20, fileOffset: 0)], vcpus: [.init(cpuid: cpuid, state: vcpu)],
            interruptControllers: InterruptControllerState.Chip.allCases.map { InterruptControllerState(chip: $0) },
            pit: PITState(), clock: ClockState(nanoseconds: 5_000_000_000),
            serial: Serial16550.SavedState(interruptEnable: 2, unreadInput: [0x41, 0x0A]),
            keyboard: I8042Controller.SavedState(controlByte: 0x47, outputQueue: [0xFA], scanning: false, pendingKeyboardCommand: 0xED),
            devices: [device],
            lineage: SnapshotLineage(kind: .diff, id: Array(1...16), parent: Array(17...32), dataBytes: 12_288, dataDigest: 0xDEAD_BEEF))
    }

    /// `bytes` with the CRC at its end computed again (for files that are
    /// wrong in a way the CRC alone would not show).
    static func resealed(_ bytes: [UInt8]) -> [UInt8] {
        var body = Array(bytes.dropLast(4))
        let crc = CRC32.checksum(body[...])
        withUnsafeBytes(of: crc.littleEndian) { body += $0 }
        return body
    }

    @Test func aStateFileReadsBackAsWritten() throws {
        let snapshot = try Self.sample()
        let bytes = snapshot.encoded()
        #expect(Array(bytes.prefix(8)) == Array("KSTLSNAP".utf8))
        let decoded = try MachineSnapshot.decode(bytes)
        #expect(decoded == snapshot)
        #expect(decoded.vcpus[0].state.registers.rip == 0x100_0013 && decoded.vcpus[0].state.mpState == .halted)
        #expect(decoded.vcpus[0].state.xsave?.bytes[512] == 7)
        #expect(decoded.devices[0].queues[0].nextAvailable == 65_535)
        #expect(decoded.memoryFileSize == 64 << 20)
        #expect(decoded.encoded() == bytes, "encoding is deterministic")
    }

    @Test func theCRCOfAKnownInputIsZlibs() {
        #expect(CRC32.checksum(Array("123456789".utf8)[...]) == 0xCBF4_3926)
    }

    @Test func everyFlippedByteIsRefused() throws {
        let bytes = try Self.sample().encoded()
        var refused = 0
        for index in stride(from: 0, to: bytes.count, by: 97) {
            var corrupt = bytes
            corrupt[index] ^= 0x20
            do { _ = try MachineSnapshot.decode(corrupt) } catch { refused += 1 }
        }
        #expect(refused == (bytes.count + 96) / 97)
        var flipped = bytes
        flipped[bytes.count / 2] ^= 1
        #expect(throws: SnapshotError.self) { try MachineSnapshot.decode(flipped) }
        do { _ = try MachineSnapshot.decode(flipped) } catch {
            #expect("\(error)".contains("CRC-32"), "\(error)")
        }
    }

    @Test func aTruncatedFileIsRefusedAtEveryLength() throws {
        let bytes = try Self.sample().encoded()
        for length in [0, 4, 8, 11, 12, 16, 100, bytes.count / 2, bytes.count - 5, bytes.count - 1] {
            #expect(throws: SnapshotError.self, "\(length) bytes") { try MachineSnapshot.decode(Array(bytes.prefix(length))) }
            // Truncated and then given a matching CRC: the sections themselves are short.
            if length > 16 {
                #expect(throws: SnapshotError.self, "\(length) bytes, resealed") { try MachineSnapshot.decode(Self.resealed(Array(bytes.prefix(length)))) }
            }
        }
    }

    @Test func anotherFormatVersionOrMagicIsRefusedByName() throws {
        var bytes = try Self.sample().encoded()
        #expect(bytes[8] == 3, "format version 3 (version 1 had no KBDC section, version 2 no MEMO)")
        bytes[8] = 2
        do {
            _ = try MachineSnapshot.decode(Self.resealed(bytes))
            Issue.record("version 2 was read")
        } catch {
            #expect("\(error)".contains("format version 2") && "\(error)".contains("version 3 only"), "\(error)")
        }
        do {
            _ = try MachineSnapshot.decode(Array("GARBAGE!".utf8) + [UInt8](repeating: 0, count: 64))
            Issue.record("garbage was read")
        } catch {
            #expect("\(error)".contains("not a Kestrel snapshot"), "\(error)")
        }
    }

    @Test func aFileMissingASectionOrWithAnUnknownOneIsRefused() throws {
        let snapshot = try Self.sample()
        var noIRQ = snapshot
        noIRQ.interruptControllers.removeLast()
        #expect(throws: SnapshotError.self) { try MachineSnapshot.decode(noIRQ.encoded()) }
        var noVCPU = snapshot
        noVCPU.vcpus = []
        #expect(throws: SnapshotError.self) { try MachineSnapshot.decode(noVCPU.encoded()) }
        var unaligned = snapshot
        unaligned.memory[0].size = 4097
        #expect(throws: SnapshotError.self) { try MachineSnapshot.decode(unaligned.encoded()) }
        // A KBDC section under another known tag is refused, not read as that section.
        var noKeyboard = snapshot.encoded()
        let kbdc = Array("KBDC".utf8)
        let kbdcAt = try #require((0..<(noKeyboard.count - 4)).first { Array(noKeyboard[$0..<($0 + 4)]) == kbdc })
        noKeyboard.replaceSubrange(kbdcAt..<(kbdcAt + 4), with: Array("UART".utf8))
        do {
            _ = try MachineSnapshot.decode(Self.resealed(noKeyboard))
            Issue.record("a second UART section in place of KBDC was read")
        } catch {
            #expect("\(error)".contains("two UART sections"), "\(error)")
        }
        // No lineage: MEMO renamed to a second CLCK.
        var noLineage = snapshot.encoded()
        let memo = Array("MEMO".utf8)
        let memoAt = try #require((0..<(noLineage.count - 4)).first { Array(noLineage[$0..<($0 + 4)]) == memo })
        noLineage.replaceSubrange(memoAt..<(memoAt + 4), with: Array("CLCK".utf8))
        #expect(throws: SnapshotError.self) { try MachineSnapshot.decode(Self.resealed(noLineage)) }
        // An unknown tag: rename the PIT2 section.
        var bytes = snapshot.encoded()
        let tag = Array("PIT2".utf8)
        let at = try #require((0..<(bytes.count - 4)).first { Array(bytes[$0..<($0 + 4)]) == tag })
        bytes.replaceSubrange(at..<(at + 4), with: Array("XXXX".utf8))
        do {
            _ = try MachineSnapshot.decode(Self.resealed(bytes))
            Issue.record("an unknown section was read")
        } catch {
            #expect("\(error)".contains("unknown section \"XXXX\""), "\(error)")
        }
    }
}

/// Files a user names are opened without blocking: a FIFO as a kernel or a
/// snapshot state file is refused at once instead of waiting for a writer.
@Suite(.timeLimit(.minutes(1))) struct NamedFileTests {
    static func fifo(_ name: String) throws -> String {
        let path = "/tmp/kestrel-\(getpid())-\(name)"
        unlink(path)
        try #require(mkfifo(path, 0o600) == 0)
        return path
    }

    @Test func aFIFOKernelIsRefusedWithoutBlocking() throws {
        let path = try Self.fifo("vmlinux")
        defer { unlink(path) }
        #expect(throws: ConfigurationError("the kernel \(path) is a FIFO, not a regular file")) { try MachineBuilder.readFile(path, what: "kernel") }
        let configuration = MachineConfiguration(kernelPath: path)
        #expect(throws: ConfigurationError("the kernel \(path) is a FIFO, not a regular file")) { try configuration.validate() }
    }

    @Test func aFIFOSnapshotStateFileIsRefusedWithoutBlocking() throws {
        let path = try Self.fifo("vm.state")
        defer { unlink(path) }
        do {
            _ = try MachineBuilder.checkSnapshot(statePath: path, memoryPath: "/nonexistent")
            Issue.record("a FIFO was read as a state file")
        } catch {
            #expect("\(error)" == "the snapshot state file \(path) is a FIFO, not a regular file", "\(error)")
        }
    }
}

/// A snapshot load's overrides (Firecracker's vsock_override and
/// clock_realtime), applied to the configuration the snapshot holds.
@Suite(.timeLimit(.minutes(1))) struct SnapshotLoadOptionsTests {
    @Test func theVsockPathIsReplacedOnlyWhereThereIsAVsock() throws {
        var withVsock = MachineConfiguration(kernelPath: "/k")
        withVsock.vsock = VsockConfiguration(guestCID: 7, udsPath: "/old/v.sock")
        try SnapshotLoadOptions(vsockPath: "/new/v.sock").apply(to: &withVsock, clock: ClockState(nanoseconds: 1))
        #expect(withVsock.vsock?.udsPath == "/new/v.sock" && withVsock.vsock?.guestCID == 7)
        var without = MachineConfiguration(kernelPath: "/k")
        #expect(throws: SnapshotError("vsock_override: the snapshot's machine has no vsock device")) {
            try SnapshotLoadOptions(vsockPath: "/new/v.sock").apply(to: &without, clock: ClockState(nanoseconds: 1))
        }
    }

    /// Firecracker's network_overrides: the named interface gets the new
    /// tap and keeps its MAC; an unknown or repeated interface is refused.
    @Test func networkOverridesReplaceTheTapOfANamedInterface() throws {
        var configuration = MachineConfiguration(kernelPath: "/k")
        configuration.networkInterfaces = [NetworkInterfaceConfiguration(id: "eth0", tapName: "tap0", guestMAC: "06:00:00:00:00:01"),
                                           NetworkInterfaceConfiguration(id: "eth1", tapName: "tap1")]
        try SnapshotLoadOptions(networkOverrides: [NetworkOverride(interfaceID: "eth1", hostDeviceName: "clone3")])
            .apply(to: &configuration, clock: ClockState(nanoseconds: 1))
        #expect(configuration.networkInterfaces.map(\.tapName) == ["tap0", "clone3"])
        #expect(configuration.networkInterfaces[0].guestMAC == "06:00:00:00:00:01")
        #expect(throws: SnapshotError("network_overrides: the snapshot's machine has no interface \"eth9\" (it has \"eth0\", \"eth1\")")) {
            try SnapshotLoadOptions(networkOverrides: [NetworkOverride(interfaceID: "eth9", hostDeviceName: "t")])
                .apply(to: &configuration, clock: ClockState(nanoseconds: 1))
        }
        #expect(throws: SnapshotError("network_overrides: interface \"eth0\" is overridden twice")) {
            try SnapshotLoadOptions(networkOverrides: [NetworkOverride(interfaceID: "eth0", hostDeviceName: "a"), NetworkOverride(interfaceID: "eth0", hostDeviceName: "b")])
                .apply(to: &configuration, clock: ClockState(nanoseconds: 1))
        }
    }

    /// RAM with private pages (a VM whose guest converted some) is refused
    /// by name for a snapshot, a live one and a dump; all shared passes.
    @Test func privateMemoryIsRefusedByName() throws {
        try Machine.refusePrivateMemory([], what: "a snapshot")
        #expect(throws: SnapshotError("a live snapshot needs all of guest RAM shared: 2052 KiB in 2 range(s) are private "
            + "(KVM_MEMORY_ATTRIBUTE_PRIVATE, the first at 0x100000), and a private page's contents are in its guest_memfd, which the host "
            + "cannot map or read; the guest must convert them to shared first")) {
            try Machine.refusePrivateMemory([0x10_0000..<0x30_0000, 0x40_0000..<0x40_1000], what: "a live snapshot")
        }
    }

    @Test func realtimeNeedsAReadingThatHasWallClockTime() throws {
        var configuration = MachineConfiguration(kernelPath: "/k")
        // ClockState(nanoseconds:) has flags 0, as KVM_GET_CLOCK gives without its master clock.
        #expect(throws: SnapshotError.self) {
            try SnapshotLoadOptions(clockRealtime: true).apply(to: &configuration, clock: ClockState(nanoseconds: 1))
        }
        try SnapshotLoadOptions(clockRealtime: false).apply(to: &configuration, clock: ClockState(nanoseconds: 1))
    }
}
