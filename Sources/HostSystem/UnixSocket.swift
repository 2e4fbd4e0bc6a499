#if canImport(Glibc)
import Glibc
#endif

/// Unix stream sockets by path: what Firecracker-style vsock back ends speak.
public enum UnixSocket {
    /// The longest path a sockaddr_un holds (107 bytes and a NUL).
    public static let maximumPathLength = 107

    private static func address(_ path: String) throws -> sockaddr_un {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumPathLength, !bytes.contains(0) else {
            throw SystemCallError(operation: "socket path \(path) (1 to \(maximumPathLength) bytes)", errno: .fileNameTooLong)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    private static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws -> R {
        var address = try address(path)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    private static func makeSocket() throws -> Int32 {
        try SystemCallError.check(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket(AF_UNIX)")
    }

    /// A listening socket at `path`, non-blocking. A socket file left behind by
    /// a process that is gone (connecting to it is refused) is replaced; any
    /// other existing file is an error (EADDRINUSE).
    public static func listen(at path: String, backlog: Int32 = 64) throws -> Int32 {
        let fd = try makeSocket()
        do {
            var result = try withAddress(path) { bind(fd, $0, $1) }
            if result < 0 && errno == EADDRINUSE && isStale(path) {
                unlink(path)
                result = try withAddress(path) { bind(fd, $0, $1) }
            }
            try SystemCallError.check(result, "bind(\(path))")
            try SystemCallError.check(Glibc.listen(fd, backlog), "listen(\(path))")
            try setNonBlocking(fd)
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// Whether `path` is a socket nobody listens on.
    private static func isStale(_ path: String) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return false }
        guard let fd = try? makeSocket() else { return false }
        defer { close(fd) }
        let result = (try? withAddress(path) { Glibc.connect(fd, $0, $1) }) ?? 0
        return result < 0 && errno == ECONNREFUSED
    }

    /// Connects to the socket at `path` (immediate for Unix sockets) and makes
    /// the connection non-blocking.
    public static func connect(to path: String) throws -> Int32 {
        let fd = try makeSocket()
        do {
            try SystemCallError.check(try withAddress(path) { Glibc.connect(fd, $0, $1) }, "connect(\(path))")
            try setNonBlocking(fd)
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// Accepts a pending connection, non-blocking; nil when none is pending.
    public static func accept(_ listener: Int32) -> Int32? {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                guard (try? setNonBlocking(fd)) != nil else { close(fd); return nil }
                return fd
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// Sets or clears O_NONBLOCK on `fd`.
    public static func setNonBlocking(_ fd: Int32, _ nonBlocking: Bool = true) throws {
        let flags = fcntl(fd, F_GETFL)
        try SystemCallError.check(flags, "fcntl(F_GETFL)")
        let updated = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        try SystemCallError.check(fcntl(fd, F_SETFL, updated), "fcntl(F_SETFL, \(nonBlocking ? "" : "~")O_NONBLOCK)")
    }
}
