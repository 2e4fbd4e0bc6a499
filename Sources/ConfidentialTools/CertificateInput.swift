import FoundationEssentials
import SwiftASN1

/// Reads one certificate for a certificate table: DER as it is, or a PEM file
/// holding exactly one CERTIFICATE block, converted to DER (the form SNP guests
/// expect in the table).
public enum CertificateInput {
    public struct Loaded: Equatable, Sendable {
        public let bytes: [UInt8]
        public let convertedFromPEM: Bool

        public init(bytes: [UInt8], convertedFromPEM: Bool) {
            self.bytes = bytes
            self.convertedFromPEM = convertedFromPEM
        }
    }

    public static func load(path: String) throws -> Loaded {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CertificateInputError.unreadable(path)
        }
        let bytes = [UInt8](data)
        guard !bytes.isEmpty else { throw CertificateInputError.empty(path) }
        let prefix = String(decoding: bytes.prefix(64), as: UTF8.self)
        guard prefix.drop(while: \.isWhitespace).hasPrefix("-----BEGIN") else {
            return Loaded(bytes: bytes, convertedFromPEM: false)
        }
        let documents: [PEMDocument]
        do {
            documents = try PEMDocument.parseMultiple(pemString: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw CertificateInputError.badPEM(path, "\(error)")
        }
        guard documents.count == 1 else { throw CertificateInputError.pemCount(path, documents.count) }
        guard documents[0].discriminator == "CERTIFICATE" else {
            throw CertificateInputError.pemType(path, documents[0].discriminator)
        }
        return Loaded(bytes: documents[0].derBytes, convertedFromPEM: true)
    }
}

public enum CertificateInputError: Error, Equatable, CustomStringConvertible {
    case unreadable(String)
    case empty(String)
    case badPEM(String, String)
    case pemCount(String, Int)
    case pemType(String, String)

    public var description: String {
        switch self {
        case .unreadable(let path): return "cannot read \(path)"
        case .empty(let path): return "\(path) is empty"
        case .badPEM(let path, let reason): return "\(path) looks like PEM but does not parse: \(reason)"
        case .pemCount(let path, let count):
            return "\(path) holds \(count) PEM blocks; give one certificate per file (split a chain such as cert_chain.pem into ASK and ARK)"
        case .pemType(let path, let type): return "\(path) holds a PEM \(type), not a CERTIFICATE"
        }
    }
}
