import Foundation
import KVM
import Synchronization
import Testing
@testable import VMM

/// Calls a bus device the way the vCPU loop does.
func read(_ device: BusDevice, _ offset: UInt64) -> UInt8 {
    var byte: UInt8 = 0
    withUnsafeMutableBytes(of: &byte) { device.read(offset: offset, into: $0) }
    return byte
}

func write(_ device: BusDevice, _ offset: UInt64, _ value: UInt8) {
    withUnsafeBytes(of: value) { device.write(offset: offset, from: $0) }
}

final class Recorder: @unchecked Sendable {
    var bytes: [UInt8] = []
    var interrupts = 0
    var resets = 0
}

@Suite(.timeLimit(.minutes(5))) struct SerialTests {
    @Test func transmitsAndRaisesTransmitInterrupts() {
        let recorder = Recorder()
        let serial = Serial16550(output: { recorder.bytes.append($0) }, interrupt: { recorder.interrupts += 1 })
        #expect(read(serial, 5) == 0x60)           // LSR: THR empty, transmitter empty
        #expect(read(serial, 2) == 0x01)           // IIR: nothing pending
        for byte in Array("ok\n".utf8) { write(serial, 0, byte) }
        #expect(recorder.bytes == Array("ok\n".utf8))
        #expect(recorder.interrupts == 0)          // IER off
        write(serial, 1, 0x02)                     // enable THRE interrupt
        #expect(recorder.interrupts == 1)
        #expect(read(serial, 2) == 0x02)           // THRE pending; reading IIR clears it
        #expect(read(serial, 2) == 0x01)
        write(serial, 0, 0x41)
        #expect(recorder.interrupts == 2)
    }

    @Test func receivesInputWithDataReadyAndInterrupts() {
        let recorder = Recorder()
        let serial = Serial16550(output: { recorder.bytes.append($0) }, interrupt: { recorder.interrupts += 1 })
        serial.receive([0x61])
        #expect(recorder.interrupts == 0)
        #expect(read(serial, 5) & 0x01 == 0x01)    // data ready
        write(serial, 1, 0x01)                     // enable receive interrupt: data already waiting
        #expect(recorder.interrupts == 1)
        #expect(read(serial, 2) == 0x04)
        #expect(read(serial, 0) == 0x61)
        #expect(read(serial, 5) & 0x01 == 0)
        serial.receive([0x62, 0x63])
        #expect(recorder.interrupts == 2)
        #expect(read(serial, 0) == 0x62)
        #expect(read(serial, 0) == 0x63)
    }

    @Test func divisorLatchLoopbackAndScratch() {
        let recorder = Recorder()
        let serial = Serial16550(output: { recorder.bytes.append($0) }, interrupt: {})
        write(serial, 3, 0x80)                     // DLAB
        write(serial, 0, 0x01)
        write(serial, 1, 0x00)
        #expect(read(serial, 0) == 0x01)
        write(serial, 3, 0x03)
        write(serial, 7, 0x5A)
        #expect(read(serial, 7) == 0x5A)
        write(serial, 4, 0x1F)                     // loopback with all modem outputs
        #expect(read(serial, 6) == 0xF0)
        write(serial, 0, 0x42)
        #expect(recorder.bytes.isEmpty)            // looped back, not transmitted
        #expect(read(serial, 0) == 0x42)
        write(serial, 2, 0x01)                     // FIFO on
        #expect(read(serial, 2) & 0xC0 == 0xC0)
    }
}

