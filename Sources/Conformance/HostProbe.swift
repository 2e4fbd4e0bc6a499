import HostSystem
import KVM
import X86

#if canImport(Glibc)
import Glibc
#endif

/// What this host's KVM offers, asked once per run and used to evaluate
/// requirements and to parametrize tests.
public final class HostProbe {
    /// The open KVM system, or nil when /dev/kvm cannot be used.
    public let kvm: KVMSystem?
    /// Why /dev/kvm cannot be used.
    public let unavailableReason: String?
    public let vmTypes: [VMType]
    public let supportedCPUID: CPUIDTable
    private var capabilityCache: [Int32: Int] = [:]
    private var vmCapabilityCache: [String: Int] = [:]

    public init(path: String = "/dev/kvm") {
        do {
            let kvm = try KVMSystem(path: path)
            self.kvm = kvm
            self.unavailableReason = nil
            self.vmTypes = (try? kvm.supportedVMTypes()) ?? [.default]
            self.supportedCPUID = (try? kvm.supportedCPUID()) ?? CPUIDTable(entries: [])
        } catch {
            self.kvm = nil
            self.unavailableReason = "cannot use \(path): \(error)"
            self.vmTypes = [.default]
            self.supportedCPUID = CPUIDTable(entries: [])
        }
    }

    /// The running kernel's release (uname -r), for reports.
    public var kernelRelease: String { HostKernel.release }

    /// The machine architecture (uname -m: x86_64, aarch64).
    public var machine: String { HostKernel.machine }

    /// KVM_CHECK_EXTENSION on /dev/kvm (0 when unavailable).
    public func capability(_ capability: Capability) -> Int {
        if let value = capabilityCache[capability.rawValue] { return value }
        let value = (try? kvm?.checkExtension(capability)) ?? 0
        capabilityCache[capability.rawValue] = value
        return value
    }

    /// KVM_CHECK_EXTENSION on a fresh VM of `type` (0 when the VM cannot be made).
    public func capability(_ capability: Capability, vmType type: VMType) -> Int {
        let key = "\(capability.rawValue)/\(type.rawValue)"
        if let value = vmCapabilityCache[key] { return value }
        let value = (try? kvm?.createVirtualMachine(type: type).checkExtension(capability)) ?? 0
        vmCapabilityCache[key] = value
        return value
    }

    public func hasFeature(_ feature: CPUFeature) -> Bool { feature.isPresent(in: supportedCPUID) }

    /// A kvm module parameter's value (its sysfs file, trimmed), or nil when
    /// the module has no such parameter.
    public static func kvmParameter(_ name: String) -> String? {
        let fd = open("/sys/module/kvm/parameters/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        guard count >= 0 else { return nil }
        return String(decoding: buffer.prefix(count).filter { ![9, 10, 13, 32].contains($0) }, as: UTF8.self)
    }

    /// Why a requirement is not met, or nil when it is.
    public func unmetReason(_ requirement: Requirement) -> String? {
        // The architecture first: another architecture's capability numbers mean nothing here.
        if case .architecture(let wanted) = requirement {
            return machine == wanted ? nil : "needs an \(wanted) host; this one is \(machine)"
        }
        if let unavailableReason { return unavailableReason }
        switch requirement {
        case .architecture: return nil
        case .capability(let capability):
            return self.capability(capability) != 0 ? nil : "\(capability.name) is not supported by this host's KVM"
        case .capabilityBits(let capability, let mask, let type):
            let value = self.capability(capability, vmType: type)
            return value & mask == mask ? nil
                : "\(capability.name) on \(type.shortName) VMs is 0x\(String(value, radix: 16)), lacking bits 0x\(String(mask & ~value, radix: 16))"
        case .vmType(let type):
            return vmTypes.contains(type) ? nil : "\(type.name) is not in KVM_CAP_VM_TYPES on this host"
        case .cpuFeature(let feature):
            return hasFeature(feature) ? nil : "CPUID \(feature.name) is not in KVM_GET_SUPPORTED_CPUID on this host"
        case .hostFile(let path):
            return access(path, F_OK) == 0 ? nil : "\(path) does not exist on this host"
        case .kvmParameter(let name):
            let value = Self.kvmParameter(name)
            return value.map { ["", "0", "N", "n"].contains($0) } == false ? nil
                : "kvm.\(name) is \(value.map { $0.isEmpty ? "empty" : $0 } ?? "not a parameter of this host's kvm module") "
                    + "(/sys/module/kvm/parameters/\(name))"
        }
    }
}
