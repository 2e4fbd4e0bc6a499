import KVM

/// A vCPU's architectural state, captured with KVM's get ioctls and restored
/// with the set ioctls, including every MSR in KVM's save/restore list (CET,
/// FRED and IA32_XSS among them, when the host lists them) and GUEST_SSP (via
/// ONE_REG) when KVM_GET_REG_LIST lists it.
public struct VCPUSnapshot: Sendable {
    public var registers: Registers
    public var specialRegisters: SpecialRegisters
    public var fpu: FPUState
    public var extendedControlRegisters: ExtendedControlRegisters?
    public var events: VCPUEvents
    public var mpState: MPState
    /// MSR values, in KVM_GET_MSR_INDEX_LIST order.
    public var msrs: [MSREntry]
    /// The shadow-stack pointer, when the vCPU has one.
    public var guestSSP: UInt64?
    /// The features of the vCPU's CPUID when captured (for the rules).
    public var features: CPUFeatureSet
    /// The XSAVE area (AVX and every other enabled component), when the host
    /// has KVM_CAP_XSAVE; restored after `fpu`, whose x87/SSE part it repeats.
    public var xsave: XSAVEState? = nil
    /// The in-kernel local APIC's register page, when the VM has one.
    public var localAPIC: [UInt8]? = nil
    /// DR0-3, DR6 and DR7.
    public var debugRegisters: DebugRegisters? = nil

    public init(registers: Registers, specialRegisters: SpecialRegisters, fpu: FPUState, extendedControlRegisters: ExtendedControlRegisters?,
                events: VCPUEvents, mpState: MPState, msrs: [MSREntry], guestSSP: UInt64?, features: CPUFeatureSet,
                xsave: XSAVEState? = nil, localAPIC: [UInt8]? = nil, debugRegisters: DebugRegisters? = nil) {
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.fpu = fpu
        self.extendedControlRegisters = extendedControlRegisters
        self.events = events
        self.mpState = mpState
        self.msrs = msrs
        self.guestSSP = guestSSP
        self.features = features
        self.xsave = xsave
        self.localAPIC = localAPIC
        self.debugRegisters = debugRegisters
    }

    /// Why a snapshot cannot be restored.
    public enum RestoreError: Error, Equatable, CustomStringConvertible {
        /// A value breaks a KVM validity rule; nothing was written.
        case invalidValue(register: String, rule: String)
        /// KVM refused an MSR the rules allowed.
        case msrRefused(index: UInt32, name: String)

        public var description: String {
            switch self {
            case .invalidValue(let register, let rule): return "refusing to restore \(register): \(rule)"
            case .msrRefused(let index, let name): return "KVM_SET_MSRS refused \(name) (0x\(String(index, radix: 16)))"
            }
        }
    }

    /// Reads the vCPU's state. MSRs of the save/restore list that this vCPU
    /// cannot read (features it lacks) are left out.
    public static func capture(_ vcpu: VCPU, system: KVMSystem) throws -> VCPUSnapshot {
        let indices = try system.msrIndexList()
        var msrs: [MSREntry] = []
        var remaining = indices[...]
        // KVM_GET_MSRS stops at the first MSR it cannot read: take what it read,
        // skip the one it refused, and go on.
        while !remaining.isEmpty {
            let read = try vcpu.msrs(Array(remaining))
            msrs += read
            remaining = remaining.dropFirst(read.count + 1)
        }
        let features = CPUFeatureSet(table: try vcpu.cpuid())
        let listed = (try? vcpu.registerList()) ?? []
        let ssp = listed.contains(.guestSSP) ? try vcpu.oneRegister(.guestSSP) : nil
        let xcrs = try? vcpu.extendedControlRegisters()
        let hasXSAVE = try vcpu.vm.checkExtension(.xsave) > 0
        return VCPUSnapshot(
            registers: try vcpu.registers(), specialRegisters: try vcpu.specialRegisters(), fpu: try vcpu.fpu(),
            extendedControlRegisters: xcrs, events: try vcpu.events(), mpState: try vcpu.mpState(),
            msrs: msrs, guestSSP: ssp, features: features,
            xsave: hasXSAVE ? try vcpu.xsave() : nil, localAPIC: try? vcpu.localAPIC(), debugRegisters: try? vcpu.debugRegisters())
    }

    /// Checks every catalogued value against the rules for `features` (the
    /// target vCPU's), returning the first failure.
    public func validate(for features: CPUFeatureSet) -> RestoreError? {
        for entry in msrs {
            if case .invalid(let rule) = MSRRules.validate(msr: entry.index, value: entry.value, for: features) {
                return .invalidValue(register: ModelSpecificRegister.name(ofIndex: entry.index), rule: rule)
            }
        }
        if let ssp = guestSSP, case .invalid(let rule) = MSRRules.validateGuestSSP(ssp, for: features) {
            return .invalidValue(register: "GUEST_SSP", rule: rule)
        }
        return nil
    }

    /// Restores the state into `vcpu` after validating it against the vCPU's
    /// CPUID features. Throws `RestoreError` (writing nothing) when a value
    /// breaks a rule.
    ///
    /// Order: sregs first (they set APIC_BASE and the paging mode), then the
    /// GPRs, FPU and XSAVE, XCRs, the LAPIC page (before the MSRs, so that
    /// TSC_DEADLINE finds the timer in its mode), the MSRs, GUEST_SSP, debug
    /// registers, events and last the MP state.
    public func restore(into vcpu: VCPU) throws {
        let target = CPUFeatureSet(table: try vcpu.cpuid())
        if let error = validate(for: target) { throw error }
        try vcpu.setSpecialRegisters(specialRegisters)
        try vcpu.setRegisters(registers)
        try vcpu.setFPU(fpu)
        if let xsave { try vcpu.setXSAVE(xsave) }
        if let extendedControlRegisters { try vcpu.setExtendedControlRegisters(extendedControlRegisters) }
        if let localAPIC { try vcpu.setLocalAPIC(localAPIC) }
        var remaining = msrs[...]
        while !remaining.isEmpty {
            let written = try vcpu.setMSRs(Array(remaining))
            remaining = remaining.dropFirst(written)
            guard let refused = remaining.first else { break }
            // KVM refuses some listed MSRs outright in some VM configurations
            // (MSR_KVM_ASYNC_PF_INT without an in-kernel LAPIC, even to write 0).
            // When the target already holds the captured value there is nothing
            // to restore; any real difference is an error naming the MSR.
            guard (try? vcpu.msrs([refused.index]).first?.value) == refused.value else {
                throw RestoreError.msrRefused(
                    index: refused.index,
                    name: ModelSpecificRegister.name(ofIndex: refused.index))
            }
            remaining = remaining.dropFirst()
        }
        if let guestSSP { try vcpu.setOneRegister(.guestSSP, guestSSP) }
        if let debugRegisters { try vcpu.setDebugRegisters(debugRegisters) }
        try vcpu.setEvents(events)
        try vcpu.setMPState(mpState)
    }
}