@Suite(.timeLimit(.minutes(5))) struct KeyboardControllerTests {
    @Test func selfTestControlByteAndReset() {
        let recorder = Recorder()
        let controller = I8042Controller { recorder.resets += 1 }
        #expect(read(controller, 4) & 0x01 == 0)
        write(controller, 4, 0xAA)
        #expect(read(controller, 4) & 0x01 == 0x01)
        #expect(read(controller, 0) == 0x55)
        write(controller, 4, 0x60)
        write(controller, 0, 0x47)
        write(controller, 4, 0x20)
        #expect(read(controller, 0) == 0x47)
        #expect(recorder.resets == 0)
        write(controller, 4, 0xFE)
        #expect(recorder.resets == 1)
    }

    /// Reads every queued byte, as Linux's interrupt handler does: one per
    /// interrupt, the status first.
    private func drain(_ controller: I8042Controller) -> [UInt8] {
        var bytes: [UInt8] = []
        while read(controller, 4) & 0x01 != 0, bytes.count < 100 { bytes.append(read(controller, 0)) }
        return bytes
    }

    /// atkbd's probe as Linux 6.1 runs it: identify, deactivate, LEDs,
    /// typematic rate, activate. Each keyboard byte is ACKed and raises IRQ 1
    /// when it reaches the output buffer; controller answers raise nothing.
    @Test func answersAtkbdsProbeWithInterrupts() {
        let recorder = Recorder()
        let controller = I8042Controller(reset: { recorder.resets += 1 }, interrupt: { recorder.interrupts += 1 })
        write(controller, 4, 0xAA)
        #expect(drain(controller) == [0x55] && recorder.interrupts == 0, "a controller answer is polled")
        write(controller, 0, 0xF2)
        #expect(recorder.interrupts == 1, "the ACK filled an empty buffer")
        #expect(read(controller, 0) == 0xFA)
        #expect(recorder.interrupts == 2, "the read left the ID's first byte behind")
        #expect(read(controller, 0) == 0xAB && read(controller, 0) == 0x41, "an MF2 keyboard, translated")
        #expect(recorder.interrupts == 3 && read(controller, 4) & 0x01 == 0)
        for (command, parameter) in [(UInt8(0xF5), UInt8?.none), (0xED, 0x00), (0xF3, 0x00), (0xF4, nil)] {
            write(controller, 0, command)
            #expect(drain(controller) == [0xFA], "command \(command)")
            if let parameter {
                write(controller, 0, parameter)
                #expect(drain(controller) == [0xFA], "the parameter of \(command)")
            }
        }
        write(controller, 0, 0xFF)
        #expect(drain(controller) == [0xFA, 0xAA], "reset: ACK and a passed self-test")
        // With keyboard interrupts off in the control byte, bytes queue silently.
        write(controller, 4, 0x60)
        write(controller, 0, 0x44)
        let before = recorder.interrupts
        write(controller, 0, 0xF4)
        #expect(recorder.interrupts == before && drain(controller) == [0xFA])
        #expect(recorder.resets == 0)
    }

    @Test func typesControlAltDeleteInTheGuestsScanCodeSet() {
        let recorder = Recorder()
        let controller = I8042Controller(reset: {}, interrupt: { recorder.interrupts += 1 })
        #expect(controller.typeControlAltDelete())
        #expect(drain(controller) == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D], "set 1 through translation")
        #expect(recorder.interrupts == 8, "one edge per byte")
        write(controller, 4, 0x60)
        write(controller, 0, 0x05)  // translation off
        #expect(controller.typeControlAltDelete())
        #expect(drain(controller) == [0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14], "set 2")
        write(controller, 0, 0xF5)  // the guest stops the keyboard scanning
        _ = drain(controller)
        #expect(!controller.typeControlAltDelete() && drain(controller).isEmpty, "a keyboard that is not scanning types nothing")
        write(controller, 0, 0xF4)
        _ = drain(controller)
        var typed = 0
        while controller.typeControlAltDelete() { typed += 1 }
        #expect(typed == I8042Controller.queueLimit / 11, "a guest that never reads fills the buffer and no more")
    }

    @Test func savesAndRestoresItsState() {
        let controller = I8042Controller(reset: {})
        write(controller, 4, 0x60)
        write(controller, 0, 0x47)
        write(controller, 0, 0xED)  // set-LEDs waits for its parameter
        let saved = controller.savedState
        #expect(saved.controlByte == 0x47 && saved.outputQueue == [0xFA] && saved.pendingKeyboardCommand == 0xED && saved.scanning)
        let recorder = Recorder()
        let restored = I8042Controller(reset: {}, interrupt: { recorder.interrupts += 1 })
        restored.restore(saved)
        #expect(restored.savedState == saved && recorder.interrupts == 0)
        #expect(drain(restored) == [0xFA])
        write(restored, 0, 0x00)
        #expect(drain(restored) == [0xFA] && restored.savedState.pendingKeyboardCommand == nil, "the parameter went to set-LEDs")
    }
}

