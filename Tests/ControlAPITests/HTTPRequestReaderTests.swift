@testable import ControlAPI
import Testing

/// The HTTP/1.1 reader, fed the way sockets deliver: whole, byte by byte,
/// pipelined, and malformed.
@Suite(.timeLimit(.minutes(5))) struct HTTPRequestReaderTests {
    static func read(_ text: String, chunk: Int = .max) throws(HTTPParseError) -> [HTTPRequestReader.Event] {
        var reader = HTTPRequestReader()
        var events: [HTTPRequestReader.Event] = []
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            reader.append(bytes.prefix(chunk))
            bytes = bytes.dropFirst(chunk)
            while let event = try reader.next() { events.append(event) }
        }
        return events
    }

    static let put = "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 256}".replacing("35", with: "38")

    @Test func aRequestReadsTheSameWholeAndByteByByte() throws {
        let whole = try Self.read(Self.put)
        let split = try Self.read(Self.put, chunk: 1)
        #expect(whole == split)
        guard case .request(let request) = try #require(whole.first) else { Issue.record("no request"); return }
        #expect(whole.count == 1)
        #expect(request.method == "PUT" && request.path == "/machine-config" && request.minorVersion == 1)
        #expect(request.header("CONTENT-TYPE") == "application/json")
        #expect(String(decoding: request.body, as: UTF8.self) == "{\"vcpu_count\": 2, \"mem_size_mib\": 256}")
        #expect(request.keepsConnection)
    }

    @Test func pipelinedRequestsComeOutInOrderWithQueriesAndBareLineFeeds() throws {
        let events = try Self.read("GET /?x=1 HTTP/1.1\r\n\r\n\r\nGET /vm/config HTTP/1.0\nConnection: keep-alive\n\n" + Self.put, chunk: 7)
        let requests = events.compactMap { event -> HTTPRequest? in if case .request(let r) = event { return r }; return nil }
        #expect(requests.map(\.path) == ["/", "/vm/config", "/machine-config"])
        #expect(requests[0].query == "x=1")
        #expect(requests[1].minorVersion == 0 && requests[1].keepsConnection)
    }

    @Test func connectionCloseAndHTTP10EndTheConnection() throws {
        let events = try Self.read("GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        let keeps = events.compactMap { event -> Bool? in if case .request(let r) = event { return r.keepsConnection }; return nil }
        #expect(keeps == [false, false])
    }

    @Test func expectContinueIsAnsweredOnceBeforeTheBody() throws {
        var reader = HTTPRequestReader()
        reader.append(Array("PUT /drives/root HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n".utf8))
        #expect(try reader.next() == .continueExpected)
        #expect(try reader.next() == nil)
        reader.append(Array("{}".utf8))
        #expect(try reader.next() == nil)
        reader.append(Array("  ".utf8))
        guard case .request(let request) = try reader.next() else { Issue.record("no request"); return }
        #expect(request.body == Array("{}  ".utf8))
    }

    @Test(arguments: [
        ("GET /\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\n\r\n", 505),
        ("GET / FTP/1.0\r\n\r\n", 400),
        ("GET relative HTTP/1.1\r\n\r\n", 400),
        ("G@T / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nNo-Colon\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n", 413),
        ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ("GET /\u{1} HTTP/1.1\r\n\r\n", 400),
    ])
    func malformedRequestsAreRefusedWithTheirStatus(text: String, status: Int) {
        #expect(throws: HTTPParseError.self) { _ = try Self.read(text) }
        do { _ = try Self.read(text) } catch { #expect(error.status == status, "\(text.debugDescription): \(error)") }
    }

    @Test func anEndlessHeadIsRefusedAtTheLimit() {
        let text = "GET / HTTP/1.1\r\n" + String(repeating: "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", count: 400)
        do { _ = try Self.read(text, chunk: 512); Issue.record("accepted a \(text.utf8.count)-byte head") } catch {
            #expect(error.status == 431)
        }
    }

    @Test func responsesCarryLengthTypeAndConnection() {
        let fault = HTTPResponse.fault(400, "bad \"thing\"\n")
        let text = String(decoding: fault.serialized(), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(text.contains("Content-Type: application/json\r\n") && text.contains("Connection: keep-alive\r\n"))
        #expect(text.hasSuffix("\r\n\r\n{\"fault_message\":\"bad \\\"thing\\\"\\n\"}"))
        #expect(text.contains("Content-Length: \(fault.body.count)\r\n"))
        let empty = String(decoding: HTTPResponse.noContent.serialized(closing: true), as: UTF8.self)
        #expect(empty == "HTTP/1.1 204 No Content\r\nServer: Kestrel API\r\nConnection: close\r\n\r\n")
    }
}
