/// Bits of IA32_U_CET and IA32_S_CET.
public struct CETControl: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 0, SH_STK_EN: shadow stacks enabled (needs SHSTK).
    public static let shadowStackEnable = CETControl(rawValue: 1 << 0)
    /// Bit 1, WR_SHSTK_EN: WRSS allowed (needs SHSTK).
    public static let writeShadowStackEnable = CETControl(rawValue: 1 << 1)
    /// Bit 2, ENDBR_EN: indirect branch tracking enabled (needs IBT).
    public static let endbranchEnable = CETControl(rawValue: 1 << 2)
    /// Bit 3, LEG_IW_EN: legacy compatibility bitmap enabled (needs IBT).
    public static let legacyInterworkingEnable = CETControl(rawValue: 1 << 3)
    /// Bit 4, NO_TRACK_EN: NOTRACK prefix honoured (needs IBT).
    public static let noTrackEnable = CETControl(rawValue: 1 << 4)
    /// Bit 5, SUPPRESS_DIS: suppression disabled (needs IBT).
    public static let suppressDisable = CETControl(rawValue: 1 << 5)
    /// Bit 10, SUPPRESS: tracker suppressed (needs IBT).
    public static let suppress = CETControl(rawValue: 1 << 10)
    /// Bit 11, TRACKER = WAIT_FOR_ENDBRANCH (needs IBT).
    public static let waitForEndbranch = CETControl(rawValue: 1 << 11)

    /// Bits 9:6: reserved, must be zero.
    public static let reservedMask: UInt64 = 0x3C0
    /// Bits 1:0: exist only with SHSTK.
    public static let shadowStackMask: UInt64 = 0x3
    /// Bits 5:2 and 63:10: exist only with IBT.
    public static let indirectBranchTrackingMask: UInt64 = 0x3C | ~UInt64(0x3FF)
    /// Bits 63:12: the legacy code page bitmap's linear address, in pages.
    public static let legacyBitmapMask: UInt64 = ~UInt64(0xFFF)

    /// The legacy bitmap base field (value >> 12); KVM requires it 4-aligned,
    /// i.e. bits 13:12 of the MSR clear.
    public var legacyBitmapBase: UInt64 { rawValue >> 12 }
}

/// IA32_XSS bits for CET state.
public enum XSSBits {
    /// Bit 11: CET user state (IA32_U_CET, IA32_PL3_SSP).
    public static let cetUser: UInt64 = 1 << 11
    /// Bit 12: CET supervisor state (PL0_SSP..PL2_SSP).
    public static let cetSupervisor: UInt64 = 1 << 12

    /// The IA32_XSS bits a CPUID table reports as supported
    /// (CPUID.(EAX=0DH,ECX=1):EDX:ECX).
    public static func supported(in table: KVMCPUIDTable) -> UInt64 {
        guard let entry = table.entry(function: 0xD, index: 1) else { return 0 }
        return UInt64(entry.edx) << 32 | UInt64(entry.ecx)
    }
}