@Suite(.timeLimit(.minutes(5))) struct BusTests {
    @Test func routesByRangeAndFloatsElsewhere() {
        let recorder = Recorder()
        var bus = DeviceBus()
        bus.add(ExitDevice { recorder.bytes.append($0) }, at: 0x1000..<0x1008)
        var value: UInt8 = 7
        #expect(withUnsafeBytes(of: &value) { bus.write(0x1000, from: $0) })
        #expect(recorder.bytes == [7])
        var word: UInt32 = 0
        #expect(!withUnsafeMutableBytes(of: &word) { bus.read(0x2000, into: $0) })
        #expect(word == 0xFFFF_FFFF)
    }
}

@Suite(.timeLimit(.minutes(5))) struct TemplateAndConfigurationTests {
    @Test func templatesMaskWhatTheyList() throws {
        var table = CPUIDTable(entries: [
            CPUIDEntry(function: 1, eax: 0, ebx: 0, ecx: 0xFFFF_FFFF, edx: 0),
            CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        ])
        table = CPUTemplate.nested.table(from: table, vcpu: 3, of: CPUTopology(count: 4, smt: false))
        let leaf1 = try #require(table.entry(function: 1))
        #expect(leaf1.ecx & (1 << 26) == 0)        // XSAVE hidden
        #expect(leaf1.ecx & (1 << 13) == 0)        // CX16 hidden
        #expect(leaf1.ecx & (1 << 31) != 0)        // hypervisor bit
        #expect(leaf1.ebx >> 24 == 3)              // APIC id
        let leaf7 = try #require(table.entry(function: 7))
        #expect(leaf7.ebx & (1 << 16) == 0)        // AVX512F
        #expect(leaf7.ecx & (1 << 7) == 0)         // SHSTK
        #expect(leaf7.edx & (1 << 20) == 0)        // IBT
        let host = CPUTemplate.host.table(from: table, vcpu: 0, of: CPUTopology(count: 1, smt: false))
        #expect(host.entry(function: 7)?.ebx == leaf7.ebx)
        #expect(CPUTemplate.named("conservative")?.masked.map(\.name).contains("AVX512F") == true)
        #expect(CPUTemplate.named("turbo") == nil)
    }

    /// Firecracker's `smt`: two threads to a core in leaves 1, 4, 0xB,
    /// 0x8000_0008 and 0x8000_001E; without it one; a lone vCPU has no sibling.
    @Test func theTopologyLeavesFollowSMT() throws {
        let supported = CPUIDTable(entries: [
            CPUIDEntry(function: 0, eax: 0x1F, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),   // AuthenticAMD
            CPUIDEntry(function: 1, ebx: 0xFFFF_FFFF, edx: 0),
            CPUIDEntry(function: 4, index: 0, flags: 1, eax: 1 << 5 | 1),            // L1 data cache
            CPUIDEntry(function: 4, index: 1, flags: 1, eax: 3 << 5 | 3),            // L3
            CPUIDEntry(function: 4, index: 2, flags: 1),                             // the end of the list
            CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 9, ebx: 9, ecx: 9, edx: 9),
            CPUIDEntry(function: 0x8000_0008, ecx: 0xFFFF_FFFF),
            CPUIDEntry(function: 0x8000_001E, eax: 9, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF),
        ])
        let smt = CPUTemplate.host.table(from: supported, vcpu: 3, of: CPUTopology(count: 4, smt: true))
        #expect(smt.entry(function: 1)?.ebx == 0x0304_FFFF && smt.entry(function: 1).map { $0.edx & 1 << 28 != 0 } == true)
        #expect(smt.entry(function: 0xB, index: 0).map { [$0.eax, $0.ebx, $0.ecx, $0.edx] } == [1, 2, 0x100, 3])
        #expect(smt.entry(function: 0xB, index: 1).map { [$0.eax, $0.ebx, $0.ecx, $0.edx] } == [6, 4, 0x201, 3], "sub-leaf 1 added")
        #expect(smt.entry(function: 4, index: 0)?.eax == UInt32(1 << 26 | 1 << 14 | 1 << 5 | 1), "two cores; two threads share L1")
        #expect(smt.entry(function: 4, index: 1)?.eax == UInt32(1 << 26 | 3 << 14 | 3 << 5 | 3), "every thread shares L3")
        #expect(smt.entry(function: 4, index: 2)?.eax == 0)
        #expect(smt.entry(function: 0x8000_0008)?.ecx == 0xFFFF_7F03)
        #expect(smt.entry(function: 0x8000_001E).map { [$0.eax, $0.ebx, $0.ecx] } == [3, 0xFFFF_0101, 0xFFFF_F800], "core 1, two threads")
        let single = CPUTemplate.host.table(from: supported, vcpu: 2, of: CPUTopology(count: 4, smt: false))
        #expect(single.entry(function: 0xB, index: 0).map { [$0.eax, $0.ebx, $0.ecx, $0.edx] } == [0, 1, 0x100, 2])
        #expect(single.entry(function: 4, index: 0)?.eax == UInt32(3 << 26 | 1 << 5 | 1), "four cores of one thread")
        #expect(single.entry(function: 0x8000_001E)?.ebx == 0xFFFF_0002)
        #expect(smt.entry(function: 0x8000_0001) == nil, "no extended range given: TOPOEXT left alone")
        // Intel: 0x8000_0008 ECX and 0x8000_001E are reserved and kept; 0x1F gets its core level too.
        var intel = supported
        intel.set(CPUIDEntry(function: 0, eax: 0x1F, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69))   // GenuineIntel
        intel.set(CPUIDEntry(function: 0x1F, index: 0, flags: 1))
        let intelTable = CPUTemplate.host.table(from: intel, vcpu: 1, of: CPUTopology(count: 2, smt: true))
        #expect(intelTable.entry(function: 0x8000_0008)?.ecx == 0xFFFF_FFFF && intelTable.entry(function: 0x8000_001E)?.eax == 9)
        #expect(intelTable.entry(function: 0x1F, index: 1).map { [$0.eax, $0.ebx, $0.ecx, $0.edx] } == [6, 2, 0x201, 1])
        var amd = supported
        amd.set(CPUIDEntry(function: 0, eax: 0x10, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65))
        amd.set(CPUIDEntry(function: 0x8000_0000, eax: 0x8000_000A))
        amd.set(CPUIDEntry(function: 0x8000_0001, ecx: 0))
        amd.entries.removeAll { $0.function == 0x8000_001E }
        let amdTable = CPUTemplate.host.table(from: amd, vcpu: 1, of: CPUTopology(count: 2, smt: true))
        #expect(amdTable.entry(function: 0x8000_0001).map { $0.ecx & 1 << 22 != 0 } == true, "TOPOEXT set on AMD")
        #expect(amdTable.entry(function: 0x8000_001E).map { [$0.eax, $0.ebx] } == [1, 0x100], "the leaf added: thread 1 of core 0")
        #expect(amdTable.entry(function: 0x8000_0000)?.eax == 0x8000_001E, "the extended range reaches it")
        let lone = CPUTopology(count: 1, smt: true)
        #expect(lone.threadsPerCore == 1 && CPUTopology(count: 2, smt: true).threadsPerCore == 2)
        #expect(CPUTemplate.host.table(from: supported, vcpu: 0, of: lone).entry(function: 1).map { $0.edx & 1 << 28 } == 0)
    }

    @Test func smtIsReadCheckedAndReported() throws {
        let base = #"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": 256, "smt": SMT}}"#
        func parse(_ count: Int, _ smt: String) throws -> MachineConfiguration {
            try MachineConfigFile.parse(Array(base.replacing("VCPUS", with: String(count)).replacing("SMT", with: smt).utf8), source: "t")
        }
        let two = try parse(2, "true")
        #expect(two.smt && two.topology.threadsPerCore == 2)
        #expect(MachineConfigFile.machineConfigSection(for: two).objectValue?["smt"] == .bool(true))
        #expect(try parse(1, "true").topology.threadsPerCore == 1)
        #expect(throws: ConfigurationError.self) { try parse(3, "true") }
        #expect(throws: ConfigurationError.self) { try parse(2, #""yes""#) }
        #expect(try parse(3, "false").smt == false)
    }

    @Test func configurationValidationAndSizes() {
        #expect(MachineConfiguration.parseSize("128M") == 128 << 20)
        #expect(MachineConfiguration.parseSize("1GiB") == 1 << 30)
        #expect(MachineConfiguration.parseSize("4096") == 4096)
        #expect(MachineConfiguration.parseSize("lots") == nil)
        #expect(MachineConfiguration.parseSize("99999999999999G") == nil)
        #expect(throws: ConfigurationError.self) { try MachineConfiguration(kernelPath: "/etc/hostname", vcpuCount: 0).validate() }
        #expect(throws: ConfigurationError.self) { try MachineConfiguration(kernelPath: "/etc/hostname", memorySize: 1 << 20).validate() }
        #expect(throws: ConfigurationError("unknown CPU template \"x\"; known: host, conservative, nested")) {
            try MachineConfiguration(kernelPath: "/etc/hostname", cpuTemplate: "x").validate()
        }
        #expect(throws: ConfigurationError("cannot read the kernel /nonexistent")) { try MachineConfiguration(kernelPath: "/nonexistent").validate() }
    }

    @Test func outcomesHaveDistinctCodes() {
        let outcomes: [RunOutcome] = [
            .poweredOff, .reset(source: "x"), .tripleFault(vcpu: 0, rip: 1), .internalError(vcpu: 0, rip: nil, detail: "d"),
            .failedEntry(vcpu: 0, detail: "d"), .vcpuFailure(vcpu: 0, detail: "d"), .stopped(signal: 15),
        ]
        #expect(Set(outcomes.map(\.exitCode)).count == outcomes.count)
        #expect(RunOutcome.guestExit(status: 3).exitCode == 3)
        #expect(RunOutcome.internalError(vcpu: 0, rip: 0x10, detail: "emulation failure").diagnosis == "vCPU 0: KVM_EXIT_INTERNAL_ERROR: emulation failure at RIP 0x10")
    }
}

