import CKVM

/// One in-kernel interrupt controller's state (struct kvm_irqchip): a PIC
/// (struct kvm_pic_state) or the IOAPIC (struct kvm_ioapic_state), kept whole.
public struct InterruptControllerState: Equatable, Sendable, StateBytes {
    /// KVM's chip ids.
    public enum Chip: UInt32, CaseIterable, Sendable {
        case primaryPIC = 0, secondaryPIC = 1, ioapic = 2
    }

    var raw = ckvm_irqchip()

    public init(chip: Chip) { raw.chip_id = chip.rawValue }
    init(_ raw: ckvm_irqchip) { self.raw = raw }

    /// Which controller this is (nil for an id KVM does not define).
    public var chip: Chip? { Chip(rawValue: raw.chip_id) }

    /// The IOAPIC's interrupt request register (struct kvm_ioapic_state's
    /// `irr`, after base_address, ioregsel and id): bit N is set while input N
    /// is asserted and not yet delivered. Nil for a PIC.
    public var ioapicRequests: UInt32? {
        guard chip == .ioapic else { return nil }
        return stateBytes[24..<28].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    public static var byteCount: Int { MemoryLayout<ckvm_irqchip>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws {
        raw = try load(ckvm_irqchip.self, from: stateBytes, initial: ckvm_irqchip(), what: "struct kvm_irqchip")
        guard chip != nil else { throw KVMUsageError("struct kvm_irqchip names chip \(raw.chip_id); KVM has 0 to 2") }
    }

    public static func == (left: Self, right: Self) -> Bool { left.stateBytes == right.stateBytes }
}

/// The in-kernel PIT's state (struct kvm_pit_state2): three channels and flags.
public struct PITState: Equatable, Sendable, StateBytes {
    var raw = ckvm_pit_state2()

    public init() {}
    init(_ raw: ckvm_pit_state2) { self.raw = raw }

    /// Channel 0's reload value (the Linux timer's divisor), for reports and tests.
    public var channel0Count: UInt32 { raw.channels.0.count }

    public static var byteCount: Int { MemoryLayout<ckvm_pit_state2>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws {
        raw = try load(ckvm_pit_state2.self, from: stateBytes, initial: ckvm_pit_state2(), what: "struct kvm_pit_state2")
    }

    public static func == (left: Self, right: Self) -> Bool { left.stateBytes == right.stateBytes }
}

/// kvmclock as the VM sees it (struct kvm_clock_data).
public struct ClockState: Equatable, Sendable, StateBytes {
    var raw = ckvm_clock_data()

    public init(nanoseconds: UInt64) { raw.clock = nanoseconds }
    init(_ raw: ckvm_clock_data) { self.raw = raw }

    /// The guest's clock, in nanoseconds.
    public var nanoseconds: UInt64 { raw.clock }
    /// KVM_CLOCK_* flags KVM returned (TSC_STABLE 2, REALTIME 4, HOST_TSC 8).
    public var flags: UInt32 { raw.flags }
    /// KVM_CLOCK_REALTIME: `realtime` holds CLOCK_REALTIME at the reading.
    public static let realtimeFlag: UInt32 = 4
    /// CLOCK_REALTIME in nanoseconds when the reading was taken (valid with `realtimeFlag`).
    public var realtimeNanoseconds: UInt64 { raw.realtime }

    public static var byteCount: Int { MemoryLayout<ckvm_clock_data>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws {
        raw = try load(ckvm_clock_data.self, from: stateBytes, initial: ckvm_clock_data(), what: "struct kvm_clock_data")
    }

    public static func == (left: Self, right: Self) -> Bool { left.stateBytes == right.stateBytes }
}

extension VirtualMachine {
    /// The corresponding ioctl is KVM_GET_IRQCHIP (after KVM_CREATE_IRQCHIP).
    public func interruptControllerState(_ chip: InterruptControllerState.Chip) throws -> InterruptControllerState {
        var state = InterruptControllerState(chip: chip).raw
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getInterruptController, &state)
        return InterruptControllerState(state)
    }

    /// The corresponding ioctl is KVM_SET_IRQCHIP; the chip is the one `state` names.
    public func setInterruptControllerState(_ state: InterruptControllerState) throws {
        var raw = state.raw
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setInterruptController, &raw)
    }

    /// The corresponding ioctl is KVM_GET_PIT2 (after KVM_CREATE_PIT2).
    public func pitState() throws -> PITState {
        var state = ckvm_pit_state2()
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getPIT2, &state)
        return PITState(state)
    }

    /// The corresponding ioctl is KVM_SET_PIT2.
    public func setPITState(_ state: PITState) throws {
        var raw = state.raw
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setPIT2, &raw)
    }

