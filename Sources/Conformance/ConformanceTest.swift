import KVM
import X86

/// What a test needs from the host. A missing requirement makes the test SKIP
/// with a reason that names it.
public enum Requirement: Sendable, CustomStringConvertible {
    /// KVM_CHECK_EXTENSION on /dev/kvm returns non-zero.
    case capability(Capability)
    /// The capability's value (on a VM of the type) has all bits of `mask`.
    case capabilityBits(Capability, mask: Int, vmType: VMType)
    /// The VM type is in KVM_CAP_VM_TYPES.
    case vmType(VMType)
    /// The CPUID feature is in KVM_GET_SUPPORTED_CPUID.
    case cpuFeature(CPUFeature)
    /// The host file exists (e.g. a sysfs knob).
    case hostFile(String)
    /// The host's machine architecture (uname -m), e.g. `aarch64`.
    case architecture(String)
    /// A parameter of the kvm module is set (non-zero, or Y), e.g.
    /// `force_emulation_prefix`, read from /sys/module/kvm/parameters.
    case kvmParameter(String)

    public var description: String {
        switch self {
        case .capability(let capability): return capability.name
        case .capabilityBits(let capability, let mask, let type):
            return "\(capability.name) bits 0x\(String(mask, radix: 16)) on \(type.shortName) VMs"
        case .vmType(let type): return type.name
        case .cpuFeature(let feature): return "CPUID \(feature.name)"
        case .hostFile(let path): return path
        case .architecture(let machine): return "an \(machine) host"
        case .kvmParameter(let name): return "kvm.\(name)"
        }
    }
}

/// A conformance test: requirements, then a body that runs on the host (and
/// usually drives a guest) and throws to fail or skip.
public struct ConformanceTest: Sendable {
    /// Suite name (`basics`, `guest_memfd`).
    public let suite: String
    /// Name within the suite, dot-separated for parameters
    /// (`default.flags_0x3.mmap_supported`).
    public let name: String
    public let requirements: [Requirement]
    /// One line saying what the test checks.
    public let summary: String
    public let body: @Sendable (TestContext) throws -> Void

    public init(suite: String, name: String, summary: String, requires requirements: [Requirement] = [],
                body: @escaping @Sendable (TestContext) throws -> Void) {
        self.suite = suite
        self.name = name
        self.summary = summary
        self.requirements = requirements
        self.body = body
    }

    /// Full identifier: `suite.name`.
    public var id: String { "\(suite).\(name)" }
}