@Suite(.timeLimit(.minutes(5))) struct ACPISleepControlTests {
    @Test func onlySoftOffWithSleepEnablePowersOff() {
        let recorder = Recorder()
        let control = ACPISleepControl { recorder.resets += 1 }
        write(control, 0, 5 << 2)          // S5 type without SLP_EN
        write(control, 0, 3 << 2 | 0x20)   // another sleep type
        #expect(recorder.resets == 0)
        write(control, 0, 5 << 2 | 0x20)
        #expect(recorder.resets == 1)
    }
}

@Suite(.timeLimit(.minutes(5))) struct ConfigFileTests {
    static func parse(_ json: String) throws -> MachineConfiguration {
        try MachineConfigFile.parse(Array(json.utf8), source: "vm.json")
    }

    @Test func firecrackerStyleConfigIsReadAndUnsupportedPartsRefused() throws {
        let good = """
            {"boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0"},
             "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "cpu_template": "None", "smt": false},
             "drives": []}
            """
        let configuration = try Self.parse(good)
        #expect(configuration.kernelPath == "/k")
        #expect(configuration.initrdPath == "/i")
        #expect(configuration.commandLine == "console=ttyS0")
        #expect(configuration.vcpuCount == 2)
        #expect(configuration.memorySize == 512 << 20)
        #expect(configuration.cpuTemplate == "host")

        #expect(throws: ConfigurationError("vm.json: balloon must be an object")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": [{"amount_mib": 1}]}"#)
        }
        let hinting = try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}}"#)
        #expect(hinting.balloon?.freePageHinting == true && hinting.balloon?.freePageReporting == false)
        #expect(throws: ConfigurationError("vm.json: balloon.free_page_hinting must be true or false")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": 1}}"#)
        }
        #expect(throws: ConfigurationError("vm.json: unknown section \"bogus\"")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "bogus": 1}"#)
        }
        #expect(throws: ConfigurationError("vm.json: \"boot-source\" is required")) { try Self.parse("{}") }
        #expect(throws: ConfigurationError("vm.json: the top level must be an object")) { try Self.parse("[1, 2]") }
        #expect(throws: ConfigurationError.self) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k", "extra": 1}}"#)
        }
        #expect(throws: ConfigurationError("vm.json: machine-config.mem_size_mib must be a positive whole number")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"mem_size_mib": "lots"}}"#)
        }
        // 2^44 + 64 MiB once wrapped to 64 MiB when shifted into bytes.
        #expect(throws: ConfigurationError("vm.json: machine-config.mem_size_mib 17592186044480 is more than Kestrel's maximum of 1048576 (1 TiB)")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"mem_size_mib": 17592186044480}}"#)
        }
        #expect(try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"mem_size_mib": 1048576}}"#).memorySize == 1 << 40)
        for count in [0, -1, 33, 1000] {
            #expect(throws: ConfigurationError("vm.json: machine-config.vcpu_count must be between 1 and 32, not \(count)")) {
                try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": \#(count)}}"#)
            }
        }
        #expect(try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 32}}"#).vcpuCount == 32)
        #expect(throws: ConfigurationError("vm.json: machine-config.vcpu_count must be a whole number")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1.5}}"#)
        }
        #expect(throws: ConfigurationError("vm.json: machine-config.vcpu_count must be a whole number")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": true}}"#)
        }
        do {
            _ = try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}"#)
            Issue.record("truncated JSON was accepted")
        } catch let error as ConfigurationError {
            #expect("\(error)".hasPrefix("vm.json is not valid JSON"))
        }
    }

    @Test func anInterfacesMTUIsReadCheckedAndWrittenBack() throws {
        let good = try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400}]}"#)
        #expect(good.networkInterfaces.first?.mtu == 1400)
        #expect(MachineConfigFile.document(for: good).rendered.contains(#""mtu":1400"#))
        for bad in ["67", "65536", "1500.5", "\"1500\""] {
            #expect(throws: ConfigurationError("vm.json: network-interfaces[0] (eth0): mtu must be a whole number from 68 to 65535")) {
                try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": \#(bad)}]}"#)
            }
        }
        #expect(try NetworkInterfaceConfiguration.parse("tap0,mtu=9000", index: 0).mtu == 9000)
        #expect(throws: ConfigurationError("--net tap0,mtu=20: mtu must be a whole number from 68 to 65535")) {
            try NetworkInterfaceConfiguration.parse("tap0,mtu=20", index: 0)
        }
    }

    @Test func serialOutputIsReadCheckedAndWrittenBack() throws {
        let configuration = try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "serial": {"serial_out_path": "/tmp/serial.log"}}"#)
        #expect(configuration.serialOutputPath == "/tmp/serial.log")
        #expect(MachineConfigFile.document(for: configuration).rendered.contains(#""serial":{"serial_out_path":"\/tmp\/serial.log"}"#)
                || MachineConfigFile.document(for: configuration).rendered.contains(#""serial":{"serial_out_path":"/tmp/serial.log"}"#))
        #expect(throws: ConfigurationError("vm.json: serial.rate_limiter is not supported (Kestrel has no rate limiters yet)")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "serial": {"serial_out_path": "/tmp/s", "rate_limiter": {"size": 1}}}"#)
        }
        #expect(throws: ConfigurationError("serial_out_path /tmp is a directory, not a regular file or a FIFO")) {
            try MachineConfiguration.checkSerialOutput("/tmp")
        }
        #expect(throws: ConfigurationError("serial_out_path /nonexistent/s.log: the directory /nonexistent does not exist")) {
            try MachineConfiguration.checkSerialOutput("/nonexistent/s.log")
        }
        try MachineConfiguration.checkSerialOutput("/tmp/kestrel-new-serial-\(getpid()).log")
    }

    @Test func memoryBackendIsReadFromMachineConfig() throws {
        #expect(try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}}"#).memoryBackend == .anonymous)
        let gmem = try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"memory_backend": "guest_memfd"}}"#)
        #expect(gmem.memoryBackend == .guestMemfd)
        #expect(throws: ConfigurationError("vm.json: machine-config.memory_backend: unknown memory backend \"memfd\"; known: anonymous, guest_memfd, shared")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"memory_backend": "memfd"}}"#)
        }
        #expect(throws: ConfigurationError("vm.json: machine-config.memory_backend must be a string")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"memory_backend": 1}}"#)
        }
    }

    @Test func drivesAndEntropyUseFirecrackersFields() throws {
        let configuration = try Self.parse("""
            {"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
             "drives": [{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true},
                        {"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": false,
                         "cache_type": "Writeback", "io_engine": "Sync", "partuuid": null}],
             "entropy": {}}
            """)
        #expect(configuration.drives == [
            DriveConfiguration(id: "data", path: "/d.img", readOnly: true),
            DriveConfiguration(id: "rootfs", path: "/r.img", isRoot: true, cacheType: .writeback),
        ])
        #expect(configuration.entropy)
        #expect(configuration.effectiveCommandLine == "console=ttyS0 root=/dev/vda rw")
        #expect(configuration.orderedDrives.map(\.id) == ["rootfs", "data"], "the root drive is vda")

        #expect(throws: ConfigurationError("vm.json: drives[0].rate_limiter.bandwidth must be an object")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "rate_limiter": {"bandwidth": 5}}]}"#)
        }
        #expect(throws: ConfigurationError("vm.json: drives[0].rate_limiter.bogus is not supported (known: bandwidth, ops)")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "rate_limiter": {"bogus": {}}}]}"#)
        }
        #expect(throws: ConfigurationError("vm.json: drives[0] (a): path_on_host is required")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a"}]}"#)
        }
        #expect(try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "io_engine": "Async"}]}"#)
                    .drives.first?.ioEngine == .async)
        #expect(throws: ConfigurationError("vm.json: drives[0].io_engine \"Uring\" is not Sync or Async")) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "io_engine": "Uring"}]}"#)
        }
        #expect(throws: ConfigurationError.self) {
            try Self.parse(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "a", "path_on_host": "/a", "cache_type": "Fast"}]}"#)
        }
    }

    @Test func driveValidationRefusesByNameBeforeTheVMExists() throws {
        var configuration = MachineConfiguration(kernelPath: "/proc/self/exe")
        configuration.drives = [DriveConfiguration(id: "a", path: "/proc/self/exe", readOnly: true),
                                DriveConfiguration(id: "a", path: "/proc/self/exe", readOnly: true)]
        #expect(throws: ConfigurationError("drive id \"a\" is used twice")) { try configuration.validate() }
        configuration.drives = [DriveConfiguration(id: "disk", path: "/nonexistent.img")]
        #expect(throws: ConfigurationError("drive disk: /nonexistent.img does not exist")) { try configuration.validate() }
        configuration.drives = [DriveConfiguration(id: "bad id!", path: "/proc/self/exe", readOnly: true)]
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        configuration.drives = [DriveConfiguration(id: "r1", path: "/proc/self/exe", readOnly: true, isRoot: true),
                                DriveConfiguration(id: "r2", path: "/proc/self/exe", readOnly: true, isRoot: true)]
        #expect(throws: ConfigurationError("drives r1 and r2 are both root devices")) { try configuration.validate() }
        #expect(try DriveConfiguration.parse("/x.img,id=rootfs,ro,root", index: 0) == DriveConfiguration(id: "rootfs", path: "/x.img", readOnly: true, isRoot: true))
        #expect(throws: ConfigurationError.self) { try DriveConfiguration.parse("/x.img,fast", index: 0) }
        #expect(throws: ConfigurationError.self) { try DriveConfiguration.parse("", index: 0) }
    }

    @Test func jsonValuesKeepTheirTypes() throws {
        let value = try JSONValue.parse(Array(#"{"a": [1, 2.5, true, null, "x"], "b": {}}"#.utf8))
        #expect(value == .object(["a": .array([.number(1), .number(2.5), .bool(true), .null, .string("x")]), "b": .object([:])]))
        #expect(JSONValue.number(3).wholeNumber == 3)
        #expect(JSONValue.number(3.5).wholeNumber == nil)
        #expect(JSONValue.bool(true).wholeNumber == nil)
    }
}

@Suite(.timeLimit(.minutes(5))) struct GuestPanicWatcherTests {
    @Test func thePanicLineIsKeptFromTheMarkerOn() {
        let watcher = GuestPanicWatcher()
        for byte in Array("[    1.0] ok\r\n[    2.5] Kernel panic - not syncing: sysrq triggered crash\r\n[    2.6] ---[ end ]---\n".utf8) {
            watcher.consume(byte)
        }
        #expect(watcher.panicMessage == "Kernel panic - not syncing: sysrq triggered crash")
    }

    @Test func noPanicWithoutTheMarkerAndAnUnfinishedLineDoesNotCount() {
        let watcher = GuestPanicWatcher()
        for byte in Array("Kernel panic - not syncing: half a line".utf8) { watcher.consume(byte) }
        #expect(watcher.panicMessage == nil)
        for byte in Array("\nKernel oops\n".utf8) { watcher.consume(byte) }
        #expect(watcher.panicMessage == "Kernel panic - not syncing: half a line")
    }

    @Test func aPanicOutcomeKeepsHowTheRunEnded() {
        let outcome = RunOutcome.guestPanic(message: "Kernel panic - not syncing: x", then: .reset(source: "i8042 reset command"))
        #expect(outcome.exitCode == 70)
        #expect(outcome.diagnosis == "guest kernel panic: Kernel panic - not syncing: x; then guest reset (i8042 reset command)")
    }
}

@Suite struct BootTimerTests {
    /// Only a one-byte write of 123 at offset 0 logs, in Firecracker's words.
    @Test func onlyTheSignalLogsTheBootTime() {
        let lines = Mutex<[String]>([])
        let timer = BootTimer { line in lines.withLock { $0.append(line) } }
        [UInt8(122)].withUnsafeBytes { timer.write(offset: 0, from: $0) }
        [UInt8(123)].withUnsafeBytes { timer.write(offset: 4, from: $0) }
        [UInt8(123), 0].withUnsafeBytes { timer.write(offset: 0, from: $0) }
        #expect(lines.withLock { $0 }.isEmpty)
        [UInt8(123)].withUnsafeBytes { timer.write(offset: 0, from: $0) }
        let logged = lines.withLock { $0 }
        #expect(logged.count == 1 && logged[0].hasPrefix("Guest-boot-time = ") && logged[0].contains(" CPU us "), "\(logged)")
        #expect(BootTimer.line(wall: 51234, cpu: 812) == "Guest-boot-time =  51234 us 51 ms,    812 CPU us 0 CPU ms")
    }
}
