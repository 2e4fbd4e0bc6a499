import HostSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The locking protocol around an SNP certificate file (the kernel's Documentation/virt/kvm/api.rst,
/// KVM_SEV_SNP_ENABLE_REQ_CERTS): a VMM takes a shared open-file-description
/// lock (F_OFD_SETLK, F_RDLCK) before reading the file and holds it until the
/// firmware has made the report; tools that change the firmware's key or TCB,
/// and the certificates with it, take an exclusive lock for the whole update.
///
/// OFD locks belong to an open file description, so two opens of the same file
/// in one process conflict just as two processes do; each lease opens the file
/// anew. Writers must rewrite the file in place (a rename would leave readers
/// locking the old inode).
public enum CertificateFileLock {
    public enum Kind: Sendable, CustomStringConvertible {
        case shared, exclusive
        var lockKind: OFDLock.Kind { self == .shared ? .shared : .exclusive }
        public var description: String { self == .shared ? "shared" : "exclusive" }
    }

    /// Opens `path` (read-only for a shared lock, read-write for an exclusive
    /// one, as fcntl requires) and takes a lock of `kind` on the whole file,
    /// trying again until `timeout` has passed. A timeout throws `.timedOut`;
    /// other failures name the call and errno.
    public static func acquire(_ path: String, kind: Kind, timeout: Duration) throws -> CertificateFileLease {
        let flags = (kind == .exclusive ? O_RDWR : O_RDONLY) | O_CLOEXEC
        let fd = Glibc.open(path, flags)
        guard fd >= 0 else { throw CertificateFileError.open(path: path, errno: Errno(rawValue: errno)) }
        let clock = ContinuousClock()
        let start = clock.now
        var pause: UInt32 = 20  // microseconds; doubles up to 2 ms
        while true {
            do {
                try OFDLock.set(kind.lockKind, on: fd)
                return CertificateFileLease(fileDescriptor: fd, path: path, kind: kind)
            } catch let error as SystemCallError {
                guard [.resourceTemporarilyUnavailable, .permissionDenied, .interrupted].contains(error.errno) else {
                    close(fd)
                    throw CertificateFileError.lock(path: path, errno: error.errno)
                }
            }
            let waited = clock.now - start
            if waited >= timeout {
                close(fd)
                throw CertificateFileError.timedOut(path: path, kind: kind, waited: waited)
            }
            usleep(pause)
            pause = min(pause * 2, 2000)
        }
    }
}

/// A held lock on a certificate file; the lock goes when the lease is released
/// or deallocated (closing the file description drops its OFD lock).
public final class CertificateFileLease {
    public let fileDescriptor: Int32
    public let path: String
    public let kind: CertificateFileLock.Kind
    public private(set) var isHeld = true

    init(fileDescriptor: Int32, path: String, kind: CertificateFileLock.Kind) {
        self.fileDescriptor = fileDescriptor
        self.path = path
        self.kind = kind
    }

    deinit { release() }

    /// Drops the lock (by closing the file description). Idempotent.
    public func release() {
        guard isHeld else { return }
        isHeld = false
        close(fileDescriptor)
    }

    /// The whole file, read under this lock. Refuses files over `limit` bytes.
    public func readContents(limit: Int = 16 << 20) throws -> [UInt8] {
        precondition(isHeld, "reading a certificate file after releasing its lock")
        var status = stat()
        guard fstat(fileDescriptor, &status) == 0 else {
            throw CertificateFileError.read(path: path, errno: Errno(rawValue: errno))
        }
        let size = Int(status.st_size)
        guard size <= limit else { throw CertificateFileError.tooLarge(path: path, size: size, limit: limit) }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            // Sound: writes at most `size - done` bytes into the array's storage from `done` on.
            let count = bytes.withUnsafeMutableBytes { pread(fileDescriptor, $0.baseAddress! + done, size - done, off_t(done)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CertificateFileError.read(path: path, errno: Errno(rawValue: errno))
            }
            if count == 0 { bytes.removeLast(size - done); break }  // shrank meanwhile (writer without lock)
            done += count
        }
        return bytes
    }

    /// Replaces the file's contents in place (truncate, then write), `chunkSize`
    /// bytes per write. Needs an exclusive lease.
    public func replaceContents(with bytes: [UInt8], chunkSize: Int = 1 << 20) throws {
        precondition(isHeld && kind == .exclusive, "rewriting a certificate file needs an exclusive lease")
        guard ftruncate(fileDescriptor, 0) == 0 else {
            throw CertificateFileError.write(path: path, errno: Errno(rawValue: errno))
        }
        var done = 0
        while done < bytes.count {
            let length = min(max(chunkSize, 1), bytes.count - done)
            // Sound: reads `length` bytes of the array's storage from `done` on.
            let count = bytes.withUnsafeBytes { pwrite(fileDescriptor, $0.baseAddress! + done, length, off_t(done)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CertificateFileError.write(path: path, errno: Errno(rawValue: errno))
            }
            done += count
        }
    }
}

/// Failures around the certificate file, each naming the file and the cause.
public enum CertificateFileError: Error, Equatable, CustomStringConvertible, Sendable {
    case open(path: String, errno: Errno)
    case lock(path: String, errno: Errno)
    case timedOut(path: String, kind: CertificateFileLock.Kind, waited: Duration)
    case read(path: String, errno: Errno)
    case write(path: String, errno: Errno)
    case tooLarge(path: String, size: Int, limit: Int)

    public var description: String {
        switch self {
        case .open(let path, let errno): return "cannot open \(path): \(errno)"
        case .lock(let path, let errno): return "fcntl(F_OFD_SETLK) on \(path) failed: \(errno)"
        case .timedOut(let path, let kind, let waited):
            return "no \(kind) lock on \(path) after \(waited): another holder keeps a conflicting lock"
        case .read(let path, let errno): return "reading \(path) failed: \(errno)"
        case .write(let path, let errno): return "writing \(path) failed: \(errno)"
        case .tooLarge(let path, let size, let limit): return "\(path) has \(size) bytes, more than the \(limit)-byte limit"
        }
    }
}
