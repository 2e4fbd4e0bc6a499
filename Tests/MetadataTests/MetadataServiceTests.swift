import Testing
import WireFormats
@testable import Metadata

@Suite struct MetadataServiceTests {
    static let document = try! JSONValue.parse(Array("""
        {"latest": {"meta-data": {"ami-id": "ami-87654321", "reservation-id": "r-79054aef", "count": 3}}, "a/b": {"c~d": "x"}}
        """.utf8))

    func service(_ version: MetadataConfiguration.Version = .v1) throws -> MetadataService {
        let service = MetadataService()
        service.configure(version: version, imdsCompatible: false)
        try service.put(Self.document)
        return service
    }

    func get(_ path: String, headers: [(String, String)] = []) -> HTTPRequest {
        HTTPRequest(method: "GET", path: path, headers: headers.map { ($0.0.lowercased(), $0.1) })
    }

    func text(_ response: MetadataResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    @Test func getAnswersInTheIMDSFormatUnlessJSONIsAsked() throws {
        let service = try service()
        #expect(text(service.respond(to: get("/latest"))) == "meta-data/")
        #expect(text(service.respond(to: get("/latest/meta-data/"))) == "ami-id\ncount\nreservation-id")
        #expect(text(service.respond(to: get("//latest//meta-data/ami-id"))) == "ami-87654321")
        let json = service.respond(to: get("/latest/meta-data", headers: [("Accept", "application/json")]))
        #expect(json.status == 200 && json.contentType == "application/json")
        #expect(text(json) == #"{"ami-id":"ami-87654321","count":3,"reservation-id":"r-79054aef"}"#)
        // RFC 6901 escapes: ~1 is '/', ~0 is '~'.
        #expect(text(service.respond(to: get("/a~1b/c~0d"))) == "x")
        // A number has no IMDS form.
        #expect(service.respond(to: get("/latest/meta-data/count")).status == 501)
        let missing = service.respond(to: get("/latest/user-data"))
        #expect(missing.status == 404 && text(missing) == "Resource not found: /latest/user-data.")
        service.configure(version: .v1, imdsCompatible: true)
        #expect(text(service.respond(to: get("/latest", headers: [("Accept", "application/json")]))) == "meta-data/")
    }

    @Test func version2NeedsALiveToken() throws {
        let service = try service(.v2)
        let start = ContinuousClock.now
        #expect(service.respond(to: get("/latest"), now: start).status == 401)
        #expect(service.respond(to: get("/latest", headers: [("X-metadata-token", "forged")]), now: start).status == 401)
        let put = HTTPRequest(method: "PUT", path: "/latest/api/token", headers: [("x-metadata-token-ttl-seconds", "60")])
        let issued = service.respond(to: put, now: start)
        #expect(issued.status == 200 && issued.body.count == 43)
        #expect(issued.headers.first?.name == "X-metadata-token-ttl-seconds" && issued.headers.first?.value == "60")
        let token = text(issued)
        #expect(service.respond(to: get("/latest", headers: [("X-metadata-token", token)]), now: start + .seconds(59)).status == 200)
        #expect(service.respond(to: get("/latest", headers: [("X-aws-ec2-metadata-token", token)]), now: start + .seconds(59)).status == 200)
        #expect(service.respond(to: get("/latest", headers: [("X-metadata-token", token)]), now: start + .seconds(60)).status == 401)
        let counters = service.counters
        #expect(counters.noToken == 1 && counters.invalidToken == 2 && counters.tokensIssued == 1)
        // Version 1 answers without a token, and counts it.
        service.configure(version: .v1, imdsCompatible: false)
        #expect(service.respond(to: get("/latest"), now: start).status == 200)
        #expect(service.counters.noToken == 2)
    }

    @Test func tokenRequestsAreCheckedAsFirecrackerDoes() throws {
        let service = try service(.v2)
        func put(_ path: String, _ headers: [(String, String)]) -> MetadataResponse {
            service.respond(to: HTTPRequest(method: "PUT", path: path, headers: headers))
        }
        #expect(put("/latest/api/token", []).status == 400)
        #expect(put("/latest/api/token", [("x-metadata-token-ttl-seconds", "0")]).status == 400)
        #expect(put("/latest/api/token", [("x-metadata-token-ttl-seconds", "21601")]).status == 400)
        #expect(put("/latest/api/token", [("x-metadata-token-ttl-seconds", "ten")]).status == 400)
        #expect(put("/latest/api/token", [("x-aws-ec2-metadata-token-ttl-seconds", "21600")]).status == 200)
        #expect(put("/latest/api/token", [("x-metadata-token-ttl-seconds", "5"), ("x-forwarded-for", "1.2.3.4")]).status == 400)
        #expect(put("/latest/meta-data", [("x-metadata-token-ttl-seconds", "5")]).status == 404)
        let post = service.respond(to: HTTPRequest(method: "POST", path: "/latest"))
        #expect(post.status == 405 && post.headers.contains { $0.name == "Allow" && $0.value == "GET, PUT" })
    }

    @Test func putAndPatchKeepTheLimitAndChangeNothingWhenRefused() throws {
        let service = MetadataService(sizeLimit: 40)
        #expect(service.contents == .object([:]))
        #expect(throws: MetadataError.self) { try service.patch(.object(["a": .string("b")])) }
        try service.put(.object(["a": .string("b"), "n": .object(["x": .string("y")])]))
        try service.patch(.object(["n": .object(["x": .null, "z": .bool(true)])]))
        #expect(service.contents == .object(["a": .string("b"), "n": .object(["z": .bool(true)])]))
        #expect(throws: MetadataError.self) { try service.patch(.object(["long": .string(String(repeating: "x", count: 40))])) }
        #expect(service.contents == .object(["a": .string("b"), "n": .object(["z": .bool(true)])]))
        #expect(throws: MetadataError.self) { try service.put(.string(String(repeating: "y", count: 39))) }
        // Before a PUT, the guest finds nothing.
        #expect(MetadataService().respond(to: get("/")).status == 404)
    }

    @Test func tokensAreBase64URLAndTheTableIsBounded() {
        #expect(SessionTokens.base64URL([0xFB, 0xFF]) == "-_8")
        #expect(SessionTokens.base64URL(Array("Man".utf8)) == "TWFu")
        var tokens = SessionTokens()
        let now = ContinuousClock.now
        let first = tokens.issue(ttl: 1, now: now)
        for _ in 1..<SessionTokens.capacity { _ = tokens.issue(ttl: 100, now: now) }
        #expect(tokens.count == SessionTokens.capacity)
        let late = tokens.issue(ttl: 100, now: now + .seconds(2))
        #expect(tokens.count == SessionTokens.capacity && !tokens.isValid(first, now: now) && tokens.isValid(late, now: now + .seconds(2)))
    }

    @Test func addressesAreLinkLocalAsFirecrackerRequires() {
        #expect(MetadataConfiguration.parseIPv4("169.254.169.254") == [169, 254, 169, 254])
        #expect(MetadataConfiguration.parseIPv4("169.254.01.2") == nil && MetadataConfiguration.parseIPv4("1.2.3") == nil)
        #expect(MetadataConfiguration.parseIPv4("256.1.1.1") == nil && MetadataConfiguration.parseIPv4("1.2.3.4.") == nil)
        #expect(MetadataConfiguration.isUsableLinkLocal([169, 254, 170, 2]))
        #expect(!MetadataConfiguration.isUsableLinkLocal([169, 254, 0, 2]) && !MetadataConfiguration.isUsableLinkLocal([169, 254, 255, 2]))
        #expect(!MetadataConfiguration.isUsableLinkLocal([10, 0, 0, 1]))
    }
}
