import Confidential

/// Certificate blobs that carry their version in every byte pattern and in their
/// sizes, so that a blob assembled from two versions is always detected.
public enum VersionedCertificates {
    /// The complete blob of `version`.
    public static func blob(version: UInt32) -> [UInt8] {
        func filled(_ count: Int, salt: UInt32) -> [UInt8] {
            let word = version ^ salt
            return (0..<count).map { UInt8(truncatingIfNeeded: word >> (8 * UInt32($0 % 4))) }
        }
        let sizes = (2000 + Int(version % 7) * 300, 1500 + Int(version % 3) * 200, 1000 + Int(version % 5) * 100)
        return try! SNPCertificateTable([
            (.vcek, filled(sizes.0, salt: 0)), (.ask, filled(sizes.1, salt: 0x5555_5555)), (.ark, filled(sizes.2, salt: 0xAAAA_AAAA)),
        ]).encoded()
    }

    /// The largest blob any version produces, in bytes.
    public static let maximumSize = 96 + 2000 + 6 * 300 + 1500 + 2 * 200 + 1000 + 4 * 100

    /// Checks a guest buffer: it must start with one complete version's blob and
    /// be zero after it. Returns that version, or nil for a mix or a torn blob.
    public static func version(in buffer: [UInt8]) -> UInt32? {
        guard buffer.count >= 96 + 4,
              let table = try? SNPCertificateTable(parsing: buffer),
              let vcek = table.entry(for: .vcek), vcek.data.count >= 4 else { return nil }
        let version = vcek.data.prefix(4).enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
        let expected = blob(version: version)
        guard buffer.count >= expected.count, Array(buffer.prefix(expected.count)) == expected,
              buffer.dropFirst(expected.count).allSatisfy({ $0 == 0 }) else { return nil }
        return version
    }
}
