/// An x86 model-specific register known to Kestrel.
public struct ModelSpecificRegister: Hashable, Sendable, CustomStringConvertible {
    public let index: UInt32
    public let name: String
    /// The CPUID features of which at least one must be present for the MSR to
    /// exist (empty: architectural, always present).
    public let requiresAnyOf: [CPUFeature]

    public init(index: UInt32, name: String, requiresAnyOf: [CPUFeature] = []) {
        self.index = index
        self.name = name
        self.requiresAnyOf = requiresAnyOf
    }

    public var description: String { "\(name) (0x\(String(index, radix: 16)))" }

    public static let efer = ModelSpecificRegister(index: 0xC000_0080, name: "IA32_EFER")
    public static let xss = ModelSpecificRegister(index: 0xDA0, name: "IA32_XSS", requiresAnyOf: [.xsaves])

    // CET
    public static let userCET = ModelSpecificRegister(index: 0x6A0, name: "IA32_U_CET", requiresAnyOf: [.shadowStack, .indirectBranchTracking])
    public static let supervisorCET = ModelSpecificRegister(index: 0x6A2, name: "IA32_S_CET", requiresAnyOf: [.shadowStack, .indirectBranchTracking])
    public static let pl0SSP = ModelSpecificRegister(index: 0x6A4, name: "IA32_PL0_SSP", requiresAnyOf: [.shadowStack])
    public static let pl1SSP = ModelSpecificRegister(index: 0x6A5, name: "IA32_PL1_SSP", requiresAnyOf: [.shadowStack])
    public static let pl2SSP = ModelSpecificRegister(index: 0x6A6, name: "IA32_PL2_SSP", requiresAnyOf: [.shadowStack])
    public static let pl3SSP = ModelSpecificRegister(index: 0x6A7, name: "IA32_PL3_SSP", requiresAnyOf: [.shadowStack])
    public static let interruptSSPTable = ModelSpecificRegister(index: 0x6A8, name: "IA32_INT_SSP_TAB", requiresAnyOf: [.shadowStack])

    // FRED
    public static let fredRSP0 = ModelSpecificRegister(index: 0x1CC, name: "IA32_FRED_RSP0", requiresAnyOf: [.fred])
    public static let fredRSP1 = ModelSpecificRegister(index: 0x1CD, name: "IA32_FRED_RSP1", requiresAnyOf: [.fred])
    public static let fredRSP2 = ModelSpecificRegister(index: 0x1CE, name: "IA32_FRED_RSP2", requiresAnyOf: [.fred])
    public static let fredRSP3 = ModelSpecificRegister(index: 0x1CF, name: "IA32_FRED_RSP3", requiresAnyOf: [.fred])
    public static let fredStackLevels = ModelSpecificRegister(index: 0x1D0, name: "IA32_FRED_STKLVLS", requiresAnyOf: [.fred])
    public static let fredSSP1 = ModelSpecificRegister(index: 0x1D1, name: "IA32_FRED_SSP1", requiresAnyOf: [.fred])
    public static let fredSSP2 = ModelSpecificRegister(index: 0x1D2, name: "IA32_FRED_SSP2", requiresAnyOf: [.fred])
    public static let fredSSP3 = ModelSpecificRegister(index: 0x1D3, name: "IA32_FRED_SSP3", requiresAnyOf: [.fred])
    public static let fredConfig = ModelSpecificRegister(index: 0x1D4, name: "IA32_FRED_CONFIG", requiresAnyOf: [.fred])

    /// CET MSRs, in index order.
    public static let cet: [ModelSpecificRegister] = [
        .userCET, .supervisorCET, .pl0SSP, .pl1SSP, .pl2SSP, .pl3SSP, .interruptSSPTable,
    ]
    /// FRED MSRs, in index order (FRED's SSP0 is IA32_PL0_SSP).
    public static let fred: [ModelSpecificRegister] = [
        .fredRSP0, .fredRSP1, .fredRSP2, .fredRSP3, .fredStackLevels, .fredSSP1, .fredSSP2, .fredSSP3, .fredConfig,
    ]

    /// The catalogued name of an MSR index, or `MSR 0x...` for others.
    public static func name(ofIndex index: UInt32) -> String {
        catalogue[index]?.name ?? "MSR 0x\(String(index, radix: 16))"
    }

    /// Every catalogued MSR by index.
    public static let catalogue: [UInt32: ModelSpecificRegister] = Dictionary(
        uniqueKeysWithValues: ([efer, xss] + cet + fred).map { ($0.index, $0) })
}
