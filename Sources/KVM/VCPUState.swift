import CKVM
import SystemPackage

/// One MSR index and value (struct kvm_msr_entry).
public struct MSREntry: Hashable, Sendable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// A vCPU's multiprocessing state (KVM_MP_STATE_*).
public struct MPState: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let runnable = MPState(rawValue: 0)
    public static let uninitialized = MPState(rawValue: 1)
    public static let initReceived = MPState(rawValue: 2)
    public static let halted = MPState(rawValue: 3)
    public static let sipiReceived = MPState(rawValue: 4)
    private static let names = [
        "KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_UNINITIALIZED", "KVM_MP_STATE_INIT_RECEIVED",
        "KVM_MP_STATE_HALTED", "KVM_MP_STATE_SIPI_RECEIVED",
    ]
    public var description: String {
        Self.names.indices.contains(Int(rawValue)) ? Self.names[Int(rawValue)] : "mp state \(rawValue)"
    }
}

extension VCPU {
    /// Reads a fixed-size vCPU state struct with a read request.
    private func fetch<T>(_ request: IoctlRequest, _ initial: T) throws -> T {
        var value = initial
        _ = try SystemCall.ioctl(fileDescriptor, request, &value)
        return value
    }

    /// Writes a fixed-size vCPU state struct with a write request.
    private func store<T>(_ request: IoctlRequest, _ state: T) throws {
        var value = state
        _ = try SystemCall.ioctl(fileDescriptor, request, &value)
    }

    /// The corresponding ioctl is KVM_GET_REGS.
    public func registers() throws -> Registers {
        Registers(try fetch(KVMRequest.getRegisters, ckvm_regs()))
    }

    /// The corresponding ioctl is KVM_SET_REGS.
    public func setRegisters(_ registers: Registers) throws {
        try store(KVMRequest.setRegisters, registers.raw)
    }

    /// The corresponding ioctl is KVM_GET_SREGS.
    public func specialRegisters() throws -> SpecialRegisters {
        SpecialRegisters(try fetch(KVMRequest.getSpecialRegisters, ckvm_sregs()))
    }

    /// The corresponding ioctl is KVM_SET_SREGS.
    public func setSpecialRegisters(_ registers: SpecialRegisters) throws {
        try store(KVMRequest.setSpecialRegisters, registers.raw)
    }

    /// The corresponding ioctl is KVM_GET_FPU.
    public func fpu() throws -> FPUState {
        FPUState(try fetch(KVMRequest.getFPU, ckvm_fpu()))
    }

    /// The corresponding ioctl is KVM_SET_FPU.
    public func setFPU(_ state: FPUState) throws {
        try store(KVMRequest.setFPU, state.raw)
    }

    /// The corresponding ioctl is KVM_GET_VCPU_EVENTS.
    public func events() throws -> VCPUEvents {
        VCPUEvents(try fetch(KVMRequest.getVCPUEvents, ckvm_vcpu_events()))
    }

    /// The corresponding ioctl is KVM_SET_VCPU_EVENTS.
    public func setEvents(_ events: VCPUEvents) throws {
        try store(KVMRequest.setVCPUEvents, events.raw)
    }

    /// The corresponding ioctl is KVM_GET_MP_STATE.
    public func mpState() throws -> MPState {
        MPState(rawValue: try fetch(KVMRequest.getMPState, ckvm_mp_state()).mp_state)
    }

    /// The corresponding ioctl is KVM_SET_MP_STATE.
    public func setMPState(_ state: MPState) throws {
        try store(KVMRequest.setMPState, ckvm_mp_state(mp_state: state.rawValue))
    }

    /// The corresponding ioctl is KVM_GET_XCRS.
    public func extendedControlRegisters() throws -> ExtendedControlRegisters {
        ExtendedControlRegisters(try fetch(KVMRequest.getXCRs, ckvm_xcrs()))
    }

    /// The corresponding ioctl is KVM_SET_XCRS.
    public func setExtendedControlRegisters(_ registers: ExtendedControlRegisters) throws {
        try store(KVMRequest.setXCRs, registers.raw)
    }

    /// Sets the CPUID the guest sees. The corresponding ioctl is KVM_SET_CPUID2.
    public func setCPUID(_ table: CPUIDTable) throws {
        _ = try CPUIDTable.withBuffer(capacity: table.entries.count, entries: table.entries) {
            try SystemCall.ioctl(fileDescriptor, KVMRequest.setCPUID2, $0)
        }
    }

    /// The CPUID the guest sees. The corresponding ioctl is KVM_GET_CPUID2.
    public func cpuid() throws -> CPUIDTable {
        try CPUIDTable.fetch(fileDescriptor: fileDescriptor, request: KVMRequest.getCPUID2)
    }

    /// Reads MSRs. The corresponding ioctl is KVM_GET_MSRS, which stops at the
    /// first MSR it cannot read: the result holds the entries read, in order, so
    /// `result.count < indices.count` names the first failing index.
    public func msrs(_ indices: [UInt32]) throws -> [MSREntry] {
        let entries = indices.map { MSREntry(index: $0, value: 0) }
        let (count, values) = try withMSRBuffer(entries) { try SystemCall.ioctl(fileDescriptor, KVMRequest.getMSRs, $0) }
        return Array(values.prefix(Int(count)))
    }

    /// Reads one MSR, throwing when KVM refuses it.
    public func msr(_ index: UInt32) throws -> UInt64 {
        guard let entry = try msrs([index]).first else {
            throw KVMUsageError("KVM_GET_MSRS refused MSR 0x\(String(index, radix: 16))")
        }
        return entry.value
    }

    /// Writes MSRs. The corresponding ioctl is KVM_SET_MSRS, which stops at the
    /// first MSR it refuses; the number written is returned.
    @discardableResult
    public func setMSRs(_ entries: [MSREntry]) throws -> Int {
        let (count, _) = try withMSRBuffer(entries) { try SystemCall.ioctl(fileDescriptor, KVMRequest.setMSRs, $0) }
        return Int(count)
    }

    /// Builds a struct kvm_msrs buffer around `entries`, runs `body`, reads back.
    private func withMSRBuffer(_ entries: [MSREntry], _ body: (UnsafeMutableRawPointer) throws -> Int32) throws -> (Int32, [MSREntry]) {
        let headerSize = MemoryLayout<ckvm_msrs_header>.size
        let stride = MemoryLayout<ckvm_msr_entry>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: headerSize + max(entries.count, 1) * stride, alignment: 8)
        defer { buffer.deallocate() }
        // Sound: the header and `entries.count` entries fit in the allocation.
        buffer.storeBytes(of: ckvm_msrs_header(nmsrs: UInt32(entries.count), pad: 0), as: ckvm_msrs_header.self)
        for (position, entry) in entries.enumerated() {
            buffer.storeBytes(of: ckvm_msr_entry(index: entry.index, reserved: 0, data: entry.value),
                              toByteOffset: headerSize + position * stride, as: ckvm_msr_entry.self)
        }
        let count = try body(buffer)
        let values = (0..<entries.count).map { position -> MSREntry in
            let raw = buffer.load(fromByteOffset: headerSize + position * stride, as: ckvm_msr_entry.self)
            return MSREntry(index: raw.index, value: raw.data)
        }
        return (count, values)
    }
}
