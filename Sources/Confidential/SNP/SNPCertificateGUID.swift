/// The GUID naming one certificate in a GHCB certificate table, stored as its
/// 16 bytes in RFC 4122 order (the order the text form reads in).
public struct SNPCertificateGUID: Hashable, Sendable, CustomStringConvertible {
    /// The 16 bytes as they appear in a table entry.
    public let bytes: [UInt8]

    /// A GUID from its 16 table bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        self.bytes = Array(bytes)
    }

    /// A GUID from `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (case-insensitive), or
    /// from a known name (`vcek`, `vlek`, `ask`, `ark`).
    public init?(_ text: String) {
        // Names resolve through their text form (not through `known`, whose own
        // initialisation runs this initialiser).
        let text = Self.knownText[text.uppercased()] ?? text
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12] else { return nil }
        var result: [UInt8] = []
        var digits = groups.joined().makeIterator()
        while let high = digits.next(), let low = digits.next() {
            guard let byte = UInt8(String([high, low]), radix: 16) else { return nil }
            result.append(byte)
        }
        guard result.count == 16 else { return nil }
        bytes = result
    }

    /// The all-zero GUID, which only the terminating entry carries.
    public static let zero = SNPCertificateGUID(bytes: [UInt8](repeating: 0, count: 16))!

    private static let knownText = [
        "VCEK": "63da758d-e664-4564-adc5-f4b93be8accd", "VLEK": "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
        "ASK": "4ab7b379-bbac-4fe4-a02f-05aef327c782", "ARK": "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    ]

    /// VCEK: the versioned chip endorsement key certificate.
    public static let vcek = SNPCertificateGUID("VCEK")!
    /// VLEK: the versioned loaded endorsement key certificate.
    public static let vlek = SNPCertificateGUID("VLEK")!
    /// ASK: the AMD SEV signing key certificate.
    public static let ask = SNPCertificateGUID("ASK")!
    /// ARK: the AMD root key certificate.
    public static let ark = SNPCertificateGUID("ARK")!

    /// The GUIDs the GHCB specification names.
    public static let known: [(name: String, guid: SNPCertificateGUID)] = [
        ("VCEK", .vcek), ("VLEK", .vlek), ("ASK", .ask), ("ARK", .ark),
    ]

    /// The specification's name for this GUID, or nil for others.
    public var name: String? { Self.known.first { $0.guid == self }?.name }

    /// The text form, lower case.
    public var uuidString: String {
        let hex = bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
    }

    /// `VCEK (63da758d-...)` for known GUIDs, the text form for others.
    public var description: String { name.map { "\($0) (\(uuidString))" } ?? uuidString }
}
