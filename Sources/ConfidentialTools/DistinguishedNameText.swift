import SwiftASN1

/// An X.509 Name as text in the RFC 4514 style: relative distinguished names
/// from the last to the first, joined by ",", multi-valued ones joined by "+",
/// known attribute types by their short names (CN, O, ...), special
/// characters escaped with a backslash, and values that are not strings as
/// "#" followed by the hex of their DER.
enum DistinguishedNameText {
    /// Name ::= SEQUENCE OF RelativeDistinguishedName,
    /// RelativeDistinguishedName ::= SET OF AttributeTypeAndValue,
    /// AttributeTypeAndValue ::= SEQUENCE { type OBJECT IDENTIFIER, value ANY }.
    static func format(_ name: ASN1Node) throws -> String {
        var relativeNames: [String] = []
        try DER.sequence(name, identifier: .sequence) { rdns in
            while let rdn = rdns.next() {
                guard rdn.identifier == .set, case .constructed(let attributes) = rdn.content else {
                    throw CertificateSummaryError(reason: "a relative distinguished name is not a SET")
                }
                var parts: [String] = []
                for attribute in attributes {
                    parts.append(try DER.sequence(attribute, identifier: .sequence) { fields in
                        guard let typeNode = fields.next(), let valueNode = fields.next(), fields.next() == nil else {
                            throw CertificateSummaryError(reason: "an attribute needs a type and a value")
                        }
                        let type = try ASN1ObjectIdentifier(derEncoded: typeNode)
                        return "\(shortName(type))=\(text(valueNode))"
                    })
                }
                guard !parts.isEmpty else { throw CertificateSummaryError(reason: "an empty relative distinguished name") }
                relativeNames.append(parts.joined(separator: "+"))
            }
        }
        return relativeNames.reversed().joined(separator: ",")
    }

    /// RFC 4514 section 3 short names, plus emailAddress (PKCS #9) as "E".
    static func shortName(_ type: ASN1ObjectIdentifier) -> String {
        switch type.description {
        case "2.5.4.3": return "CN"
        case "2.5.4.6": return "C"
        case "2.5.4.7": return "L"
        case "2.5.4.8": return "ST"
        case "2.5.4.9": return "STREET"
        case "2.5.4.10": return "O"
        case "2.5.4.11": return "OU"
        case "0.9.2342.19200300.100.1.1": return "UID"
        case "0.9.2342.19200300.100.1.25": return "DC"
        case "1.2.840.113549.1.9.1": return "E"
        case let dotted: return dotted
        }
    }

    /// The value of an attribute: directory strings decoded and escaped, anything else as #hex.
    static func text(_ value: ASN1Node) -> String {
        guard case .primitive(let bytes) = value.content, let decoded = decode(bytes, as: value.identifier) else {
            return "#" + value.encodedBytes.map { hexDigits($0) }.joined()
        }
        return escape(decoded)
    }

    private static func decode(_ bytes: ArraySlice<UInt8>, as identifier: ASN1Identifier) -> String? {
        switch identifier {
        case .utf8String, .printableString, .ia5String, .numericString, .visibleString:
            return String(validating: bytes, as: UTF8.self)
        case .teletexString:  // in practice Latin-1
            return String(String.UnicodeScalarView(bytes.map { Unicode.Scalar($0) }))
        case .bmpString:  // UTF-16, big-endian
            guard bytes.count % 2 == 0 else { return nil }
            let units = stride(from: bytes.startIndex, to: bytes.endIndex, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
            return String(validating: units, as: UTF16.self)
        case .universalString:  // UTF-32, big-endian
            guard bytes.count % 4 == 0 else { return nil }
            var scalars = String.UnicodeScalarView()
            for start in stride(from: bytes.startIndex, to: bytes.endIndex, by: 4) {
                let code = bytes[start..<start + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                guard let scalar = Unicode.Scalar(code) else { return nil }
                scalars.append(scalar)
            }
            return String(scalars)
        default:
            return nil
        }
    }

    /// RFC 4514 section 2.4: backslash before , + " \ < > ; anywhere, before a
    /// leading space or #, and before a trailing space.
    static func escape(_ value: String) -> String {
        let characters = Array(value)
        var result = ""
        for (index, character) in characters.enumerated() {
            let special = ",+\"\\<>;".contains(character)
            let leading = index == 0 && (character == " " || character == "#")
            let trailing = index == characters.count - 1 && character == " "
            if special || leading || trailing { result.append("\\") }
            result.append(character)
        }
        return result
    }

    private static func hexDigits(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }
}
