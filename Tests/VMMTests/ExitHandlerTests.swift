import KVM
import Synchronization
import Testing
@testable import VMM

/// The exit handler driven by exits staged in a simulated run area: no KVM,
/// no guest, every decision checked.
@Suite struct ExitHandlerTests {
    /// A handler with the machine's devices on their usual addresses; what the
    /// devices do is recorded.
    final class Rig: Sendable {
        let recorded = Recorded()
        let handler: ExitHandler
        let area = RunArea.simulated()

        final class Recorded: Sendable {
            let console = Mutex<[UInt8]>([])
            let events = Mutex<[String]>([])
        }

        var console: [UInt8] { recorded.console.withLock { $0 } }
        var events: [String] { recorded.events.withLock { $0 } }

        init() {
            var ports = DeviceBus()
            var mmio = DeviceBus()
            let recorded = self.recorded
            ports.add(Serial16550(output: { byte in recorded.console.withLock { $0.append(byte) } }, interrupt: {}),
                      at: Serial16550.com1Base..<(Serial16550.com1Base + 8))
            ports.add(I8042Controller { recorded.events.withLock { $0.append("reset") } }, at: 0x60..<0x65)
            mmio.add(ExitDevice { status in recorded.events.withLock { $0.append("exit \(status)") } }, at: ExitDevice.address..<(ExitDevice.address + 8))
            handler = ExitHandler(portBus: ports, mmioBus: mmio)
        }

        func handle(_ exit: SimulatedExit, vcpu: Int = 0, rip: UInt64? = 0x1000) -> ExitAction {
            handler.handle(area.simulate(exit), vcpu: vcpu, rip: { rip })
        }
    }

    @Test func portOutputReachesTheSerialConsoleByteByByte() {
        let rig = Rig()
        #expect(rig.handle(.io(direction: .out, port: 0x3F8, size: 1, data: Array("hi".utf8))) == .resume)
        #expect(rig.console == Array("hi".utf8))
    }

    @Test func portInputIsAnsweredInTheRunArea() {
        let rig = Rig()
        let exit = rig.area.simulate(.io(direction: .in, port: 0x3FD, size: 1, data: [0]))  // COM1 line status
        #expect(rig.handler.handle(exit, vcpu: 0, rip: { nil }) == .resume)
        guard case .io(let io) = exit else { Issue.record("not I/O"); return }
        #expect(io.data[0] & 0x60 == 0x60, "LSR: transmitter empty")
    }

    @Test func unclaimedReadsFloatHighAndWritesAreDropped() {
        let rig = Rig()
        let exit = rig.area.simulate(.mmio(address: 0xFEB0_0000, isWrite: false, data: [0, 0, 0, 0]))
        #expect(rig.handler.handle(exit, vcpu: 1, rip: { nil }) == .resume)
        guard case .mmio(let mmio) = exit else { Issue.record("not MMIO"); return }
        #expect(Array(mmio.data) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(rig.handle(.io(direction: .out, port: 0x80, size: 1, data: [1])) == .resume)
        #expect(rig.events.isEmpty)
    }

    @Test func devicesThatEndTheRunDoSoThroughTheirCallbacks() {
        let rig = Rig()
        #expect(rig.handle(.mmio(address: ExitDevice.address, isWrite: true, data: [42])) == .resume)
        #expect(rig.handle(.io(direction: .out, port: 0x64, size: 1, data: [0xFE])) == .resume)
        #expect(rig.events == ["exit 42", "reset"])
    }

    @Test func systemEventsAndFailuresEndTheRunWithADiagnosis() {
        let rig = Rig()
        #expect(rig.handle(.systemEvent(type: .shutdown, data: [])) == .finish(.poweredOff))
        #expect(rig.handle(.systemEvent(type: .reset, data: [])) == .finish(.reset(source: "KVM_SYSTEM_EVENT_RESET")))
        #expect(rig.handle(.systemEvent(type: .crash, data: []), vcpu: 1)
                == .finish(.vcpuFailure(vcpu: 1, detail: "KVM_EXIT_SYSTEM_EVENT: KVM_SYSTEM_EVENT_CRASH")))
        #expect(rig.handle(.bare(.shutdown), vcpu: 1, rip: 0xFFF0) == .finish(.tripleFault(vcpu: 1, rip: 0xFFF0)))
        #expect(rig.handle(.bare(.halt)) == .finish(.vcpuFailure(vcpu: 0, detail: "KVM_EXIT_HLT although the local APIC is in the kernel")))
        #expect(rig.handle(.failEntry(hardwareReason: 0x21, cpu: 3))
                == .finish(.failedEntry(vcpu: 0, detail: "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x21 on cpu 3")))
        guard case .finish(.internalError(vcpu: 0, rip: 0x1000, let detail)) = rig.handle(.internalError(suberror: 1, data: [])) else {
            Issue.record("internal error not reported"); return
        }
        #expect(detail.contains("KVM_INTERNAL_ERROR_EMULATION"))
        guard case .finish(.vcpuFailure(vcpu: 0, let unexpected)) = rig.handle(.bare(ExitReason(rawValue: 200))) else {
            Issue.record("unknown exit not reported"); return
        }
        #expect(unexpected == "unexpected exit reason 200")
    }

    @Test func interruptionsAndWaitingAPsResume() {
        let rig = Rig()
        #expect(rig.handler.handle(.interrupted, vcpu: 0, rip: { nil }) == .resume)
        #expect(rig.handler.handle(.notRunnable, vcpu: 1, rip: { nil }) == .resume)
    }
}
