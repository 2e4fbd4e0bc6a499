import Glibc
import Synchronization
import Testing
import HostSystem

/// Waiting for another thread's socket in a watched directory: one that
/// appears late, one that never does, a stale one that refuses, and a
/// waiter told to give up.
@Suite(.timeLimit(.minutes(5))) struct SocketDirectoryWatchTests {
    /// A fresh directory under /tmp, removed with what is in it by `remove`.
    static func directory() -> String {
        var template = Array("/tmp/kestrel-watch-XXXXXX".utf8CString)
        // Sound: mkdtemp rewrites the six X in the NUL-terminated buffer in place.
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        return String(cString: template)
    }

    static func remove(_ directory: String, _ names: String...) {
        for name in names { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let (seconds, attoseconds) = (ContinuousClock.now - start).components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    @Test func connectsToASocketThatIsMadeAfterTheWaitBegins() throws {
        let directory = Self.directory()
        defer { Self.remove(directory, "late.sock") }
        let watch = try SocketDirectoryWatch(directory: directory)
        let listener = Mutex<Int32>(-1)
        let maker = try POSIXThread.start {
            usleep(50_000)
            let fd = (try? UnixSocket.listen(at: directory + "/late.sock")) ?? -1
            listener.withLock { $0 = fd }
        }
        defer {
            maker.join()
            close(listener.withLock { $0 })
        }
        let start = ContinuousClock.now
        let fd = try watch.connect(to: "late.sock", timeout: .seconds(10))
        close(fd)
        #expect(fd >= 0)
        #expect(Self.seconds(since: start) >= 0.045)
        #expect(Self.seconds(since: start) < 5)
    }

    @Test func aSocketThatNeverAppearsTimesOut() throws {
        let directory = Self.directory()
        defer { Self.remove(directory) }
        let watch = try SocketDirectoryWatch(directory: directory)
        let start = ContinuousClock.now
        #expect(throws: SystemCallError.self) { _ = try watch.connect(to: "absent.sock", timeout: .milliseconds(100)) }
        #expect(Self.seconds(since: start) >= 0.095)
        #expect(Self.seconds(since: start) < 2)
    }

    /// Bound but never listening, as a socket left by a process that died:
    /// refused until the time is up, and the wait ends on time.
    @Test func aStaleSocketIsRefusedUntilTheTimeout() throws {
        let directory = Self.directory()
        defer { Self.remove(directory, "stale.sock") }
        let watch = try SocketDirectoryWatch(directory: directory)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((directory + "/stale.sock").utf8CString)
        // Sound: the path is far shorter than sun_path (108 bytes), NUL included.
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            path.withUnsafeBytes { raw.copyMemory(from: $0) }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0)
        let start = ContinuousClock.now
        #expect(throws: SystemCallError.self) { _ = try watch.connect(to: "stale.sock", timeout: .milliseconds(200)) }
        #expect(Self.seconds(since: start) >= 0.195)
        #expect(Self.seconds(since: start) < 2)
    }

    @Test func stopsWaitingWhenToldTo() throws {
        let directory = Self.directory()
        defer { Self.remove(directory) }
        let watch = try SocketDirectoryWatch(directory: directory)
        let asked = Mutex(0)
        let start = ContinuousClock.now
        #expect(throws: SystemCallError.self) {
            _ = try watch.connect(to: "never.sock", timeout: .seconds(30), stillWaiting: {
                asked.withLock { $0 += 1; return $0 < 3 }
            })
        }
        #expect(asked.withLock { $0 } == 3)
        #expect(Self.seconds(since: start) < 5)
    }

    @Test func aMissingDirectoryIsAnError() {
        #expect(throws: SystemCallError.self) { _ = try SocketDirectoryWatch(directory: "/tmp/kestrel-no-such-directory-\(getpid())") }
    }
}
