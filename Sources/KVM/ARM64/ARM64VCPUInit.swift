import CKVM

/// Features of an arm64 vCPU for KVM_ARM_VCPU_INIT, by bit in
/// `features[0]` (arch/arm64/include/uapi/asm/kvm.h, KVM_ARM_VCPU_*).
public struct ARM64VCPUFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// KVM_ARM_VCPU_POWER_OFF (0): the vCPU starts off; PSCI CPU_ON starts it.
    public static let powerOff = ARM64VCPUFeatures(rawValue: 1 << 0)
    /// KVM_ARM_VCPU_EL1_32BIT (1): AArch32 EL1 (realms refuse it).
    public static let el1AArch32 = ARM64VCPUFeatures(rawValue: 1 << 1)
    /// KVM_ARM_VCPU_PSCI_0_2 (2): PSCI 0.2 and later (realms require it).
    public static let psci02 = ARM64VCPUFeatures(rawValue: 1 << 2)
    /// KVM_ARM_VCPU_PMU_V3 (3).
    public static let pmuV3 = ARM64VCPUFeatures(rawValue: 1 << 3)
    /// KVM_ARM_VCPU_SVE (4): finalised with KVM_ARM_VCPU_FINALIZE.
    public static let sve = ARM64VCPUFeatures(rawValue: 1 << 4)
    /// KVM_ARM_VCPU_PTRAUTH_ADDRESS (5) and _GENERIC (6): both or neither.
    public static let pointerAuthenticationAddress = ARM64VCPUFeatures(rawValue: 1 << 5)
    public static let pointerAuthenticationGeneric = ARM64VCPUFeatures(rawValue: 1 << 6)
    /// KVM_ARM_VCPU_HAS_EL2 (7): nested virtualisation; HAS_EL2_E2H0 (8) limits it to E2H RES0.
    public static let hasEL2 = ARM64VCPUFeatures(rawValue: 1 << 7)
    public static let hasEL2E2H0 = ARM64VCPUFeatures(rawValue: 1 << 8)

    static let names: [(ARM64VCPUFeatures, String)] = [
        (.powerOff, "POWER_OFF"), (.el1AArch32, "EL1_32BIT"), (.psci02, "PSCI_0_2"), (.pmuV3, "PMU_V3"), (.sve, "SVE"),
        (.pointerAuthenticationAddress, "PTRAUTH_ADDRESS"), (.pointerAuthenticationGeneric, "PTRAUTH_GENERIC"),
        (.hasEL2, "HAS_EL2"), (.hasEL2E2H0, "HAS_EL2_E2H0"),
    ]

    public var description: String {
        let known = Self.names.filter { contains($0.0) }.map(\.1)
        let unknown = rawValue & ~Self.names.reduce(0) { $0 | $1.0.rawValue }
        let all = known + (unknown == 0 ? [] : ["0x" + String(unknown, radix: 16)])
        return all.isEmpty ? "none" : all.joined(separator: "|")
    }
}

/// The argument of KVM_ARM_VCPU_INIT and KVM_ARM_PREFERRED_TARGET: a target
/// CPU type and the feature bits.
public struct ARM64VCPUInit: Hashable, Sendable {
    /// KVM_ARM_TARGET_GENERIC_V8.
    public static let genericV8Target: UInt32 = 5

    public var target: UInt32
    public var features: ARM64VCPUFeatures

    public init(target: UInt32 = ARM64VCPUInit.genericV8Target, features: ARM64VCPUFeatures = [.psci02]) {
        self.target = target
        self.features = features
    }

    init(_ raw: ckvm_vcpu_init) {
        target = raw.target
        features = ARM64VCPUFeatures(rawValue: raw.features.0)
    }

    var raw: ckvm_vcpu_init {
        var value = ckvm_vcpu_init()
        value.target = target
        value.features.0 = features.rawValue
        return value
    }
}

extension KVMRequest {
    public static let armVCPUInit = IoctlRequest("KVM_ARM_VCPU_INIT", .write, 0xAE, size: MemoryLayout<ckvm_vcpu_init>.size)
    public static let armPreferredTarget = IoctlRequest("KVM_ARM_PREFERRED_TARGET", .read, 0xAF, size: MemoryLayout<ckvm_vcpu_init>.size)
    public static let armVCPUFinalize = IoctlRequest("KVM_ARM_VCPU_FINALIZE", .write, 0xC2, size: MemoryLayout<Int32>.size)
}

extension VirtualMachine {
    /// The target (and no features) KVM suggests for this host's CPUs. The
    /// corresponding ioctl is KVM_ARM_PREFERRED_TARGET (arm64 only; ENOTTY elsewhere).
    public func preferredARM64Target() throws -> ARM64VCPUInit {
        var raw = ckvm_vcpu_init()
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.armPreferredTarget, &raw)
        return ARM64VCPUInit(raw)
    }
}

extension VCPU {
    /// Initialises an arm64 vCPU with a target and features; required before
    /// its first KVM_RUN. The corresponding ioctl is KVM_ARM_VCPU_INIT.
    public func initializeARM64(_ configuration: ARM64VCPUInit) throws {
        var raw = configuration.raw
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.armVCPUInit, &raw)
    }

    /// Finalises a feature that needs it (KVM_ARM_VCPU_SVE) after its
    /// registers are configured. The corresponding ioctl is KVM_ARM_VCPU_FINALIZE.
    public func finalizeARM64(_ feature: Int32) throws {
        var value = feature
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.armVCPUFinalize, &value)
    }
}

/// The arm64 GICv3 as KVM emulates it (KVM_DEV_TYPE_ARM_VGIC_V3): the
/// distributor and redistributor addresses, then initialisation once the
/// vCPUs exist. Realms need it: KVM refuses to activate a realm without an
/// in-kernel irqchip.
public enum ARM64GICv3 {
    /// KVM_DEV_TYPE_ARM_VGIC_V3.
    public static let deviceType: UInt32 = 7
    /// KVM_DEV_ARM_VGIC_GRP_ADDR with KVM_VGIC_V3_ADDR_TYPE_DIST / _REDIST.
    public static let addressGroup: UInt32 = 0
    public static let distributorAddress: UInt64 = 2
    public static let redistributorAddress: UInt64 = 3
    /// KVM_DEV_ARM_VGIC_GRP_CTRL with KVM_DEV_ARM_VGIC_CTRL_INIT.
    public static let controlGroup: UInt32 = 4
    public static let initialise: UInt64 = 0
    /// KVM_VGIC_V3_DIST_SIZE and one redistributor's size (2 x 64 KiB).
    public static let distributorSize: UInt64 = 0x1_0000
    public static let redistributorSize: UInt64 = 0x2_0000

    /// Creates the VGICv3 of `vm` at the given addresses. Call
    /// `KVMDevice.setAttribute(group: controlGroup, attribute: initialise)`
    /// after the vCPUs are created.
    public static func create(on vm: VirtualMachine, distributor: UInt64, redistributors: UInt64) throws -> KVMDevice {
        let gic = try vm.createDevice(type: deviceType)
        try gic.setAttribute(group: addressGroup, attribute: distributorAddress, value: distributor)
        try gic.setAttribute(group: addressGroup, attribute: redistributorAddress, value: redistributors)
        return gic
    }
}
