import ConfidentialTools
import Confidential
import Crypto
import Foundation
import SwiftASN1
import Testing
import X509

@Suite(.timeLimit(.minutes(5))) struct CertificateSummaryTests {
    static func makeCertificate(commonName: String, notBefore: Date, notAfter: Date) throws -> Certificate {
        let key = P384.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName(commonName); OrganizationName("Kestrel test") }
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA384, extensions: Certificate.Extensions(), issuerPrivateKey: .init(key))
    }

    static func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    @Test func summarisesSubjectIssuerAndValidity() throws {
        let before = Date(timeIntervalSince1970: 1_700_000_000)
        let after = Date(timeIntervalSince1970: 1_900_000_000)
        let certificate = try Self.makeCertificate(commonName: "VCEK test", notBefore: before, notAfter: after)
        let summary = try CertificateSummary.inspect(try Self.der(certificate)).get()
        #expect(summary.subject.contains("CN=VCEK test"))
        #expect(summary.issuer == summary.subject)
        #expect(summary.notValidBefore == before)
        #expect(summary.notValidAfter == after)
        #expect(summary.isValid(at: Date(timeIntervalSince1970: 1_800_000_000)))
        #expect(!summary.isValid(at: Date(timeIntervalSince1970: 1_950_000_000)))
    }

    @Test func notACertificateHasAReason() {
        guard case .failure(let error) = CertificateSummary.inspect([1, 2, 3]) else {
            Issue.record("three bytes parsed as a certificate")
            return
        }
        #expect(!error.reason.isEmpty)
    }

    /// Our RFC 4514 text of a name matches swift-certificates' own rendering,
    /// including multi-valued RDNs and characters that need escaping.
    static let year2065 = Date(timeIntervalSince1970: 3_000_000_000)  // 2065-01-24T05:20:00Z

    @Test func distinguishedNamesReadAsSwiftCertificatesRendersThem() throws {
        let key = P384.Signing.PrivateKey()
        let name = try DistinguishedName([
            RelativeDistinguishedName([.init(type: .RDNAttributeType.countryName, printableString: "US")]),
            RelativeDistinguishedName([
                .init(type: .RDNAttributeType.organizationName, utf8String: "Advanced Micro Devices, Inc."),
                .init(type: .RDNAttributeType.organizationalUnitName, utf8String: "Engineering"),
            ]),
            RelativeDistinguishedName([.init(type: .RDNAttributeType.localityName, utf8String: " Santa Clara")]),
            RelativeDistinguishedName([.init(type: .RDNAttributeType.commonName, utf8String: "SEV-Milan <test>; #1")]),
        ])
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now, notValidAfter: Self.year2065, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA384, extensions: Certificate.Extensions(), issuerPrivateKey: .init(key))
        let summary = try CertificateSummary.inspect(try Self.der(certificate)).get()
        #expect(summary.notValidAfter == Self.year2065)  // a GeneralizedTime (from 2050 on)
        #expect(summary.subject == certificate.subject.description)
        #expect(summary.subject.contains("Advanced Micro Devices\\, Inc."))
        #expect(summary.subject.hasPrefix("CN=SEV-Milan \\<test\\>\\; #1,L=\\ Santa Clara,"))
    }

    @Test func pemInputBecomesDERAndChainsAreRefused() throws {
        let directory = TemporaryDirectory()
        let now = Date()
        let first = try Self.makeCertificate(commonName: "ASK", notBefore: now, notAfter: now + 3600)
        let second = try Self.makeCertificate(commonName: "ARK", notBefore: now, notAfter: now + 3600)
        let firstPEM = try first.serializeAsPEM().pemString
        let pemFile = directory.write(Array(firstPEM.utf8), to: "ask.pem")
        let loaded = try CertificateInput.load(path: pemFile)
        #expect(loaded.convertedFromPEM)
        #expect(loaded.bytes == (try Self.der(first)))
        let derFile = directory.write(try Self.der(second), to: "ark.der")
        #expect(try CertificateInput.load(path: derFile) == .init(bytes: try Self.der(second), convertedFromPEM: false))
        let chain = directory.write(Array((firstPEM + "\n" + (try second.serializeAsPEM().pemString)).utf8), to: "chain.pem")
        #expect(throws: CertificateInputError.pemCount(chain, 2)) { try CertificateInput.load(path: chain) }
        #expect(throws: CertificateInputError.unreadable(directory.path + "/none")) { try CertificateInput.load(path: directory.path + "/none") }
        let empty = directory.write([], to: "empty")
        #expect(throws: CertificateInputError.empty(empty)) { try CertificateInput.load(path: empty) }
    }

    @Test func reportNamesEntriesAndValidity() throws {
        let now = Date()
        let vcek = try Self.der(try Self.makeCertificate(commonName: "VCEK x", notBefore: now - 10, notAfter: now + 3600))
        let expired = try Self.der(try Self.makeCertificate(commonName: "old ASK", notBefore: now - 7200, notAfter: now - 3600))
        let custom = SNPCertificateGUID("01234567-89ab-cdef-0123-456789abcdef")!
        let table = try SNPCertificateTable([(.vcek, vcek), (.ask, expired), (custom, [9, 9])])
        let text = CertificateBlobReport.text(for: table, blobSize: table.encoded().count, now: now)
        #expect(text.contains("3 entries"))
        #expect(text.contains("[0] VCEK (63da758d-e664-4564-adc5-f4b93be8accd)"))
        #expect(text.contains("CN=VCEK x"))
        #expect(text.contains("valid now"))
        #expect(text.contains("EXPIRED"))
        #expect(text.contains("[2] 01234567-89ab-cdef-0123-456789abcdef: offset"))
        #expect(text.contains("not an X.509 certificate"))
        let json = try CertificateBlobReport.json(for: table, blobSize: 10)
        #expect(json.contains("\"name\" : \"ASK\""))
    }
}
