import FoundationEssentials
import Confidential
import Glibc
import HostSystem
import KVM
import X86

/// What this host's KVM offers for Kestrel's seed features (`kestrel caps`).
public struct HostReport: Codable, Sendable {
    public struct CapabilityValue: Codable, Sendable {
        public let name: String
        public let value: Int
    }

    public struct FeatureValue: Codable, Sendable {
        public let name: String
        public let supported: Bool
    }

    public struct MSRValue: Codable, Sendable {
        public let name: String
        public let index: String
        /// Present in KVM_GET_MSR_INDEX_LIST (saved and restored by KVM).
        public let inSaveRestoreList: Bool
    }

    public struct GuestMemfdValue: Codable, Sendable {
        public let vmType: String
        public let flags: String
        public let rawFlags: UInt64
    }

    public var architecture: String
    public var kernelRelease: String
    public var devicePath: String
    /// Why /dev/kvm could not be used, when it could not.
    public var unavailableReason: String?
    public var apiVersion: Int?
    public var vmTypes: [String] = []
    public var guestMemfd: [GuestMemfdValue] = []
    /// KVM_CAP_MEMORY_ATTRIBUTES: the attribute bits KVM supports (PRIVATE = 0x8).
    public var memoryAttributes: UInt64 = 0
    public var capabilities: [CapabilityValue] = []
    public var cpuidFeatures: [FeatureValue] = []
    public var msrs: [MSRValue] = []
    public var sevDevicePresent: Bool = false
    /// KVM_X86_GRP_SEV / KVM_X86_SEV_SNP_REQ_CERTS on /dev/kvm.
    public var snpCertificateRequests: Bool = false
    /// How this KVM runs guest code (measured), or why it could not be measured.
    /// Arm CCA realms: whether this host can run them, and if not, why.
    public var realmSupport: String = ""
    public var guestExecution: GuestExecutionProbe?
    public var guestExecutionError: String?

    static let reportedCapabilities: [Capability] = [
        .userMemory2, .guestMemfd, .guestMemfdFlags, .memoryAttributes, .memoryFaultInfo, .preFaultMemory,
        .oneRegister, .immediateExit, .vcpuEvents, .xcrs, .msrFeatures, .maximumVCPUs,
    ]

    /// Probes the host.
    public static func probe(devicePath: String = "/dev/kvm") -> HostReport {
        var report = HostReport(architecture: HostKernel.machine, kernelRelease: HostKernel.release, devicePath: devicePath)
        report.sevDevicePresent = FileManager.default.fileExists(atPath: "/dev/sev")
        report.realmSupport = realmSupport(architecture: report.architecture, kvm: try? KVMSystem(path: devicePath))
        let kvm: KVMSystem
        do {
            kvm = try KVMSystem(path: devicePath)
        } catch {
            report.unavailableReason = String(describing: error)
            return report
        }
        report.apiVersion = try? kvm.apiVersion()
        let types = (try? kvm.supportedVMTypes()) ?? [.default]
        report.vmTypes = types.map(\.name)
        for type in types {
            let flags = (try? kvm.createVirtualMachine(type: type).supportedGuestMemfdFlags()) ?? []
            report.guestMemfd.append(GuestMemfdValue(vmType: type.name, flags: flags.description, rawFlags: flags.rawValue))
        }
        report.memoryAttributes = UInt64((try? kvm.checkExtension(.memoryAttributes)) ?? 0)
        report.capabilities = reportedCapabilities.map {
            CapabilityValue(name: $0.name, value: (try? kvm.checkExtension($0)) ?? 0)
        }
        let cpuid = (try? kvm.supportedCPUID()) ?? CPUIDTable(entries: [])
        report.cpuidFeatures = CPUFeature.seedFeatures.map { FeatureValue(name: $0.name, supported: $0.isPresent(in: cpuid)) }
        let saved = Set((try? kvm.msrIndexList()) ?? [])
        report.msrs = ([ModelSpecificRegister.xss] + ModelSpecificRegister.cet + ModelSpecificRegister.fred).map {
            MSRValue(name: $0.name, index: "0x" + String($0.index, radix: 16), inSaveRestoreList: saved.contains($0.index))
        }
        report.snpCertificateRequests = (try? kvm.hasDeviceAttribute(group: 1, attribute: 2)) ?? false
        do {
            report.guestExecution = try GuestExecutionProbe.measure(kvm: kvm)
        } catch {
            report.guestExecutionError = "\(error)"
        }
        return report
    }

    /// What `kestrel caps` says of Arm CCA realms.
    static func realmSupport(architecture: String, kvm: KVMSystem?) -> String {
        RealmHostSupport.missing(architecture: architecture, kvm: kvm).map { "no: \($0)" }
            ?? "yes (KVM_CAP_ARM_RMI, \(Capability.armRMI.rawValue) in the v14 series)"
    }

    /// The report as an aligned text table.
    public func renderText() -> String {
        var rows: [(String, String)] = [
            ("architecture", architecture),
            ("kernel", kernelRelease),
            ("KVM device", devicePath + (unavailableReason.map { " (unavailable: \($0))" } ?? "")),
        ]
        if unavailableReason == nil {
            rows.append(("guest code", guestExecution?.summary ?? "not measured: \(guestExecutionError ?? "unknown")"))
            rows.append(("API version", apiVersion.map(String.init) ?? "?"))
            rows.append(("VM types", vmTypes.joined(separator: ", ")))
            for entry in guestMemfd {
                rows.append(("guest_memfd flags (\(entry.vmType))", "\(entry.flags) (0x\(String(entry.rawFlags, radix: 16)))"))
            }
            let attributes = memoryAttributes == 0 ? "none" : "0x\(String(memoryAttributes, radix: 16))" + (memoryAttributes & 0x8 != 0 ? " (PRIVATE)" : "")
            rows.append(("memory attributes", attributes))
            for capability in capabilities { rows.append((capability.name, String(capability.value))) }
            for feature in cpuidFeatures { rows.append(("CPUID \(feature.name)", feature.supported ? "yes" : "no")) }
            for msr in msrs {
                rows.append(("\(msr.name) \(msr.index)", msr.inSaveRestoreList ? "in save/restore list" : "not listed"))
            }
            rows.append(("SNP certificate requests", snpCertificateRequests ? "yes" : "no"))
        }
        rows.append(("SEV device (/dev/sev)", sevDevicePresent ? "present" : "absent"))
        rows.append(("Arm CCA realms", realmSupport))
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0 + String(repeating: " ", count: width - $0.0.count) + "  " + $0.1 }.joined(separator: "\n")
    }

    /// The report as pretty-printed JSON.
    public func renderJSON() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
