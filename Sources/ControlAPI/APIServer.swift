#if canImport(Glibc)
import Glibc
#endif
import HostSystem
import Synchronization

/// Serves a `FirecrackerAPI` on a Unix stream socket, on an event loop
/// thread of its own (Firecracker's API thread), so that a slow or
/// misbehaving client never holds up a vCPU or a device. Each connection
/// has its own `HTTPRequestReader`; requests on one connection are answered
/// in order; a request that cannot be read is answered with its status and
/// the connection closed.
///
/// At most `maximumConnections` are open at once. When a client connects to
/// a full table, connections that cannot be serving anyone give way first:
/// one whose request has been arriving for longer than `readTimeout` is
/// answered 408 and closed, and otherwise the longest idle one (no partial
/// request, nothing to send, nothing unread in its socket, quiet for
/// `idleGrace`) is closed, as HTTP lets a server close an idle persistent
/// connection. If every connection is busy, the new client is
/// answered 503 with a `fault_message`, as Firecracker does, and the
/// refusals are logged once until a slot is free again.
public final class APIServer: Sendable {
    public static let maximumConnections = 16

    public let path: String
    /// How long a request may take to arrive before its connection can be
    /// taken back for another client.
    public let readTimeout: Duration
    /// The largest request body (Firecracker's `--http-api-max-payload-size`).
    public let maximumBodyBytes: Int
    private let api: FirecrackerAPI
    private let loop: EventLoop
    private let listener: Int32
    private let connections = Mutex<[Int32: Connection]>([:])
    /// Whether a full table's refusal was logged since the table last had room.
    private let refusalLogged = Atomic<Bool>(false)
    private let log: @Sendable (String) -> Void

    struct Connection {
        var reader: HTTPRequestReader
        var output: [UInt8] = []
        var closeWhenWritten = false
        /// When the current request's first byte came, while it is incomplete.
        var requestStarted: ContinuousClock.Instant?
        /// When bytes last came in or went out.
        var lastActivity = ContinuousClock.now
    }

    /// Listens at `path` (a socket left by a process that is gone is
    /// replaced; a live one is an error) and starts serving.
    /// `setUp` runs first on the server's thread (a seccomp filter).
    public init(path: String, api: FirecrackerAPI, readTimeout: Duration = .seconds(10),
                maximumBodyBytes: Int = HTTPRequestReader.defaultMaximumBodyBytes, log: @escaping @Sendable (String) -> Void,
                setUp: @escaping @Sendable () -> Void = {}) throws {
        self.path = path
        self.readTimeout = readTimeout
        self.maximumBodyBytes = maximumBodyBytes
        self.api = api
        self.log = log
        listener = try UnixSocket.listen(at: path)
        do {
            loop = try EventLoop(name: "api")
            try loop.add(listener) { [weak self] _ in self?.acceptAll() }
            try loop.start(setUp: setUp)
        } catch {
            close(listener)
            unlink(path)
            throw error
        }
    }

    /// Stops serving, closes every connection and removes the socket file.
    public func stop() {
        loop.stop()
        loop.remove(listener)
        close(listener)
        let open = connections.withLock { table -> [Int32] in defer { table.removeAll() }; return Array(table.keys) }
        for fd in open { loop.remove(fd); close(fd) }
        unlink(path)
    }

    private func acceptAll() {
        while let fd = UnixSocket.accept(listener) {
            if connections.withLock({ $0.count }) >= Self.maximumConnections { makeRoom() }
            let admitted = connections.withLock { table -> Bool in
                guard table.count < Self.maximumConnections else { return false }
                table[fd] = Connection(reader: HTTPRequestReader(maximumBodyBytes: maximumBodyBytes))
                return true
            }
            guard admitted else {
                if !refusalLogged.exchange(true, ordering: .relaxed) {
                    log("API: \(Self.maximumConnections) connections are open and busy; answering new ones 503 until one closes")
                }
                Self.answerOnce(fd, .fault(503, "Kestrel's API serves at most \(Self.maximumConnections) connections at once, "
                    + "and all of them are busy; try again"))
                Self.closeQuietly(fd)
                continue
            }
            refusalLogged.store(false, ordering: .relaxed)
            do {
                try loop.add(fd, for: [.readable, .hangUp]) { [weak self] events in self?.serve(fd, events) }
            } catch {
                connections.withLock { _ = $0.removeValue(forKey: fd) }
                close(fd)
            }
        }
    }

