import GuestMemory
import KVM

/// Answers SNP guests' certificate requests (KVM_EXIT_SNP_REQ_CERTS) from a
/// certificate file, following the file's locking protocol.
///
/// For each request the service checks the guest's buffer (page-aligned, at
/// least one page, no overflow, wholly inside one RAM region and clear of every
/// MMIO range), takes a shared lock on the file, reads and checks the blob, and
/// either writes it (zeroing the rest of the buffer) and hands back the held
/// lock, or answers ENOSPC with the pages needed, EAGAIN when the lock cannot be
/// had in time, or EIO with a log line. Host memory outside the guest's RAM is
/// never touched.
public final class SNPCertificateService {
    public static let pageSize: UInt64 = 4096

    public struct Configuration: Sendable {
        /// The certificate blob file (GHCB certificate table format).
        public var certificateFile: String
        /// How long to wait for the shared lock before answering EAGAIN.
        public var lockTimeout: Duration
        /// Guest-physical ranges that are device memory, never a certificate buffer.
        public var mmioRanges: [Range<UInt64>]
        /// Largest certificate file the service will read.
        public var maximumFileSize: Int

        public init(
            certificateFile: String, lockTimeout: Duration = .milliseconds(100),
            mmioRanges: [Range<UInt64>] = [], maximumFileSize: Int = 1 << 20
        ) {
            self.certificateFile = certificateFile
            self.lockTimeout = lockTimeout
            self.mmioRanges = mmioRanges
            self.maximumFileSize = maximumFileSize
        }
    }

    /// What the service did with one request.
    public enum Outcome {
        /// The blob is in guest memory; keep `lease` until firmware has made the report.
        case written(bytes: Int, lease: CertificateFileLease)
        /// The buffer is too small: the guest must offer `pagesNeeded` pages.
        case bufferTooSmall(pagesNeeded: UInt64)
        /// The lock was not free in time (an update holds it): the guest retries.
        case busy(reason: String)
        /// Refused (EIO), for the reason given.
        case refused(reason: String)

        /// The answer for KVM.
        public var response: SNPCertificateRequest.Response {
            switch self {
            case .written: return .certificatesWritten
            case .bufferTooSmall(let pages): return .bufferTooSmall(pagesNeeded: pages)
            case .busy: return .busy
            case .refused: return .failure
            }
        }
    }

    public let configuration: Configuration
    public let guestMemory: GuestAddressSpace
    private let log: (String) -> Void

    /// - Parameter log: receives one line per refusal or busy answer.
    public init(configuration: Configuration, guestMemory: GuestAddressSpace, log: @escaping (String) -> Void = { _ in }) {
        self.configuration = configuration
        self.guestMemory = guestMemory
        self.log = log
    }

    /// Serves one request for a buffer of `pageCount` pages at `guestPhysicalAddress`.
    public func serve(guestPhysicalAddress gpa: UInt64, pageCount: UInt64) -> Outcome {
        let outcome = decide(gpa: gpa, pageCount: pageCount)
        switch outcome {
        case .refused(let reason):
            log("snp: certificate request gpa 0x\(String(gpa, radix: 16)) npages \(pageCount) refused (EIO): \(reason)")
        case .busy(let reason):
            log("snp: certificate request gpa 0x\(String(gpa, radix: 16)) answered busy (EAGAIN): \(reason)")
        default: break
        }
        return outcome
    }

    /// Checks a guest buffer; returns its byte length or the reason it is refused.
    public func validateBuffer(guestPhysicalAddress gpa: UInt64, pageCount: UInt64) -> Result<Int, BufferRefusal> {
        if pageCount == 0 { return .failure(.zeroPages) }
        if gpa % Self.pageSize != 0 { return .failure(.unaligned) }
        let (length, overflowLength) = pageCount.multipliedReportingOverflow(by: Self.pageSize)
        if overflowLength || length > UInt64(Int.max) { return .failure(.overflow) }
        let (_, overflowEnd) = gpa.addingReportingOverflow(length)
        if overflowEnd { return .failure(.overflow) }
        if let mmio = configuration.mmioRanges.first(where: { $0.overlaps(gpa..<(gpa + length)) }) {
            return .failure(.insideMMIO(mmio))
        }
        guard guestMemory.contains(GuestAddress(gpa), length: length) else { return .failure(.outsideRAM) }
        return .success(Int(length))
    }

    /// Why a guest buffer was refused.
    public enum BufferRefusal: Error, Equatable, CustomStringConvertible {
        case zeroPages, unaligned, overflow, outsideRAM
        case insideMMIO(Range<UInt64>)

        public var description: String {
            switch self {
            case .zeroPages: return "npages is 0"
            case .unaligned: return "gpa is not 4 KiB aligned"
            case .overflow: return "gpa + npages * 4096 overflows"
            case .outsideRAM: return "the buffer is not inside one guest RAM region"
            case .insideMMIO(let range):
                return "the buffer overlaps MMIO 0x\(String(range.lowerBound, radix: 16))..<0x\(String(range.upperBound, radix: 16))"
            }
        }
    }

    private func decide(gpa: UInt64, pageCount: UInt64) -> Outcome {
        let length: Int
        switch validateBuffer(guestPhysicalAddress: gpa, pageCount: pageCount) {
        case .failure(let refusal): return .refused(reason: refusal.description)
        case .success(let bytes): length = bytes
        }

        let lease: CertificateFileLease
        do {
            lease = try CertificateFileLock.acquire(
                configuration.certificateFile, kind: .shared, timeout: configuration.lockTimeout)
        } catch let error as CertificateFileError {
            if case .timedOut = error { return .busy(reason: error.description) }
            return .refused(reason: error.description)
        } catch {
            return .refused(reason: "\(error)")
        }

        let blob: [UInt8]
        do {
            blob = try lease.readContents(limit: configuration.maximumFileSize)
            _ = try SNPCertificateTable(parsing: blob)
        } catch {
            lease.release()
            return .refused(reason: "\(configuration.certificateFile) is not a usable certificate table: \(error)")
        }

        guard blob.count <= length else {
            lease.release()
            let pages = (UInt64(blob.count) + Self.pageSize - 1) / Self.pageSize
            return .bufferTooSmall(pagesNeeded: pages)
        }

        do {
            // Sound: `validateBuffer` proved [gpa, gpa + length) lies inside one RAM region.
            let target = try guestMemory.buffer(at: GuestAddress(gpa), length: length)
            blob.withUnsafeBytes { target.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: blob.count) }
            if length > blob.count {
                (target.baseAddress! + blob.count).initializeMemory(as: UInt8.self, repeating: 0, count: length - blob.count)
            }
        } catch {
            lease.release()
            return .refused(reason: "\(error)")
        }
        return .written(bytes: blob.count, lease: lease)
    }
}
