import KVM
import Confidential
import Glibc
import GuestMemory
import Synchronization
import Testing
@testable import VMM

/// The exit handler driven by exits staged in a simulated run area: no KVM,
/// no guest, every decision checked.
@Suite(.timeLimit(.minutes(5))) struct ExitHandlerTests {
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

/// Conversion exits: with a conversion manager they convert and resume (a
/// refused hypercall answers the guest -KVM_EINVAL), without one they end the
/// run naming the exit.
@Suite(.timeLimit(.minutes(5))) struct ExitHandlerConversionTests {
    final class Calls: Sendable { let ranges = Mutex<[(Range<UInt64>, Bool)]>([]) }

    static func handler(calls: Calls) throws -> (ExitHandler, GuestAddressSpace, Int32) {
        var name = Array("/dev/shm/kestrel-exit-conversion-XXXXXX".utf8CString)
        let file = mkstemp(&name)
        try #require(file >= 0)
        unlink(String(cString: name))
        try #require(ftruncate(file, 0x10000) == 0)
        let memory = GuestAddressSpace()
        let shared = try MemoryMapping(anonymousSize: 0x10000, sharing: .shared)
        try memory.add(shared, at: GuestAddress(0x10_0000))
        let ram = try ConvertibleRAM(range: 0x10_0000..<0x11_0000, privateFile: file, privateOffset: 0, shared: shared, keeping: nil)
        let manager = try ConversionManager(ram: [ram], memory: memory, mmio: [("virtio-blk", 0xD000_1000..<0xD000_2000)],
                                            setAttributes: { range, isPrivate in calls.ranges.withLock { $0.append((range, isPrivate)) } })
        return (ExitHandler(portBus: DeviceBus(), mmioBus: DeviceBus(), conversions: manager), memory, file)
    }

    @Test func mapGPARangeConvertsAndAnswersTheGuest() throws {
        let calls = Calls()
        let (handler, memory, file) = try Self.handler(calls: calls)
        defer { close(file) }
        let area = RunArea.simulated()
        let exit = area.simulate(.hypercall(number: 12, arguments: [0x10_0000, 2, 0x10]))
        #expect(handler.handle(exit, vcpu: 0, rip: { nil }) == .resume)
        guard case .hypercall(let call) = exit else { Issue.record("not a hypercall"); return }
        #expect(call.returnValue == 0)
        #expect(memory.privateRanges == [0x10_0000..<0x10_2000])
        let refused = area.simulate(.hypercall(number: 12, arguments: [0xD000_1000, 1, 0x10]))
        #expect(handler.handle(refused, vcpu: 0, rip: { nil }) == .resume, "a refused range is the guest's error, not the VMM's")
        guard case .hypercall(let second) = refused else { Issue.record("not a hypercall"); return }
        #expect(second.returnValue == UInt64(bitPattern: -22))
        #expect(calls.ranges.withLock { $0.count } == 1)
    }

    @Test func memoryFaultsConvertOrEndTheRun() throws {
        let calls = Calls()
        let (handler, memory, file) = try Self.handler(calls: calls)
        defer { close(file) }
        let area = RunArea.simulated()
        #expect(handler.handle(area.simulate(.memoryFault(flags: .private, address: 0x10_3000, size: 0x1000)), vcpu: 0, rip: { nil }) == .resume)
        #expect(memory.privateRanges == [0x10_3000..<0x10_4000])
        let outside = handler.handle(area.simulate(.memoryFault(flags: [], address: 0x20_0000, size: 0x1000)), vcpu: 1, rip: { nil })
        guard case .finish(.vcpuFailure(let vcpu, let detail)) = outside else { Issue.record("\(outside)"); return }
        #expect(vcpu == 1 && detail.contains("outside convertible RAM"), "\(detail)")
    }

    @Test func withoutAManagerConversionExitsEndTheRun() {
        let handler = ExitHandler(portBus: DeviceBus(), mmioBus: DeviceBus())
        let area = RunArea.simulated()
        let hypercall = handler.handle(area.simulate(.hypercall(number: 12, arguments: [0x10_0000, 1, 0x10])), vcpu: 0, rip: { nil })
        guard case .finish(.vcpuFailure(_, let detail)) = hypercall else { Issue.record("\(hypercall)"); return }
        #expect(detail.contains("KVM_HC_MAP_GPA_RANGE") && detail.contains("not convertible"), "\(detail)")
        let fault = handler.handle(area.simulate(.memoryFault(flags: .private, address: 0x10_0000, size: 0x1000)), vcpu: 0, rip: { nil })
        guard case .finish(.vcpuFailure(_, let detail)) = fault else { Issue.record("\(fault)"); return }
        #expect(detail.contains("KVM_EXIT_MEMORY_FAULT") && detail.contains("not convertible"), "\(detail)")
    }
}
