/// Whether KVM accepts a value for an MSR, and if not, why.
public enum MSRValidity: Equatable, Sendable, CustomStringConvertible {
    case valid
    /// The rule the value breaks, in words.
    case invalid(String)

    public var isValid: Bool { self == .valid }

    public var description: String {
        switch self {
        case .valid: return "valid"
        case .invalid(let reason): return reason
        }
    }
}

/// The validity rules KVM applies to CET and FRED state (writes from the guest
/// and from the host alike), for a vCPU with a given set of features.
public enum MSRRules {
    /// Checks `value` for the MSR with `index` on a vCPU with `features`.
    /// MSRs outside the CET/FRED catalogue have no rules here and are valid.
    public static func validate(msr index: UInt32, value: UInt64, for features: CPUFeatureSet,
                                virtualAddressBits: Int = 48) -> MSRValidity {
        guard let msr = ModelSpecificRegister.catalogue[index] else { return .valid }
        if !msr.requiresAnyOf.isEmpty && !msr.requiresAnyOf.contains(where: features.contains) {
            let needed = msr.requiresAnyOf.map(\.name).joined(separator: " or ")
            return .invalid("\(msr.name) does not exist without \(needed)")
        }
        switch msr {
        case .userCET, .supervisorCET:
            return validateCETControl(msr, value, features)
        case .pl0SSP, .pl1SSP, .pl2SSP, .pl3SSP:
            return validateShadowStackPointer(msr.name, value, aligned: true, virtualAddressBits)
        case .interruptSSPTable:
            return validateShadowStackPointer(msr.name, value, aligned: false, virtualAddressBits)
        case .fredRSP0, .fredRSP1, .fredRSP2, .fredRSP3, .fredSSP1, .fredSSP2, .fredSSP3:
            return CanonicalAddress.isCanonical(value, virtualAddressBits: virtualAddressBits)
                ? .valid : .invalid("\(msr.name) 0x\(hex(value)) is not a canonical address")
        case .fredConfig:
            let entry = FREDConfiguration(rawValue: value).entryPoint
            return CanonicalAddress.isCanonical(entry, virtualAddressBits: virtualAddressBits)
                ? .valid : .invalid("IA32_FRED_CONFIG entry point 0x\(hex(entry)) is not a canonical address")
        default:
            return .valid
        }
    }

    /// Checks a value for the guest's shadow-stack pointer (KVM_REG_GUEST_SSP).
    public static func validateGuestSSP(_ value: UInt64, for features: CPUFeatureSet, virtualAddressBits: Int = 48) -> MSRValidity {
        guard features.contains(.shadowStack) else { return .invalid("GUEST_SSP does not exist without SHSTK") }
        return validateShadowStackPointer("GUEST_SSP", value, aligned: true, virtualAddressBits)
    }

    static func validateCETControl(_ msr: ModelSpecificRegister, _ value: UInt64, _ features: CPUFeatureSet) -> MSRValidity {
        if value & CETControl.reservedMask != 0 {
            return .invalid("\(msr.name) sets reserved bits 9:6 (0x\(hex(value & CETControl.reservedMask)))")
        }
        if !features.contains(.shadowStack) && value & CETControl.shadowStackMask != 0 {
            return .invalid("\(msr.name) sets bits 1:0 (0x\(hex(value & CETControl.shadowStackMask))), which need SHSTK")
        }
        if !features.contains(.indirectBranchTracking) && value & CETControl.indirectBranchTrackingMask != 0 {
            return .invalid("\(msr.name) sets bits 5:2 or 63:10 (0x\(hex(value & CETControl.indirectBranchTrackingMask))), which need IBT")
        }
        if value & 0x3000 != 0 {
            return .invalid("\(msr.name) legacy bitmap base 0x\(hex(value >> 12)) is not 4-aligned (bits 13:12 set)")
        }
        let control = CETControl(rawValue: value)
        if control.contains(.suppress) && control.contains(.waitForEndbranch) {
            return .invalid("\(msr.name) sets SUPPRESS (bit 10) together with WAIT_ENDBR (bit 11)")
        }
        return .valid
    }

    static func validateShadowStackPointer(_ name: String, _ value: UInt64, aligned: Bool, _ bits: Int) -> MSRValidity {
        if !CanonicalAddress.isCanonical(value, virtualAddressBits: bits) {
            return .invalid("\(name) 0x\(hex(value)) is not a canonical address")
        }
        if aligned && value & 0x3 != 0 {
            return .invalid("\(name) 0x\(hex(value)) is not 4-byte aligned")
        }
        return .valid
    }

    static func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}
