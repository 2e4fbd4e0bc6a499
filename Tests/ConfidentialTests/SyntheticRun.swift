import Confidential
import Foundation
import GuestMemory
import KVM

/// A simulated run area and the last certificate request staged in it, for
/// driving the certificate responder without a vCPU.
final class SyntheticRun {
    let area = RunArea.simulated()
    private var lastRequest: SNPCertificateRequest?

    /// Stages KVM_EXIT_SNP_REQ_CERTS as KVM writes it, and decodes it.
    func certificateExit(gpa: UInt64, pages: UInt64) -> VCPUExit {
        let exit = area.simulate(.snpRequestCertificates(address: gpa, pages: pages))
        if case .snpRequestCertificates(let request) = exit { lastRequest = request }
        return exit
    }

    /// Stages the v15 series' KVM_EXIT_VMGEXIT REQ_CERTS.
    func legacyExit(gpa: UInt64, pages: UInt64, done: Bool = false) -> VCPUExit {
        lastRequest = nil
        return area.simulate(.legacyCertificateRequest(address: gpa, pages: pages, done: done))
    }

    var legacy: SNPLegacyCertificateRequest? { area.legacyCertificateRequest }
    var ret: UInt64 { lastRequest!.returnCode }
    var npages: UInt64 { lastRequest!.pageCount }
    var immediateExit: Bool { area.immediateExit }
}

/// A temporary directory removed at deinit.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "kestrel-snp-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ bytes: [UInt8], to name: String) -> String {
        let file = path + "/" + name
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
        return file
    }
}

/// Guest RAM of two regions with a hole between them: [0, 1 MiB) and [2 MiB, 3 MiB).
func makeGuestMemory() throws -> GuestAddressSpace {
    let memory = GuestAddressSpace()
    try memory.add(try MemoryMapping(anonymousSize: 1 << 20), at: 0)
    try memory.add(try MemoryMapping(anonymousSize: 1 << 20), at: GuestAddress(2 << 20))
    return memory
}
