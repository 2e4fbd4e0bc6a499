@testable import ControlAPI
import Glibc
import HostSystem
import Testing
import Synchronization
import VMM

/// The API thread on a real Unix socket: keep-alive, pipelining, a client
/// that sends garbage, and one that never reads, while others are served.
@Suite(.timeLimit(.minutes(5))) struct APIServerTests {
    static func path() -> String { "/tmp/kestrel-api-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    /// Sends `text` on a blocking connection and reads until `responses`
    /// answers arrive or the server closes.
    static func exchange(_ fd: Int32, _ text: String, responses: Int) throws -> String {
        try UnixSocket.setNonBlocking(fd, false)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bytes = Array(text.utf8)
        #expect(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while countResponses(received) < responses {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            received += buffer[..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }

    /// How many whole responses `bytes` holds (heads, plus bodies by Content-Length).
    static func countResponses(_ bytes: [UInt8]) -> Int {
        var count = 0, index = 0
        let terminator: [UInt8] = [13, 10, 13, 10]
        while index < bytes.count {
            guard let end = (index...(bytes.count - 4 >= index ? bytes.count - 4 : index)).first(where: { bytes.count >= $0 + 4 && Array(bytes[$0..<$0 + 4]) == terminator })
            else { break }
            let head = String(decoding: bytes[index..<end], as: UTF8.self).lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).filter { $0 != " " }) } ?? 0
            guard bytes.count >= end + 4 + length else { break }
            index = end + 4 + length
            count += 1
        }
        return count
    }

    @Test func keepAlivePipeliningGarbageAndAStalledClient() throws {
        let path = Self.path()
        let api = FirecrackerAPI(instanceID: "sock", version: "0.1.0", control: RecordingControl())
        let server = try APIServer(path: path, api: api, log: { _ in })
        defer { server.stop() }

        // A client that connects and sends half a request, then stalls.
        let stalled = try UnixSocket.connect(to: path)
        defer { close(stalled) }
        _ = "PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{".withCString { send(stalled, $0, strlen($0), 0) }

        let client = try UnixSocket.connect(to: path)
        defer { close(client) }
        let two = try Self.exchange(client, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET /version HTTP/1.1\r\n\r\n", responses: 2)
        #expect(two.hasPrefix("HTTP/1.1 200 OK\r\n") && two.contains(#""state":"Not started""#) && two.contains(#"{"firecracker_version":"0.1.0"}"#), "\(two)")
        // The same connection again, with a body split by Expect: 100-continue.
        let body = #"{"vcpu_count": 2, "mem_size_mib": 64}"#
        let put = try Self.exchange(client, "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n", responses: 1)
        #expect(put.hasPrefix("HTTP/1.1 100 Continue\r\n\r\n"), "\(put)")
        let done = try Self.exchange(client, body, responses: 1)
        #expect(done.hasPrefix("HTTP/1.1 204 No Content\r\n"), "\(done)")

        let garbage = try UnixSocket.connect(to: path)
        defer { close(garbage) }
        let refused = try Self.exchange(garbage, "BLAH\r\n\r\n", responses: 1)
        #expect(refused.hasPrefix("HTTP/1.1 400 Bad Request\r\n") && refused.contains("Connection: close") && refused.contains("fault_message"), "\(refused)")
        var byte: UInt8 = 0
        #expect(recv(garbage, &byte, 1, 0) == 0, "the server closes a connection after a request it cannot read")

        let closing = try UnixSocket.connect(to: path)
        defer { close(closing) }
        let last = try Self.exchange(closing, "GET /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n", responses: 1)
        #expect(last.contains(#""mem_size_mib":64"#) && last.contains("Connection: close"), "\(last)")
        #expect(recv(closing, &byte, 1, 0) == 0)
    }

    /// The server tells the control once per batch of requests, after the
    /// answer is in the client's socket: what a start or a load waits for
    /// before it lets the vCPUs run.
    @Test func theControlHearsOfAnswersOnceTheyAreWritten() throws {
        let path = Self.path()
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "sent", version: "0.1.0", control: control)
        let server = try APIServer(path: path, api: api, log: { _ in })
        defer { server.stop() }
        let client = try UnixSocket.connect(to: path)
        defer { close(client) }
        control.watchedClient.withLock { $0 = client }
        // The client reads only once the report is in, so that the bytes the
        // report saw cannot have been taken already.
        func sendAndAwaitReport(_ text: String, reports: Int) {
            _ = text.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            for _ in 0..<5000 where control.bytesWaitingWhenSent.withLock({ $0.count }) < reports { usleep(1000) }
        }
        sendAndAwaitReport("GET / HTTP/1.1\r\n\r\n", reports: 1)
        #expect(control.bytesWaitingWhenSent.withLock { $0 } == [true])
        #expect(try Self.exchange(client, "", responses: 1).hasPrefix("HTTP/1.1 200"))
        sendAndAwaitReport("GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", reports: 2)
        #expect(Self.countResponses(Array(try Self.exchange(client, "", responses: 2).utf8)) == 2)
        let reports = control.bytesWaitingWhenSent.withLock { $0 }
        #expect(reports.count >= 2 && reports.allSatisfy { $0 })
    }

    @Test func aLiveSocketIsNotTakenOverAndTheFileGoesWithTheServer() throws {
        let path = Self.path()
        let api = FirecrackerAPI(instanceID: "a", version: "0.1.0", control: RecordingControl())
        let server = try APIServer(path: path, api: api, log: { _ in })
        #expect(throws: SystemCallError.self) { _ = try APIServer(path: path, api: api, log: { _ in }) }
        server.stop()
        #expect(access(path, F_OK) != 0)
    }
}

