/// One HTTP/1.x request as the API reads it: what Firecracker's clients send
/// over its Unix socket (a method, a path, a few headers, a JSON body given
/// by Content-Length).
public struct HTTPRequest: Equatable, Sendable {
    public var method: String
    /// The request target up to any `?`.
    public var path: String
    /// What follows `?` in the target, if anything.
    public var query: String?
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Header names in lower case, values with surrounding blanks removed, in order.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(method: String, path: String, query: String? = nil, minorVersion: Int = 1,
                headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.method = method
        self.path = path
        self.query = query
        self.minorVersion = minorVersion
        self.headers = headers
        self.body = body
    }

    /// The first value of the header `name` (any case).
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name == wanted }?.value
    }

    /// Whether the client keeps the connection for another request: HTTP/1.1
    /// unless it said `Connection: close`, HTTP/1.0 only with `keep-alive`.
    public var keepsConnection: Bool {
        let tokens = (header("connection") ?? "").lowercased().split(separator: ",").map { $0.trimmingBlanks }
        return minorVersion >= 1 ? !tokens.contains("close") : tokens.contains("keep-alive")
    }

    public static func == (lhs: HTTPRequest, rhs: HTTPRequest) -> Bool {
        lhs.method == rhs.method && lhs.path == rhs.path && lhs.query == rhs.query && lhs.minorVersion == rhs.minorVersion
            && lhs.headers.map(\.name) == rhs.headers.map(\.name) && lhs.headers.map(\.value) == rhs.headers.map(\.value) && lhs.body == rhs.body
    }
}

/// A response: a status, and a JSON body for every status but 204.
public struct HTTPResponse: Equatable, Sendable {
    public var status: Int
    public var body: [UInt8]
    public var contentType: String?

    public init(status: Int, body: [UInt8] = [], contentType: String? = nil) {
        self.status = status
        self.body = body
        self.contentType = contentType
    }

    /// 204 No Content: what Firecracker answers to a PUT or PATCH that worked.
    public static let noContent = HTTPResponse(status: 204)

    /// A JSON body with status `status`.
    public static func json(_ status: Int, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, body: Array(text.utf8), contentType: "application/json")
    }

    /// Firecracker's error body, `{"fault_message": "..."}`.
    public static func fault(_ status: Int, _ message: String) -> HTTPResponse {
        json(status, JSONValue.object(["fault_message": .string(message)]).rendered)
    }

    public static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 413: "Payload Too Large"
        case 414: "URI Too Long"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 505: "HTTP Version Not Supported"
        default: "Status \(status)"
        }
    }

    /// The bytes on the wire. `closing` adds `Connection: close`.
    public func serialized(closing: Bool = false) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\nServer: Kestrel API\r\n"
        head += closing ? "Connection: close\r\n" : "Connection: keep-alive\r\n"
        if status != 204 && status >= 200 {
            if let contentType { head += "Content-Type: \(contentType)\r\n" }
            head += "Content-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        return Array(head.utf8) + (status == 204 ? [] : body)
    }
}

/// Why a request could not be read; the connection is answered with
/// `status` and closed, since the byte stream can no longer be trusted.
public struct HTTPParseError: Error, Equatable, CustomStringConvertible, Sendable {
    public let status: Int
    public let message: String
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { "\(status): \(message)" }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    var trimmingBlanks: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
