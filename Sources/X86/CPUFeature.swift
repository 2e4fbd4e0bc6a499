import KVM

/// A CPUID feature bit.
public struct CPUFeature: Hashable, Sendable, CustomStringConvertible {
    /// The register a feature bit lives in.
    public enum Register: Sendable { case eax, ebx, ecx, edx }

    public let name: String
    public let leaf: UInt32
    public let subleaf: UInt32
    public let register: Register
    public let bit: Int

    public init(name: String, leaf: UInt32, subleaf: UInt32 = 0, register: Register, bit: Int) {
        self.name = name
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.bit = bit
    }

    /// CET shadow stacks: CPUID.(EAX=7,ECX=0):ECX[7].
    public static let shadowStack = CPUFeature(name: "SHSTK", leaf: 7, register: .ecx, bit: 7)
    /// CET indirect branch tracking: CPUID.(EAX=7,ECX=0):EDX[20].
    public static let indirectBranchTracking = CPUFeature(name: "IBT", leaf: 7, register: .edx, bit: 20)
    /// Flexible return and event delivery: CPUID.(EAX=7,ECX=1):EAX[17].
    public static let fred = CPUFeature(name: "FRED", leaf: 7, subleaf: 1, register: .eax, bit: 17)
    /// LKGS instruction: CPUID.(EAX=7,ECX=1):EAX[18].
    public static let lkgs = CPUFeature(name: "LKGS", leaf: 7, subleaf: 1, register: .eax, bit: 18)
    /// XSAVES/XRSTORS and IA32_XSS: CPUID.(EAX=0xD,ECX=1):EAX[3].
    public static let xsaves = CPUFeature(name: "XSAVES", leaf: 0xD, subleaf: 1, register: .eax, bit: 3)
    public static let avx = CPUFeature(name: "AVX", leaf: 1, register: .ecx, bit: 28)
    public static let tscDeadline = CPUFeature(name: "TSC_DEADLINE", leaf: 1, register: .ecx, bit: 24)
    /// 1 GiB pages: CPUID.80000001H:EDX[26].
    public static let gigabytePages = CPUFeature(name: "PDPE1GB", leaf: 0x8000_0001, register: .edx, bit: 26)

    /// The features `kestrel caps` reports for the seed features.
    public static let seedFeatures: [CPUFeature] = [.shadowStack, .indirectBranchTracking, .fred, .lkgs]

    public var description: String { name }

    /// Whether the bit is set in a CPUID table (e.g. KVM_GET_SUPPORTED_CPUID).
    public func isPresent(in table: CPUIDTable) -> Bool {
        guard let entry = table.entry(function: leaf, index: subleaf) else { return false }
        return value(of: entry) & (1 << UInt32(bit)) != 0
    }

    /// A copy of the table with this feature's bit cleared (or set).
    public func setting(_ present: Bool, in table: CPUIDTable) -> CPUIDTable {
        guard var entry = table.entry(function: leaf, index: subleaf) else { return table }
        let mask: UInt32 = 1 << UInt32(bit)
        let updated = present ? value(of: entry) | mask : value(of: entry) & ~mask
        switch register {
        case .eax: entry.eax = updated
        case .ebx: entry.ebx = updated
        case .ecx: entry.ecx = updated
        case .edx: entry.edx = updated
        }
        var copy = table
        copy.set(entry)
        return copy
    }

    private func value(of entry: CPUIDEntry) -> UInt32 {
        switch register {
        case .eax: return entry.eax
        case .ebx: return entry.ebx
        case .ecx: return entry.ecx
        case .edx: return entry.edx
        }
    }
}
