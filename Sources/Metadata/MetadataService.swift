import Synchronization
import WireFormats

/// Firecracker's microVM metadata service (docs/mmds/mmds-user-guide.md):
/// a JSON data store the host fills through the API (`PUT`/`PATCH`/`GET
/// /mmds`) and the guest reads over HTTP, through `MetadataNetworkStack`.
///
/// The guest side answers GET with the value a path names (a JSON Pointer),
/// in JSON (`Accept: application/json`) or the IMDS format (an object's keys,
/// one per line, with '/' after those that are objects; a string's text),
/// and PUT `/latest/api/token` with a V2 session token. Thread-safe: the API
/// thread writes while the device's thread reads.
public final class MetadataService: Sendable {
    /// The largest data store, as compact JSON (Firecracker's
    /// `--mmds-size-limit`, whose default is the API's payload limit).
    public let sizeLimit: Int
    private let state: Mutex<State>

    struct State {
        var data: JSONValue?
        var version: MetadataConfiguration.Version = .v1
        var imdsCompatible = false
        var tokens = SessionTokens()
        var counters = Counters()
    }

    /// What the guest asked, for the metrics (Firecracker's `mmds` fields).
    public struct Counters: Equatable, Sendable {
        public var requests = 0, badRequests = 0, getRequests = 0, putRequests = 0
        public var noToken = 0, invalidToken = 0, tokensIssued = 0
    }

    public init(sizeLimit: Int = HTTPRequestReader.defaultMaximumBodyBytes) {
        self.sizeLimit = sizeLimit
        state = Mutex(State())
    }

    public func configure(version: MetadataConfiguration.Version, imdsCompatible: Bool) {
        state.withLock { $0.version = version; $0.imdsCompatible = imdsCompatible }
    }

    public var version: MetadataConfiguration.Version { state.withLock { $0.version } }
    public var counters: Counters { state.withLock { $0.counters } }

    /// The store (`GET /mmds`): an empty object before the first PUT.
    public var contents: JSONValue { state.withLock { $0.data } ?? .object([:]) }

    /// Replaces the whole store (`PUT /mmds`).
    public func put(_ value: JSONValue) throws(MetadataError) {
        try checkSize(value)
        state.withLock { $0.data = value }
    }

    /// Merges `patch` into the store (`PATCH /mmds`, RFC 7396). Refused
    /// before the first PUT, and when the result would pass the limit; a
    /// refused patch changes nothing.
    public func patch(_ patch: JSONValue) throws(MetadataError) {
        try state.withLock { state throws(MetadataError) in
            guard let data = state.data else { throw MetadataError("the MMDS data store is empty: PUT /mmds before a PATCH") }
            let merged = data.merging(patch)
            try checkSize(merged)
            state.data = merged
        }
    }

    private func checkSize(_ value: JSONValue) throws(MetadataError) {
        let size = value.rendered.utf8.count
        guard size <= sizeLimit else {
            throw MetadataError("the MMDS data store would hold \(size) bytes of JSON, more than its limit of \(sizeLimit) (--mmds-size-limit)")
        }
    }

    // MARK: The guest's requests

    static let tokenPath = "/latest/api/token"
    static let tokenHeaders = ["x-metadata-token", "x-aws-ec2-metadata-token"]
    static let ttlHeaders = ["x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds"]

    /// The answer to one HTTP request from the guest.
    public func respond(to request: HTTPRequest, now: ContinuousClock.Instant = .now) -> MetadataResponse {
        state.withLock { state in
            state.counters.requests += 1
            let response = Self.answer(request, state: &state, now: now)
            if response.status == 400 { state.counters.badRequests += 1 }
            return response
        }
    }

