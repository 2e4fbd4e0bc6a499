import KVM

/// Drives the certificate service from one vCPU's run loop, including the
/// hand-off that keeps the certificate file locked until firmware is done.
///
/// Upstream form (exit 42): after writing the blob the responder sets
/// `immediate_exit`; KVM completes the request (the firmware makes the report)
/// on the next KVM_RUN and then returns EINTR, where the responder drops the
/// lock and clears `immediate_exit`.
///
/// v15 form (exit 40, only with `legacyExitCompatibility`): the responder asks
/// for the NOTIFY_DONE exit and drops the lock when the DONE exit arrives.
///
/// It drives `VCPU.run()` directly and must see that `.interrupted`; a
/// `VCPUThread` answers EINTR itself and owns `immediate_exit`, so the two are
/// not combined yet (the SNP VMM of issue 13 will route the hand-off through
/// the thread).
public final class SNPCertificateResponder {
    public let service: SNPCertificateService
    /// Whether an exit 40 is read as the v15 KVM_EXIT_VMGEXIT. Off by default:
    /// upstream, exit 40 is KVM_EXIT_TDX.
    public let legacyExitCompatibility: Bool

    /// The lock held across the firmware call, if a request is in flight.
    public private(set) var heldLease: CertificateFileLease?

    /// Counters for reports and tests.
    public private(set) var statistics = Statistics()

    public struct Statistics: Equatable, Sendable {
        public var written = 0
        public var bufferTooSmall = 0
        public var busy = 0
        public var refused = 0
        public var completions = 0

        public init(written: Int = 0, bufferTooSmall: Int = 0, busy: Int = 0, refused: Int = 0, completions: Int = 0) {
            (self.written, self.bufferTooSmall, self.busy, self.refused, self.completions) =
                (written, bufferTooSmall, busy, refused, completions)
        }
    }

    public init(service: SNPCertificateService, legacyExitCompatibility: Bool = false) {
        self.service = service
        self.legacyExitCompatibility = legacyExitCompatibility
    }

    /// What `handle` did with an exit.
    public enum Handling: Equatable {
        /// Not a certificate exit: the caller handles it.
        case notCertificateExit
        /// A request was answered; run the vCPU again.
        case answered(SNPCertificateRequest.Response)
        /// The firmware call finished and the lock was released; run the vCPU again.
        case completed
    }

    /// Handles `exit` if it belongs to the certificate protocol. `runArea` is the
    /// vCPU's kvm_run the exit was decoded from.
    public func handle(_ exit: VCPUExit, runArea: RunArea) -> Handling {
        switch exit {
        case .snpRequestCertificates(let request):
            releaseHeldLease()  // a new request means any earlier one has completed
            let outcome = service.serve(guestPhysicalAddress: request.guestPhysicalAddress, pageCount: request.pageCount)
            request.respond(outcome.response)
            record(outcome)
            if case .written(_, let lease) = outcome {
                heldLease = lease
                runArea.immediateExit = true
            }
            return .answered(outcome.response)
        case .interrupted where heldLease != nil:
            // KVM runs the pending completion (the firmware call) before it honours
            // immediate_exit, so this EINTR means the report has been made.
            releaseHeldLease()
            runArea.immediateExit = false
            statistics.completions += 1
            return .completed
        case .unrecognized(let reason) where legacyExitCompatibility && reason.rawValue == SNPLegacyCertificateRequest.exitReason:
            guard let request = runArea.legacyCertificateRequest else { return .notCertificateExit }
            switch request.status {
            case .pending:
                releaseHeldLease()
                let outcome = service.serve(guestPhysicalAddress: request.guestPhysicalAddress, pageCount: request.pageCount)
                request.respond(outcome.response)
                record(outcome)
                if case .written(_, let lease) = outcome {
                    heldLease = lease
                    request.notifyWhenDone()
                }
                return .answered(outcome.response)
            case .done, .other:
                releaseHeldLease()
                statistics.completions += 1
                return .completed
            }
        default:
            return .notCertificateExit
        }
    }

    /// Handles an exit of `vcpu` (see `handle(_:runArea:)`).
    public func handle(_ exit: VCPUExit, on vcpu: VCPU) -> Handling {
        handle(exit, runArea: vcpu.runArea)
    }

    /// Drops a held lock (for example when the VM stops mid-request).
    public func releaseHeldLease() {
        heldLease?.release()
        heldLease = nil
    }

    private func record(_ outcome: SNPCertificateService.Outcome) {
        switch outcome {
        case .written: statistics.written += 1
        case .bufferTooSmall: statistics.bufferTooSmall += 1
        case .busy: statistics.busy += 1
        case .refused: statistics.refused += 1
        }
    }
}