    /// Frees a slot for a new client, if a connection is not serving
    /// anyone: a request slower than `readTimeout` (answered 408), else the
    /// longest idle connection. Runs on the loop's thread.
    private func makeRoom() {
        let now = ContinuousClock.now
        let (stale, idle): (Int32?, Int32?) = connections.withLock { table in
            let stale = table.compactMap { fd, connection in
                connection.requestStarted.flatMap { now - $0 > readTimeout ? (fd: fd, started: $0) : nil }
            }.min { $0.started < $1.started }?.fd
            // Idle: nothing half-read, nothing to send, quiet for a moment, and
            // no request waiting unread in its socket (a client that sent one
            // the moment it connected must get its answer, not a reset).
            let idle = table.filter { fd, connection in
                !connection.reader.isMidRequest && connection.output.isEmpty && !connection.closeWhenWritten
                    && now - connection.lastActivity >= Self.idleGrace && !Self.hasUnreadInput(fd)
            }.min { $0.value.lastActivity < $1.value.lastActivity }?.key
            return (stale, idle)
        }
        if let stale {
            Self.answerOnce(stale, .fault(408, "the request did not arrive whole within \(readTimeout.components.seconds) s"))
            drop(stale)
        } else if let idle {
            drop(idle)
        }
    }

    /// How long a connection must have been quiet before it counts as idle.
    static let idleGrace: Duration = .milliseconds(100)

    /// Whether bytes wait unread in `fd`'s socket (a non-blocking peek).
    private static func hasUnreadInput(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        // Sound: recv writes at most one byte into `byte`.
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) > 0
    }

    /// Sends a closing answer with one non-blocking send, best effort: for a
    /// connection about to be closed, whose buffer is empty or holds only
    /// what its client never read.
    private static func answerOnce(_ fd: Int32, _ response: HTTPResponse) {
        let bytes = response.serialized(closing: true)
        // Sound: send reads at most bytes.count bytes from the array's storage.
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
    }

    private func serve(_ fd: Int32, _ events: ReadyEvents) {
        if !events.isDisjoint(with: .writable) { flush(fd) }
        guard !events.isDisjoint(with: [.readable, .hangUp]) else { return }
        var buffer = [UInt8](repeating: 0, count: 16384)
        // Sound: read writes at most buffer.count bytes into the array's storage.
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
        guard count > 0 else { drop(fd); return }
        var work: [Work] = []
        connections.withLock { table in
            guard var connection = table[fd], !connection.closeWhenWritten else { return }
            connection.lastActivity = ContinuousClock.now
            connection.reader.append(buffer[..<count])
            do throws(HTTPParseError) {
                while !connection.closeWhenWritten, let event = try connection.reader.next() {
                    switch event {
                    case .continueExpected: work.append(.continueLine)
                    case .request(let request):
                        work.append(.request(request))
                        if !request.keepsConnection { connection.closeWhenWritten = true }
                    }
                }
            } catch {
                work.append(.failure(error))
                connection.closeWhenWritten = true
            }
            if connection.reader.isMidRequest {
                if connection.requestStarted == nil { connection.requestStarted = connection.lastActivity }
            } else {
                connection.requestStarted = nil
            }
            table[fd] = connection
        }
        // Answered outside the table's lock: a request may take a while (InstanceStart builds the VM).
        for item in work {
            let bytes: [UInt8]
            switch item {
            case .continueLine: bytes = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
            case .request(let request): bytes = api.respond(to: request).serialized(closing: !request.keepsConnection)
            case .failure(let error):
                log("API: \(error.message); closing the connection")
                bytes = HTTPResponse.fault(error.status, error.message).serialized(closing: true)
            }
            connections.withLock { $0[fd]?.output.append(contentsOf: bytes) }
        }
        flush(fd)
        if !work.isEmpty { api.answersSent() }
    }

    private enum Work {
        case continueLine
        case request(HTTPRequest)
        case failure(HTTPParseError)
    }

    /// Writes what the connection has queued; waits for writability when the
    /// socket is full, and closes the connection once a closing answer is out.
    private func flush(_ fd: Int32) {
        enum Next { case done, wait, close }
        let next: Next = connections.withLock { table in
            guard var connection = table[fd] else { return .done }
            defer { table[fd] = connection }
            while !connection.output.isEmpty {
                // Sound: write reads at most output.count bytes from the array's storage.
                let written = connection.output.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if written > 0 {
                    connection.output.removeFirst(written)
                    connection.lastActivity = ContinuousClock.now
                    continue
                }
                if written < 0 && errno == EINTR { continue }
                if written < 0 && errno == EAGAIN { return .wait }
                return .close
            }
            return connection.closeWhenWritten ? .close : .done
        }
        switch next {
        case .done: try? loop.modify(fd, for: [.readable, .hangUp])
        case .wait: try? loop.modify(fd, for: [.readable, .writable, .hangUp])
        case .close: drop(fd)
        }
    }

    private func drop(_ fd: Int32) {
        guard connections.withLock({ $0.removeValue(forKey: fd) }) != nil else { return }
        loop.remove(fd)
        Self.closeQuietly(fd)
    }

    /// Closes `fd` after reading away what its client sent and nobody will
    /// read: a Unix socket closed with unread input resets its peer, whose
    /// next read then fails before it reaches the answer it was sent (a 503).
    private static func closeQuietly(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Sound: recv writes at most buffer.count bytes; at most 64 KiB is read away.
        for _ in 0..<16 where buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
        close(fd)
    }
}
