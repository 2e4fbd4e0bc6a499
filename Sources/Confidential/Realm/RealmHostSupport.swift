import KVM

/// Whether a host can run Arm CCA realms, for `kestrel caps` and
/// `kestrel run --confidential realm`. KVM_CAP_ARM_RMI's number is only asked
/// on arm64: on other architectures it may name another capability.
public enum RealmHostSupport {
    /// What the host lacks, or nil when its KVM offers realms.
    public static func missing(architecture: String, kvm: KVMSystem?) -> String? {
        let capability = "KVM_CAP_ARM_RMI (\(Capability.armRMI.rawValue) in the v14 series)"
        guard architecture == "aarch64" else {
            return "realms need an arm64 host whose KVM offers \(capability); this host is \(architecture)"
        }
        guard let kvm, (try? kvm.checkExtension(.armRMI)) == 1 else {
            return "this arm64 host's KVM does not offer \(capability); the realm support is not merged upstream"
        }
        return nil
    }
}