    private static func answer(_ request: HTTPRequest, state: inout State, now: ContinuousClock.Instant) -> MetadataResponse {
        guard request.path.hasPrefix("/") else { return .text(400, "Invalid URI.") }
        // Firecracker folds repeated slashes before it reads the path.
        var path = request.path
        while path.contains("//") { path = path.replacing("//", with: "/") }
        switch request.method {
        case "GET":
            state.counters.getRequests += 1
            let token = tokenHeaders.lazy.compactMap { request.header($0) }.first
            switch (token, state.version) {
            case (nil, .v1): state.counters.noToken += 1
            case (let token?, .v1): if !state.tokens.isValid(token, now: now) { state.counters.invalidToken += 1 }
            case (nil, .v2):
                state.counters.noToken += 1
                return .text(401, "No MMDS token provided. Use `X-metadata-token` header to specify the session token.")
            case (let token?, .v2):
                guard state.tokens.isValid(token, now: now) else {
                    state.counters.invalidToken += 1
                    return .text(401, "MMDS token not valid.")
                }
            }
            return read(path: path, json: !state.imdsCompatible && wantsJSON(request), data: state.data)
        case "PUT":
            state.counters.putRequests += 1
            if request.header("x-forwarded-for") != nil {
                return .text(400, "Unsupported header name. Key: X-Forwarded-For.")
            }
            guard path == tokenPath else { return .text(404, "Resource not found: \(request.path).") }
            guard let (name, text) = ttlHeaders.lazy.compactMap({ name in request.header(name).map { (name, $0) } }).first else {
                return .text(400, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.")
            }
            guard let ttl = Int(text), SessionTokens.ttlRange.contains(ttl) else {
                return .text(400, "Invalid time to live value provided for token: \(text). Please provide a value between "
                    + "\(SessionTokens.ttlRange.lowerBound) and \(SessionTokens.ttlRange.upperBound).")
            }
            state.counters.tokensIssued += 1
            var response = MetadataResponse.text(200, state.tokens.issue(ttl: ttl, now: now))
            response.headers.append((canonicalName(name), String(ttl)))
            return response
        default:
            var response = MetadataResponse.text(405, "Not allowed HTTP method.")
            response.headers.append(("Allow", "GET, PUT"))
            return response
        }
    }

    /// Whether the client asked for JSON (`Accept: application/json`);
    /// anything else, `*/*` included, is the IMDS format.
    private static func wantsJSON(_ request: HTTPRequest) -> Bool {
        (request.header("accept") ?? "").lowercased().contains("application/json")
    }

    private static func read(path: String, json: Bool, data: JSONValue?) -> MetadataResponse {
        let pointer = path == "/" ? "" : (path.hasSuffix("/") ? String(path.dropLast()) : path)
        guard let value = (data ?? .null).value(atPointer: pointer), data != nil else {
            return .text(404, "Resource not found: \(path).")
        }
        if json { return MetadataResponse(status: 200, contentType: "application/json", body: Array(value.rendered.utf8)) }
        switch value {
        case .object(let members):
            let lines = members.keys.sorted().map { members[$0]?.objectValue != nil ? $0 + "/" : $0 }
            return .text(200, lines.joined(separator: "\n"))
        case .string(let text):
            return .text(200, text)
        default:
            return .text(501, "Cannot retrieve value. The value has an unsupported type.")
        }
    }

    /// "x-metadata-token-ttl-seconds" as Firecracker spells it in answers.
    private static func canonicalName(_ lower: String) -> String { "X" + lower.dropFirst() }
}

/// A refused change to the data store (the API answers 400 with it).
public struct MetadataError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// An answer to the guest: a status, a content type, a body and any extra headers.
public struct MetadataResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var headers: [(name: String, value: String)] = []

    static func text(_ status: Int, _ text: String) -> MetadataResponse {
        MetadataResponse(status: status, contentType: "text/plain", body: Array(text.utf8))
    }

    /// The bytes on the wire.
    public func serialized(closing: Bool) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(HTTPResponse.reason(status))\r\nServer: Kestrel MMDS\r\n"
        head += closing ? "Connection: close\r\n" : "Connection: keep-alive\r\n"
        head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        return Array((head + "\r\n").utf8) + body
    }
}
