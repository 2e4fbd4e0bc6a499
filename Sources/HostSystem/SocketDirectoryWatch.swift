#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// Waits for other processes' Unix sockets in one directory to accept
/// connections without taking a core from those processes: inotify reports a
/// socket file's creation (its bind), and only then is connect(2) retried,
/// yielding between tries, for the moment between bind and listen.
///
/// A loop that retries connect without sleeping looks cheaper but is not on a
/// small machine: the poller keeps the core the new process was placed on,
/// and that process waits for its turn.
///
/// Make one watch for many sockets: closing an inotify descriptor whose
/// watches were removed waits for their deferred destruction, several
/// milliseconds.
public final class SocketDirectoryWatch {
    private let watch: Int32
    public let directory: String

    /// Starts watching `directory` for new files (inotify_init1,
    /// inotify_add_watch for IN_CREATE). Start before the process that makes
    /// a socket there, so that its creation cannot be missed.
    public init(directory: String) throws {
        self.directory = directory
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError(operation: "inotify_init1", errno: Errno(rawValue: errno)) }
        guard inotify_add_watch(fd, directory, UInt32(IN_CREATE)) >= 0 else {
            let error = SystemCallError(operation: "inotify_add_watch(\(directory), IN_CREATE)", errno: Errno(rawValue: errno))
            close(fd)
            throw error
        }
        watch = fd
    }

    deinit { close(watch) }

    /// Connects to `name` in the directory once it accepts, and returns the
    /// connected descriptor.
    /// Between creation events it sleeps in poll(2), waking every 10 ms to
    /// ask `stillWaiting` whether to go on (false when the process that was
    /// to make the socket has ended, for example); throws once that answers
    /// false or `timeout` has passed.
    public func connect(to name: String, timeout: Duration, stillWaiting: () -> Bool = { true }) throws -> Int32 {
        let path = directory + "/" + name
        let deadline = ContinuousClock.now + timeout
        var refusals = 0
        while true {
            if let fd = try? UnixSocket.connect(to: path) { return fd }
            if ContinuousClock.now >= deadline || !stillWaiting() {
                throw SystemCallError(operation: "connect(\(path)) within \(timeout)", errno: .timedOut)
            }
            var status = stat()
            if stat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFSOCK {
                // Bound but not yet listening: a matter of microseconds. A
                // socket that goes on refusing is a stale one, or its process
                // is slow: then try every millisecond.
                refusals += 1
                if refusals <= 100 { sched_yield() } else { _ = poll(nil, 0, 1) }
                continue
            }
            var entry = pollfd(fd: watch, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, 10)
            drainEvents()
        }
    }

    private func drainEvents() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Sound: read writes at most buffer.count bytes into the array's storage.
        while buffer.withUnsafeMutableBytes({ read(watch, $0.baseAddress, $0.count) }) > 0 {}
    }
}
