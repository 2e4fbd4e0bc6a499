import FoundationEssentials
import SwiftASN1

/// Subject, issuer and validity of an X.509 certificate, for `kestrel snp certs show`.
///
/// The fields are read from the TBSCertificate directly with SwiftASN1, so the
/// summary works for every public key type, including the RSASSA-PSS keys of
/// AMD's ASK and ARK, and needs no cryptography library.
public struct CertificateSummary: Equatable, Sendable {
    public let subject: String
    public let issuer: String
    public let notValidBefore: Date
    public let notValidAfter: Date

    /// Reads the summary from DER; returns the reason when the bytes are not a certificate.
    public static func inspect(_ der: [UInt8]) -> Result<CertificateSummary, CertificateSummaryError> {
        do {
            return .success(try readTBSFields(der))
        } catch let error as CertificateSummaryError {
            return .failure(error)
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
            guard certificate.next() != nil, certificate.next() != nil, certificate.next() == nil else {
                throw CertificateSummaryError(reason: "a certificate holds exactly TBSCertificate, signatureAlgorithm and signature")
            }
            return try DER.sequence(tbs, identifier: .sequence) { fields in
                guard var node = fields.next() else { throw CertificateSummaryError(reason: "empty TBSCertificate") }
                if node.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) {
                    guard let next = fields.next() else { throw CertificateSummaryError(reason: "TBSCertificate ends after its version") }
                    node = next  // serial number
                }
                guard node.identifier == .integer else { throw CertificateSummaryError(reason: "TBSCertificate has no serial number") }
                guard fields.next() != nil, let issuerNode = fields.next(), let validityNode = fields.next(),
                      let subjectNode = fields.next(), fields.next() != nil
                else { throw CertificateSummaryError(reason: "TBSCertificate is missing fields") }
                while fields.next() != nil {}  // issuer/subject unique IDs and extensions
                let issuer = try DistinguishedNameText.format(issuerNode)
                let subject = try DistinguishedNameText.format(subjectNode)
                let (before, after) = try DER.sequence(validityNode, identifier: .sequence) { times in
                    guard let first = times.next(), let second = times.next() else {
                        throw CertificateSummaryError(reason: "validity needs two times")
                    }
                    return (try date(first), try date(second))
                }
                return CertificateSummary(subject: subject, issuer: issuer, notValidBefore: before, notValidAfter: after)
            }
        }
    }

    /// UTCTime or GeneralizedTime (always UTC in DER) as a Date.
    private static func date(_ node: ASN1Node) throws -> Date {
        let fields: (year: Int, month: Int, day: Int, hours: Int, minutes: Int, seconds: Int)
        switch node.identifier {
        case .utcTime:
            let time = try UTCTime(derEncoded: node)
            fields = (time.year, time.month, time.day, time.hours, time.minutes, time.seconds)
        case .generalizedTime:
            let time = try GeneralizedTime(derEncoded: node)
            fields = (time.year, time.month, time.day, time.hours, time.minutes, time.seconds)
        default:
            throw CertificateSummaryError(reason: "validity time is neither UTCTime nor GeneralizedTime")
        }
        let days = CivilDate.daysSinceEpoch(year: fields.year, month: fields.month, day: fields.day)
        let seconds = days * 86_400 + fields.hours * 3_600 + fields.minutes * 60 + fields.seconds
        return Date(timeIntervalSince1970: Double(seconds))
    }
}

public struct CertificateSummaryError: Error, Equatable, CustomStringConvertible, Sendable {
    public let reason: String
    public var description: String { reason }
}
