import ArgumentParser
import Confidential
import KVM

/// `kestrel snp`: tools for SEV-SNP guests.
struct SNPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snp",
        abstract: "SEV-SNP tools: certificate blobs for extended guest requests, and host readiness.",
        subcommands: [SNPCertificatesCommand.self, SNPStatusCommand.self])
}

/// `kestrel snp status`: what this host offers for SNP launches and the certificate service.
struct SNPStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Say whether this host can launch SNP guests and forward certificate requests, and what is missing.")

    @Option(name: .long, help: "The KVM device to open.")
    var device = "/dev/kvm"

    func run() throws {
        let kvm: KVMSystem
        do { kvm = try KVMSystem(path: device) } catch {
            printError("kestrel: \(error)")
            throw ExitCode(2)
        }
        let support = try SNPHostSupport(kvm: kvm)
        print("KVM_X86_SNP_VM:             \(support.snpVMType ? "offered" : "not offered") (KVM_CAP_VM_TYPES 0x\(String(support.vmTypeMask, radix: 16)))")
        switch support.sevDevice {
        case .success: print("\(SNPHostSupport.sevDevicePath):                   present")
        case .failure(let error): print("\(SNPHostSupport.sevDevicePath):                   \(error.symbolicName) (\(error))")
        }
        print("KVM_X86_SEV_SNP_REQ_CERTS:  \(support.certificateRequests ? "advertised" : "not advertised") (KVM_HAS_DEVICE_ATTR group 1, attribute 2)")
        let missing = support.missingForLaunch
        if missing.isEmpty {
            print("SNP launch: possible")
        } else {
            print("SNP launch: not possible here")
            for reason in missing { print("  - \(reason)") }
        }
        print("certificate service: \(support.certificateRequests ? "can be enabled (KVM_SEV_SNP_ENABLE_REQ_CERTS)" : "cannot be enabled: KVM keeps certificate requests to itself")")
    }
}