    /// The corresponding ioctl is KVM_GET_CLOCK.
    public func clock() throws -> ClockState {
        var state = ckvm_clock_data()
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getClock, &state)
        return ClockState(state)
    }

    /// Sets kvmclock to `state.nanoseconds`. The corresponding ioctl is
    /// KVM_SET_CLOCK. The flags KVM_GET_CLOCK returns (TSC_STABLE,
    /// HOST_TSC) describe a reading and KVM refuses them as input, so only
    /// KVM_CLOCK_REALTIME is ever passed: with `realtime` (and a reading
    /// that has it), KVM moves the clock on by the wall time elapsed since
    /// `state.realtimeNanoseconds`; without it the clock resumes where the
    /// reading left it.
    public func setClock(_ state: ClockState, realtime: Bool = false) throws {
        var raw = ckvm_clock_data()
        raw.clock = state.raw.clock
        if realtime && state.flags & ClockState.realtimeFlag != 0 {
            raw.flags = ClockState.realtimeFlag
            raw.realtime = state.raw.realtime
        }
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setClock, &raw)
    }
}

/// A vCPU's XSAVE area (struct kvm_xsave, or the larger KVM_GET_XSAVE2
/// buffer): x87, SSE, AVX and every other user state component the guest
/// enabled, in the XSAVE layout.
public struct XSAVEState: Equatable, Sendable {
    public let bytes: [UInt8]

    /// At least 4096 bytes, a whole number of 4-byte words.
    public init(bytes: [UInt8]) throws {
        guard bytes.count >= 4096, bytes.count % 4 == 0, bytes.count <= 1 << 20 else {
            throw KVMUsageError("an XSAVE area has 4096 bytes or more (a multiple of 4, at most 1 MiB), not \(bytes.count)")
        }
        self.bytes = bytes
    }
}

/// The debug registers (struct kvm_debugregs: DR0-3, DR6, DR7, flags), kept whole.
public struct DebugRegisters: Equatable, Sendable, StateBytes {
    public let stateBytes: [UInt8]
    public static let byteCount = 128
    public init(stateBytes: [UInt8]) throws {
        guard stateBytes.count == Self.byteCount else { throw KVMUsageError("struct kvm_debugregs has 128 bytes, not \(stateBytes.count)") }
        self.stateBytes = stateBytes
    }
}

extension VCPU {
    /// The XSAVE area: KVM_GET_XSAVE2 with the size KVM_CAP_XSAVE2 reports
    /// when the VM has it (larger than 4096 with AMX), else KVM_GET_XSAVE.
    public func xsave() throws -> XSAVEState {
        let size = Int(try vm.checkExtension(.xsave2))
        var buffer = [UInt8](repeating: 0, count: max(4096, size))
        // Sound: the buffer has the size KVM_CAP_XSAVE2 reports, which is what
        // KVM_GET_XSAVE2 writes (and at least the 4096 KVM_GET_XSAVE writes).
        _ = try buffer.withUnsafeMutableBytes {
            try SystemCall.ioctl(fileDescriptor, size > 0 ? KVMRequest.getXSAVE2 : KVMRequest.getXSAVE, $0.baseAddress)
        }
        return try XSAVEState(bytes: buffer)
    }

    /// The corresponding ioctl is KVM_SET_XSAVE, which reads the size
    /// KVM_CAP_XSAVE2 reports for this VM; a smaller area is refused here.
    public func setXSAVE(_ state: XSAVEState) throws {
        let size = max(4096, Int(try vm.checkExtension(.xsave2)))
        guard state.bytes.count >= size else {
            throw KVMUsageError("this VM's XSAVE area has \(size) bytes; the state has \(state.bytes.count)")
        }
        var buffer = state.bytes
        // Sound: KVM reads `size` bytes, no more than the buffer holds.
        _ = try buffer.withUnsafeMutableBytes { try SystemCall.ioctl(fileDescriptor, KVMRequest.setXSAVE, $0.baseAddress) }
    }

    /// The corresponding ioctl is KVM_GET_DEBUGREGS.
    public func debugRegisters() throws -> DebugRegisters {
        var buffer = [UInt8](repeating: 0, count: DebugRegisters.byteCount)
        // Sound: the buffer is the 128 bytes of struct kvm_debugregs.
        _ = try buffer.withUnsafeMutableBytes { try SystemCall.ioctl(fileDescriptor, KVMRequest.getDebugRegisters, $0.baseAddress) }
        return try DebugRegisters(stateBytes: buffer)
    }

    /// The corresponding ioctl is KVM_SET_DEBUGREGS.
    public func setDebugRegisters(_ registers: DebugRegisters) throws {
        var buffer = registers.stateBytes
        // Sound: the buffer is the 128 bytes of struct kvm_debugregs.
        _ = try buffer.withUnsafeMutableBytes { try SystemCall.ioctl(fileDescriptor, KVMRequest.setDebugRegisters, $0.baseAddress) }
    }
}
