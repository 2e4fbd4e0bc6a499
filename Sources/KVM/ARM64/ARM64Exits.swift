/// The flags of an arm64 KVM_EXIT_HYPERCALL: an SMCCC call the guest made
/// that the VM's SMCCC filter (KVM_ARM_VM_SMCCC_FILTER, action
/// KVM_SMCCC_FILTER_FWD_TO_USER) hands to userspace.
public struct ARM64HypercallFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// KVM_HYPERCALL_EXIT_SMC: the guest used SMC (HVC otherwise).
    public static let smc = ARM64HypercallFlags(rawValue: 1 << 0)
    /// KVM_HYPERCALL_EXIT_16BIT: a 16-bit (Thumb) instruction made the call.
    public static let sixteenBit = ARM64HypercallFlags(rawValue: 1 << 1)
}

/// The actions of the arm64 SMCCC filter (enum kvm_smccc_filter_action),
/// set per function-ID range with KVM_SET_DEVICE_ATTR on the VM fd, group
/// KVM_ARM_VM_SMCCC_CTRL (0), attribute KVM_ARM_VM_SMCCC_FILTER (0).
public enum ARM64SMCCCFilterAction: UInt8, Sendable {
    case handle = 0
    case deny = 1
    case forwardToUser = 2
}

extension HypercallExit {
    /// The SMCCC function ID of a forwarded arm64 call (`nr`). Its arguments
    /// are in x1 to x17 and the results go back in x0 to x3, both through
    /// KVM_GET_ONE_REG / KVM_SET_ONE_REG.
    public var smcccFunctionID: UInt32 { UInt32(truncatingIfNeeded: number) }
    /// How the guest made the call.
    public var arm64Flags: ARM64HypercallFlags { ARM64HypercallFlags(rawValue: flags) }
}

extension SystemEvent {
    /// KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2: an arm64 reset that came from
    /// PSCI SYSTEM_RESET2 rather than SYSTEM_RESET (bit 0 of data[0]).
    public var isPSCIReset2: Bool { type == .reset && (data.first ?? 0) & 1 != 0 }
}
