import Foundation
import SwiftASN1
import X509

/// Subject, issuer and validity of an X.509 certificate, for `kestrel snp certs show`.
public struct CertificateSummary: Equatable, Sendable {
    public let subject: String
    public let issuer: String
    public let notValidBefore: Date
    public let notValidAfter: Date

    /// Reads the summary from DER. AMD's ASK and ARK carry RSASSA-PSS keys, which
    /// the X509 module does not parse as public keys; for those the fields are read
    /// from the TBSCertificate directly. Returns the reason when neither works.
    public static func inspect(_ der: [UInt8]) -> Result<CertificateSummary, CertificateSummaryError> {
        if let certificate = try? Certificate(derEncoded: der) {
            return .success(CertificateSummary(
                subject: certificate.subject.description, issuer: certificate.issuer.description,
                notValidBefore: certificate.notValidBefore, notValidAfter: certificate.notValidAfter))
        }
        do {
            return .success(try readTBSFields(der))
        } catch {
            return .failure(CertificateSummaryError(reason: "\(error)"))
        }
    }

    /// Whether `date` lies inside the validity period.
    public func isValid(at date: Date) -> Bool { notValidBefore <= date && date <= notValidAfter }

    /// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    /// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    ///   issuer, validity SEQUENCE { notBefore, notAfter }, subject, ... }
    private static func readTBSFields(_ der: [UInt8]) throws -> CertificateSummary {
        let root = try DER.parse(der)
        return try DER.sequence(root, identifier: .sequence) { certificate in
            guard let tbs = certificate.next() else { throw CertificateSummaryError(reason: "no TBSCertificate") }
            while certificate.next() != nil {}  // signatureAlgorithm and signature are not needed
            return try DER.sequence(tbs, identifier: .sequence) { fields in
                guard var node = fields.next() else { throw CertificateSummaryError(reason: "empty TBSCertificate") }
                if node.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) {
                    guard let next = fields.next() else { throw CertificateSummaryError(reason: "TBSCertificate ends after its version") }
                    node = next  // serial number
                }
                guard fields.next() != nil, let issuerNode = fields.next(), let validityNode = fields.next(),
                      let subjectNode = fields.next()
                else { throw CertificateSummaryError(reason: "TBSCertificate is missing fields") }
                while fields.next() != nil {}  // subjectPublicKeyInfo (RSASSA-PSS for AMD keys) and extensions
                let issuer = try DistinguishedName(derEncoded: issuerNode)
                let subject = try DistinguishedName(derEncoded: subjectNode)
                let (before, after) = try DER.sequence(validityNode, identifier: .sequence) { times in
                    guard let first = times.next(), let second = times.next() else {
                        throw CertificateSummaryError(reason: "validity needs two times")
                    }
                    return (try date(first), try date(second))
                }
                return CertificateSummary(subject: subject.description, issuer: issuer.description, notValidBefore: before, notValidAfter: after)
            }
        }
    }

    private static func date(_ node: ASN1Node) throws -> Date {
        var components = DateComponents()
        components.timeZone = TimeZone(identifier: "UTC")
        if node.identifier == .utcTime {
            let time = try UTCTime(derEncoded: node)
            (components.year, components.month, components.day) = (time.year, time.month, time.day)
            (components.hour, components.minute, components.second) = (time.hours, time.minutes, time.seconds)
        } else {
            let time = try GeneralizedTime(derEncoded: node)
            (components.year, components.month, components.day) = (time.year, time.month, time.day)
            (components.hour, components.minute, components.second) = (time.hours, time.minutes, time.seconds)
        }
        guard let date = Calendar(identifier: .gregorian).date(from: components) else {
            throw CertificateSummaryError(reason: "time out of range")
        }
        return date
    }
}

public struct CertificateSummaryError: Error, Equatable, CustomStringConvertible, Sendable {
    public let reason: String
    public var description: String { reason }
}
