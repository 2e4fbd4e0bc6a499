import KVM
import X86

/// A named CPU model: which CPUID features of KVM_GET_SUPPORTED_CPUID a guest
/// sees. Templates only remove features; they never add what KVM lacks.
public struct CPUTemplate: Sendable {
    public let name: String
    public let summary: String
    /// The features this template hides.
    public let masked: [CPUFeature]

    /// Everything KVM supports.
    public static let host = CPUTemplate(name: "host", summary: "every feature KVM_GET_SUPPORTED_CPUID offers", masked: [])

    /// A stable, migratable subset: no AVX-512, TSX, MPX, SGX, PKU, WAITPKG,
    /// MONITOR/MWAIT, CET or FRED.
    public static let conservative = CPUTemplate(
        name: "conservative",
        summary: "hides AVX-512, TSX, MPX, SGX, PKU/OSPKE, WAITPKG, MONITOR, CET and FRED",
        masked: [
            CPUFeature(name: "MONITOR", leaf: 1, register: .ecx, bit: 3),
            CPUFeature(name: "SGX", leaf: 7, register: .ebx, bit: 2),
            CPUFeature(name: "HLE", leaf: 7, register: .ebx, bit: 4),
            CPUFeature(name: "RTM", leaf: 7, register: .ebx, bit: 11),
            CPUFeature(name: "MPX", leaf: 7, register: .ebx, bit: 14),
            CPUFeature(name: "AVX512F", leaf: 7, register: .ebx, bit: 16),
            CPUFeature(name: "AVX512DQ", leaf: 7, register: .ebx, bit: 17),
            CPUFeature(name: "AVX512IFMA", leaf: 7, register: .ebx, bit: 21),
            CPUFeature(name: "AVX512PF", leaf: 7, register: .ebx, bit: 26),
            CPUFeature(name: "AVX512ER", leaf: 7, register: .ebx, bit: 27),
            CPUFeature(name: "AVX512CD", leaf: 7, register: .ebx, bit: 28),
            CPUFeature(name: "AVX512BW", leaf: 7, register: .ebx, bit: 30),
            CPUFeature(name: "AVX512VL", leaf: 7, register: .ebx, bit: 31),
            CPUFeature(name: "AVX512VBMI", leaf: 7, register: .ecx, bit: 1),
            CPUFeature(name: "PKU", leaf: 7, register: .ecx, bit: 3),
            CPUFeature(name: "OSPKE", leaf: 7, register: .ecx, bit: 4),
            CPUFeature(name: "WAITPKG", leaf: 7, register: .ecx, bit: 5),
            CPUFeature(name: "AVX512VBMI2", leaf: 7, register: .ecx, bit: 6),
            .shadowStack,
            CPUFeature(name: "AVX512VNNI", leaf: 7, register: .ecx, bit: 11),
            CPUFeature(name: "AVX512BITALG", leaf: 7, register: .ecx, bit: 12),
            CPUFeature(name: "AVX512VPOPCNTDQ", leaf: 7, register: .ecx, bit: 14),
            CPUFeature(name: "AVX512_4VNNIW", leaf: 7, register: .edx, bit: 2),
            CPUFeature(name: "AVX512_4FMAPS", leaf: 7, register: .edx, bit: 3),
            CPUFeature(name: "AVX512_VP2INTERSECT", leaf: 7, register: .edx, bit: 8),
            CPUFeature(name: "TSXLDTRK", leaf: 7, register: .edx, bit: 16),
            .indirectBranchTracking,
            CPUFeature(name: "AVX512_FP16", leaf: 7, register: .edx, bit: 23),
            CPUFeature(name: "AVX512_BF16", leaf: 7, subleaf: 1, register: .eax, bit: 5),
            .fred, .lkgs,
        ])

    /// The conservative set without CMPXCHG16B as well. Nested, software-backed
    /// KVM (as on our machines) cannot emulate a locked CMPXCHG16B, which Linux
    /// uses when CPUID offers CX16.
    public static let nested = CPUTemplate(
        name: "nested",
        summary: "the conservative set, CX16 (CMPXCHG16B), and XSAVE with the AVX family, for hosts whose KVM cannot emulate them",
        masked: conservative.masked + [
            CPUFeature(name: "CX16", leaf: 1, register: .ecx, bit: 13),
            CPUFeature(name: "FMA", leaf: 1, register: .ecx, bit: 12),
            CPUFeature(name: "XSAVE", leaf: 1, register: .ecx, bit: 26),
            CPUFeature(name: "OSXSAVE", leaf: 1, register: .ecx, bit: 27),
            CPUFeature(name: "AVX", leaf: 1, register: .ecx, bit: 28),
            CPUFeature(name: "F16C", leaf: 1, register: .ecx, bit: 29),
            CPUFeature(name: "AVX2", leaf: 7, register: .ebx, bit: 5),
            CPUFeature(name: "VAES", leaf: 7, register: .ecx, bit: 9),
            CPUFeature(name: "VPCLMULQDQ", leaf: 7, register: .ecx, bit: 10),
            CPUFeature(name: "AVX_VNNI", leaf: 7, subleaf: 1, register: .eax, bit: 4),
            .xsaves,
            CPUFeature(name: "XSAVEOPT", leaf: 0xD, subleaf: 1, register: .eax, bit: 0),
            CPUFeature(name: "XSAVEC", leaf: 0xD, subleaf: 1, register: .eax, bit: 1),
        ])

    public static let all: [CPUTemplate] = [.host, .conservative, .nested]
    public static let defaultName = "host"

    public static func named(_ name: String) -> CPUTemplate? { all.first { $0.name == name } }

    /// The CPUID table for vCPU `index` of the machine `topology`: the
    /// supported table with this template's masks, the hypervisor bit, and the
    /// vCPU's APIC ids and topology.
    public func table(from supported: CPUIDTable, vcpu index: Int, of topology: CPUTopology) -> CPUIDTable {
        var table = supported
        for feature in masked { table = feature.setting(false, in: table) }
        return topology.apply(to: table, vcpu: index)
    }
}
