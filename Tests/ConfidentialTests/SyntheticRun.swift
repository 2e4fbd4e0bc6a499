import CKVM
import Confidential
import Foundation
import GuestMemory
import KVM

/// A kvm_run area in ordinary memory, for driving exit handlers without a vCPU.
final class SyntheticRun {
    let size = 4096
    let area: UnsafeMutablePointer<ckvm_run>

    init() {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        area = raw.bindMemory(to: ckvm_run.self, capacity: 1)
    }

    deinit { UnsafeMutableRawPointer(area).deallocate() }

    /// Fills the area as KVM does for KVM_EXIT_SNP_REQ_CERTS and decodes it.
    func certificateExit(gpa: UInt64, pages: UInt64) -> VCPUExit {
        area.pointee.exit_reason = 42
        area.pointee.exit.snp_req_certs = ckvm_exit_snp_req_certs(gpa: gpa, npages: pages, ret: 0)
        return VCPUExit.decode(run: area, areaSize: size)
    }

    /// Fills the area as the v15 series did for KVM_EXIT_VMGEXIT REQ_CERTS.
    func legacyExit(gpa: UInt64, pages: UInt64, done: Bool = false) -> VCPUExit {
        area.pointee.exit_reason = 40
        var exit = area.pointee.exit.vmgexit
        exit.type = 1
        exit.data_gpa = gpa
        exit.data_npages = pages
        exit.status = done ? 1 : 0
        exit.flags = 0
        if !done { exit.ret = 0 }  // a DONE exit keeps the answer given to the PENDING one
        area.pointee.exit.vmgexit = exit
        return VCPUExit.decode(run: area, areaSize: size)
    }

    var ret: UInt64 { area.pointee.exit.snp_req_certs.ret }
    var npages: UInt64 { area.pointee.exit.snp_req_certs.npages }
    var immediateExit: Bool { area.pointee.immediate_exit != 0 }
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
    try memory.add(try MemoryMapping(anonymousSize: 1 << 20), at: 2 << 20)
    return memory
}
