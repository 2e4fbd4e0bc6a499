import CKVM

/// The certificate request of the v15 SNP series: KVM_EXIT_VMGEXIT (40) with
/// `type` REQ_CERTS (1). That series never merged and exit 40 is KVM_EXIT_TDX
/// upstream, so Kestrel reads an exit 40 this way only when the VMM asks for it
/// (`VCPU.legacyCertificateRequest()`), never in `VCPUExit.decode`.
///
/// KVM exits twice per request when the VMM sets `notifyWhenDone`: first with
/// status PENDING (serve the request), then with status DONE once firmware has
/// made the report (release what was held).
public struct SNPLegacyCertificateRequest {
    private let ticket: RunTicket

    /// The exit reason number of KVM_EXIT_VMGEXIT in that series.
    public static let exitReason: UInt32 = ExitReason.tdx.rawValue
    /// KVM_USER_VMGEXIT_REQ_CERTS.
    public static let requestCertificatesType: UInt32 = 1
    /// The `status` values: KVM_USER_VMGEXIT_REQ_CERTS_STATUS_PENDING and _DONE.
    static let statusPending: UInt8 = 0
    static let statusDone: UInt8 = 1
    /// KVM_USER_VMGEXIT_REQ_CERTS_FLAGS_NOTIFY_DONE.
    static let notifyDoneFlag: UInt8 = 1

    /// Reads the run area as a v15 certificate request, or nil when it is not one.
    public init?(area: RunArea) {
        guard area.run.pointee.exit_reason == Self.exitReason,
              area.run.pointee.exit.vmgexit.type == Self.requestCertificatesType else { return nil }
        ticket = RunTicket(area)
    }

    private var run: UnsafeMutablePointer<ckvm_run> { ticket.run("SNPLegacyCertificateRequest") }

    public enum Status: Equatable, Sendable {
        /// A new request: write the certificates (or refuse).
        case pending
        /// The completion notification asked for with `notifyWhenDone`.
        case done
        case other(UInt8)
    }

    public var status: Status {
        switch run.pointee.exit.vmgexit.status {
        case Self.statusPending: return .pending
        case Self.statusDone: return .done
        case let raw: return .other(raw)
        }
    }

    public var guestPhysicalAddress: UInt64 { run.pointee.exit.vmgexit.data_gpa }
    public var pageCount: UInt64 { run.pointee.exit.vmgexit.data_npages }

    /// Answers in the v15 codes (0, INVALID_LEN 1 with the pages needed, BUSY 2,
    /// GENERIC 1 << 31).
    public func respond(_ response: SNPCertificateRequest.Response) {
        switch response {
        case .certificatesWritten: run.pointee.exit.vmgexit.ret = 0
        case .bufferTooSmall(let pages):
            run.pointee.exit.vmgexit.data_npages = pages
            run.pointee.exit.vmgexit.ret = 1
        case .busy: run.pointee.exit.vmgexit.ret = 2
        case .failure: run.pointee.exit.vmgexit.ret = 1 << 31
        }
    }

    /// Asks KVM for the DONE exit after firmware has handled the request
    /// (KVM_USER_VMGEXIT_REQ_CERTS_FLAGS_NOTIFY_DONE).
    public func notifyWhenDone() { run.pointee.exit.vmgexit.flags |= Self.notifyDoneFlag }

    /// The raw `ret` and `flags` fields as last written.
    public var returnCode: UInt32 { run.pointee.exit.vmgexit.ret }
    public var flags: UInt8 { run.pointee.exit.vmgexit.flags }
}

extension VCPU {
    /// The last exit read as a v15 SNP certificate request (exit 40, type 1), or
    /// nil. Only for kernels carrying that series; see `SNPLegacyCertificateRequest`.
    public func legacyCertificateRequest() -> SNPLegacyCertificateRequest? {
        runArea.legacyCertificateRequest
    }
}
