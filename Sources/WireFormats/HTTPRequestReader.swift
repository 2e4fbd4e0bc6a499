/// Reads HTTP/1.x requests from the bytes of one connection, as they arrive
/// in pieces. It trusts nothing: the head is limited to
/// `maximumHeadBytes`, a body to `maximumBodyBytes` (by default Firecracker's
/// `--http-api-max-payload-size`), and a body comes only by Content-Length.
/// Chunked bodies, obsolete header folding, bad tokens and conflicting
/// lengths are errors; after one, the connection is answered and closed.
public struct HTTPRequestReader: Sendable {
    public static let maximumHeadBytes = 8192
    /// Firecracker's default `--http-api-max-payload-size`.
    public static let defaultMaximumBodyBytes = 51_200

    /// The largest body this reader takes; a longer Content-Length is a 413.
    public let maximumBodyBytes: Int

    /// What the reader has for the server.
    public enum Event: Equatable, Sendable {
        /// A whole request.
        case request(HTTPRequest)
        /// The client sent `Expect: 100-continue` and waits for a `100
        /// Continue` before its body (given once per request).
        case continueExpected
    }

    private var buffer: [UInt8] = []
    /// A parsed head whose body is still arriving.
    private var pending: (request: HTTPRequest, length: Int)?
    private var continueAnswered = false

    public init(maximumBodyBytes: Int = defaultMaximumBodyBytes) {
        precondition(maximumBodyBytes >= 0, "a body limit is not negative")
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// Bytes held that are not part of a returned request.
    public var bufferedCount: Int { buffer.count }

    /// Whether part of a request has arrived (a head, or its body) and the
    /// rest has not.
    public var isMidRequest: Bool { pending != nil || buffer.contains { $0 != 0x0D && $0 != 0x0A } }

    public mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    /// The next event, or nil until more bytes arrive.
    public mutating func next() throws(HTTPParseError) -> Event? {
        if pending == nil {
            // Blank lines before a request line are allowed (RFC 9112, 2.2).
            let blank = buffer.prefix { $0 == 0x0D || $0 == 0x0A }.count
            if blank > 0 { buffer.removeFirst(blank) }
            guard let end = Self.endOfHead(buffer) else {
                if buffer.count > Self.maximumHeadBytes {
                    throw HTTPParseError(431, "the request head is longer than \(Self.maximumHeadBytes) bytes")
                }
                return nil
            }
            guard end.headLength <= Self.maximumHeadBytes else {
                throw HTTPParseError(431, "the request head is longer than \(Self.maximumHeadBytes) bytes")
            }
            let head = try Self.parseHead(buffer[..<end.headLength])
            guard head.1 <= maximumBodyBytes else {
                throw HTTPParseError(413, "the body of \(head.1) bytes is larger than the \(maximumBodyBytes) bytes accepted")
            }
            buffer.removeFirst(end.headLength + end.terminatorLength)
            pending = head
            continueAnswered = false
        }
        guard let (request, length) = pending else { return nil }
        if buffer.count < length {
            if !continueAnswered, request.header("expect")?.lowercased() == "100-continue" {
                continueAnswered = true
                return .continueExpected
            }
            return nil
        }
        var complete = request
        complete.body = Array(buffer[..<length])
        buffer.removeFirst(length)
        pending = nil
        return .request(complete)
    }

    /// Where the head ends: the first empty line (CRLF CRLF, or bare LFs).
    static func endOfHead(_ bytes: [UInt8]) -> (headLength: Int, terminatorLength: Int)? {
        var index = 0
        while let newline = bytes[index...].firstIndex(of: 0x0A) {
            let next = newline + 1
            if next < bytes.count && bytes[next] == 0x0A { return (newline, 2) }
            if next + 1 < bytes.count && bytes[next] == 0x0D && bytes[next + 1] == 0x0A { return (newline, 3) }
            if next >= bytes.count || (next + 1 >= bytes.count && bytes[next] == 0x0D) { return nil }
            index = next
        }
        return nil
    }

    private static func parseHead(_ head: ArraySlice<UInt8>) throws(HTTPParseError) -> (HTTPRequest, Int) {
        var lines = head.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            line.last == 0x0D ? line.dropLast() : line
        }
        guard !lines.isEmpty else { throw HTTPParseError(400, "empty request") }
        let requestLine = lines.removeFirst()
        guard requestLine.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw HTTPParseError(400, "the request line holds control or non-ASCII bytes")
        }
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw HTTPParseError(400, "the request line is not METHOD TARGET HTTP/1.x") }
        let method = String(decoding: parts[0], as: UTF8.self)
        guard !method.isEmpty, method.utf8.allSatisfy(isTokenByte) else { throw HTTPParseError(400, "bad method \"\(method)\"") }
        let target = String(decoding: parts[1], as: UTF8.self)
        guard target.hasPrefix("/") else { throw HTTPParseError(400, "the request target \"\(target)\" is not an absolute path") }
        guard target.utf8.count <= 2048 else { throw HTTPParseError(414, "the request target is longer than 2048 bytes") }
        let version = String(decoding: parts[2], as: UTF8.self)
        let minor: Int
        switch version {
        case "HTTP/1.1": minor = 1
        case "HTTP/1.0": minor = 0
        default:
            guard version.hasPrefix("HTTP/") else { throw HTTPParseError(400, "bad protocol version \"\(version)\"") }
            throw HTTPParseError(505, "\(version) is not supported; the API speaks HTTP/1.1")
        }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let first = line.first else { throw HTTPParseError(400, "an empty header line") }
            if first == 0x20 || first == 0x09 { throw HTTPParseError(400, "obsolete line folding in a header") }
            guard let colon = line.firstIndex(of: 0x3A) else { throw HTTPParseError(400, "a header line without a colon") }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { throw HTTPParseError(400, "a bad header name") }
            let rawValue = line[(colon + 1)...]
            guard rawValue.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                throw HTTPParseError(400, "control bytes in the \(String(decoding: name, as: UTF8.self)) header")
            }
            headers.append((String(decoding: name, as: UTF8.self).lowercased(),
                            Substring(String(decoding: rawValue, as: UTF8.self)).trimmingBlanks))
        }
        let question = target.firstIndex(of: "?")
        var request = HTTPRequest(method: method, path: question.map { String(target[..<$0]) } ?? target,
                                  query: question.map { String(target[target.index(after: $0)...]) }, minorVersion: minor, headers: headers)
        if request.header("transfer-encoding") != nil {
            throw HTTPParseError(501, "Transfer-Encoding is not supported; send the body with Content-Length")
        }
        let lengths = Set(headers.filter { $0.name == "content-length" }.map(\.value))
        guard lengths.count <= 1 else { throw HTTPParseError(400, "conflicting Content-Length headers") }
        var length = 0
        if let text = lengths.first {
            guard !text.isEmpty, text.utf8.count <= 9, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let value = Int(text) else {
                throw HTTPParseError(400, "Content-Length \"\(text)\" is not a number")
            }
            length = value
        }
        request.body = []
        return (request, length)
    }

    /// RFC 9110 token characters.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
        default: false
        }
    }
}
