#if canImport(Glibc)
import Glibc
import CHost
#elseif canImport(Musl)
import Musl
#endif

/// Opening and checking the files a user names (kernels, initrds, disks,
/// snapshot files) without ever blocking: open(2) of a FIFO waits for a
/// writer, which would hang whoever asked (an API client, a signal handler
/// waiting for the VMM), so every such open is non-blocking, and only files
/// of an allowed kind are kept.
public enum HostFile {
    /// memfd_create(2) with MFD_CLOEXEC: a new anonymous file of size 0,
    /// named `name` in /proc/PID/fd and maps. The caller owns the descriptor.
    public static func createMemfd(name: String) throws -> Int32 {
        let descriptor = chost_memfd_create(name)
        guard descriptor >= 0 else { throw SystemCallError.current("memfd_create(\(name))") }
        return descriptor
    }

    /// What a path names, as stat(2) or fstat(2) reports it.
    public enum Kind: Equatable, Sendable, CustomStringConvertible {
        case regular, blockDevice, directory, fifo, socket, characterDevice, symbolicLink, unknown

        /// The kind that a stat(2) `st_mode` gives.
        public init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .regular
            case S_IFBLK: self = .blockDevice
            case S_IFDIR: self = .directory
            case S_IFIFO: self = .fifo
            case S_IFSOCK: self = .socket
            case S_IFCHR: self = .characterDevice
            case S_IFLNK: self = .symbolicLink
            default: self = .unknown
            }
        }

        public var description: String {
            switch self {
            case .regular: "a regular file"
            case .blockDevice: "a block device"
            case .directory: "a directory"
            case .fifo: "a FIFO"
            case .socket: "a socket"
            case .characterDevice: "a character device"
            case .symbolicLink: "a symbolic link"
            case .unknown: "an unknown kind of file"
            }
        }
    }

    /// The kind of file at `path` (following symbolic links), read with
    /// stat(2), which never blocks.
    public static func kind(atPath path: String) throws -> Kind {
        var status = stat()
        try SystemCallError.check(stat(path, &status), "stat(\(path))")
        return Kind(mode: status.st_mode)
    }

    /// Throws unless `path` names a file of one of the `allowed` kinds; the
    /// message names `what` and the kind found ("the kernel /tmp/k is a FIFO,
    /// not a regular file").
    public static func require(_ path: String, is allowed: [Kind], what: String) throws {
        let found: Kind
        do { found = try kind(atPath: path) } catch let error as SystemCallError {
            throw HostFileError("cannot read \(what) \(path): \(error.errno.description)")
        }
        guard allowed.contains(found) else { throw HostFileError(kindMismatch: found, allowed: allowed, path: path, what: what) }
    }

    /// Opens `path` with `flags` (O_CLOEXEC is added; `mode` is for
    /// O_CREAT) without blocking, and returns the descriptor, in blocking
    /// mode, only if the file is of one of the `allowed` kinds. O_NONBLOCK
    /// lets open(2) of a FIFO return at once (fstat then refuses it, or a
    /// write-only open of one with no reader fails with ENXIO); it is cleared
    /// again so that reads and writes of the file behave as usual, unless
    /// `keepNonBlocking` (a log or metrics FIFO: a write that would wait is
    /// lost instead, as in Firecracker).
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0, allowed: [Kind], what: String,
                            keepNonBlocking: Bool = false) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_NONBLOCK | O_CLOEXEC, mode)
        guard fd >= 0 else {
            let reason = errno == ENXIO ? "a FIFO that no process reads" : String(cString: strerror(errno))
            throw HostFileError("cannot open \(what) \(path): \(reason)")
        }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HostFileError("cannot open \(what) \(path): \(reason)")
        }
        let found = Kind(mode: status.st_mode)
        guard allowed.contains(found) else {
            close(fd)
            throw HostFileError(kindMismatch: found, allowed: allowed, path: path, what: what)
        }
        if keepNonBlocking { return fd }
        let current = fcntl(fd, F_GETFL)
        guard current >= 0, fcntl(fd, F_SETFL, current & ~O_NONBLOCK) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw HostFileError("cannot open \(what) \(path): \(reason)")
        }
        return fd
    }
}

/// Why a named file cannot be used; its text is the whole message.
public struct HostFileError: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }

    init(kindMismatch found: HostFile.Kind, allowed: [HostFile.Kind], path: String, what: String) {
        let wanted = allowed.map(\.description).joined(separator: " or ")
        self.init("\(what) \(path) is \(found), not \(wanted)")
    }
}