/// Sixteen connections that send nothing, or half a request, no longer lock
/// other clients out: idle ones give way, slow requests time out with 408,
/// and a client that finds every slot busy gets a 503 with a fault_message.
@Suite(.timeLimit(.minutes(2))) struct APIServerConnectionLimitTests {
    static func connectAll(_ path: String, _ count: Int, sending text: String? = nil) throws -> [Int32] {
        try (0..<count).map { _ in
            let fd = try UnixSocket.connect(to: path)
            if let text { _ = text.withCString { send(fd, $0, strlen($0), 0) } }
            return fd
        }
    }

    /// Waits until the server has every connection in its table.
    static func settle() { usleep(200_000) }

    @Test func idleConnectionsGiveWayToANewClient() throws {
        let path = APIServerTests.path()
        let lines = Mutex<[String]>([])
        let server = try APIServer(path: path, api: FirecrackerAPI(instanceID: "limit", version: "0.1.0", control: RecordingControl()),
                                   log: { line in lines.withLock { $0.append(line) } })
        defer { server.stop() }
        let idle = try Self.connectAll(path, APIServer.maximumConnections)
        defer { idle.forEach { close($0) } }
        Self.settle()
        for _ in 0..<3 {
            let client = try UnixSocket.connect(to: path)
            defer { close(client) }
            let answer = try APIServerTests.exchange(client, "GET / HTTP/1.1\r\n\r\n", responses: 1)
            #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        }
        #expect(lines.withLock { $0 }.isEmpty, "\(lines.withLock { $0 })")
    }

    /// A burst of clients, each sending its request as soon as it connects:
    /// every one is answered (200, or 503 past the limit), none is closed
    /// unanswered. (A connection whose request sat unread in its socket once
    /// looked idle and was closed to make room for the next client.)
    @Test func aBurstOfClientsIsAnsweredEveryOne() throws {
        let path = APIServerTests.path()
        let server = try APIServer(path: path, api: FirecrackerAPI(instanceID: "burst", version: "0.1.0", control: RecordingControl()),
                                   log: { _ in })
        defer { server.stop() }
        var unanswered = 0, answered = 0
        for _ in 0..<5 {
            let clients = try (0..<48).map { _ in
                let fd = try UnixSocket.connect(to: path)
                _ = "GET / HTTP/1.1\r\n\r\n".withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                return fd
            }
            for fd in clients {
                try UnixSocket.setNonBlocking(fd, false)
                var timeout = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                var buffer = [UInt8](repeating: 0, count: 1024)
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                let answer = count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
                if answer.hasPrefix("HTTP/1.1 200") || answer.hasPrefix("HTTP/1.1 503") { answered += 1 } else { unanswered += 1 }
                close(fd)
            }
        }
        #expect(unanswered == 0 && answered == 240, "\(unanswered) of 240 clients were closed without an answer")
    }

    @Test func halfSentRequestsTimeOutWith408() throws {
        let path = APIServerTests.path()
        let server = try APIServer(path: path, api: FirecrackerAPI(instanceID: "limit", version: "0.1.0", control: RecordingControl()),
                                   readTimeout: .milliseconds(300), log: { _ in })
        defer { server.stop() }
        let slow = try Self.connectAll(path, APIServer.maximumConnections, sending: "PUT /boot-source HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        defer { slow.forEach { close($0) } }
        usleep(500_000)
        let client = try UnixSocket.connect(to: path)
        defer { close(client) }
        let answer = try APIServerTests.exchange(client, "GET / HTTP/1.1\r\n\r\n", responses: 1)
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        // One of the slow clients was answered 408 and closed.
        var timedOut = 0
        for fd in slow {
            try UnixSocket.setNonBlocking(fd, true)
            var buffer = [UInt8](repeating: 0, count: 1024)
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0, String(decoding: buffer[..<count], as: UTF8.self).hasPrefix("HTTP/1.1 408") { timedOut += 1 }
        }
        #expect(timedOut == 1)
    }

    @Test func busyConnectionsMakeANewClientA503LoggedOnce() throws {
        let path = APIServerTests.path()
        let lines = Mutex<[String]>([])
        let server = try APIServer(path: path, api: FirecrackerAPI(instanceID: "limit", version: "0.1.0", control: RecordingControl()),
                                   readTimeout: .seconds(60), log: { line in lines.withLock { $0.append(line) } })
        defer { server.stop() }
        var busy = try Self.connectAll(path, APIServer.maximumConnections, sending: "PUT /boot-source HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        defer { busy.forEach { if $0 >= 0 { close($0) } } }
        Self.settle()
        for _ in 0..<5 {
            // The 503 comes at once, before any request: the client only reads.
            let client = try UnixSocket.connect(to: path)
            defer { close(client) }
            try UnixSocket.setNonBlocking(client, false)
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 1024)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
                if count <= 0 { break }
                received += buffer[..<count]
            }
            let answer = String(decoding: received, as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 503") && answer.contains(#""fault_message":"Kestrel's API serves at most 16 connections"#), "\(answer)")
        }
        #expect(lines.withLock { $0 }.count == 1, "\(lines.withLock { $0 })")
        // A slot freed: the next client is served.
        close(busy[0])
        busy[0] = -1
        Self.settle()
        let client = try UnixSocket.connect(to: path)
        defer { close(client) }
        #expect(try APIServerTests.exchange(client, "GET / HTTP/1.1\r\n\r\n", responses: 1).hasPrefix("HTTP/1.1 200"))
    }
}
