/// One certificate of a GHCB certificate table.
public struct SNPCertificateEntry: Equatable, Sendable {
    public let guid: SNPCertificateGUID
    /// The certificate bytes (DER for the AMD keys), kept exactly as given.
    public let data: [UInt8]
    /// Where the certificate starts in the blob it was read from or written to.
    public let offset: Int

    public init(guid: SNPCertificateGUID, data: [UInt8], offset: Int = 0) {
        self.guid = guid
        self.data = data
        self.offset = offset
    }
}

/// The certificate blob an SNP guest receives with an extended attestation
/// request (GHCB specification, "Certificate table"): 24-byte entries
/// `guid[16]; u32 offset; u32 length` with offsets from the start of the blob,
/// an all-zero entry ending the table, and the certificates after it.
public struct SNPCertificateTable: Equatable, Sendable {
    /// Size of one table entry in bytes.
    public static let entrySize = 24

    public private(set) var entries: [SNPCertificateEntry]

    /// A table of certificates in the given order; GUIDs must be distinct, not
    /// zero, and every certificate non-empty.
    public init(_ certificates: [(guid: SNPCertificateGUID, data: [UInt8])]) throws {
        var seen: [SNPCertificateGUID: Int] = [:]
        var offset = (certificates.count + 1) * Self.entrySize
        var entries: [SNPCertificateEntry] = []
        for (index, certificate) in certificates.enumerated() {
            if certificate.guid == .zero { throw SNPCertificateTableError.zeroGUID(entry: index) }
            if let first = seen[certificate.guid] {
                throw SNPCertificateTableError.duplicateGUID(certificate.guid, first: first, second: index)
            }
            if certificate.data.isEmpty { throw SNPCertificateTableError.emptyCertificate(entry: index, certificate.guid) }
            guard certificate.data.count <= Int(UInt32.max), offset <= Int(UInt32.max) - certificate.data.count else {
                throw SNPCertificateTableError.tooLarge(entry: index)
            }
            seen[certificate.guid] = index
            entries.append(SNPCertificateEntry(guid: certificate.guid, data: certificate.data, offset: offset))
            offset += certificate.data.count
        }
        self.entries = entries
    }

    /// The entry for a GUID, if present.
    public func entry(for guid: SNPCertificateGUID) -> SNPCertificateEntry? {
        entries.first { $0.guid == guid }
    }

    /// Bytes of the table part (entries and terminator).
    public var tableSize: Int { (entries.count + 1) * Self.entrySize }

    /// The blob: the table, the terminator, then each certificate in order.
    public func encoded() -> [UInt8] {
        var blob: [UInt8] = []
        blob.reserveCapacity(tableSize + entries.reduce(0) { $0 + $1.data.count })
        var offset = tableSize
        for entry in entries {
            blob += entry.guid.bytes
            appendLittleEndian(UInt32(offset), to: &blob)
            appendLittleEndian(UInt32(entry.data.count), to: &blob)
            offset += entry.data.count
        }
        blob += [UInt8](repeating: 0, count: Self.entrySize)
        for entry in entries { blob += entry.data }
        return blob
    }

    /// Parses a blob, refusing anything a guest could misread: a table without
    /// its all-zero terminator, an entry with a zero GUID, a repeated GUID, an
    /// empty certificate, a certificate that starts inside the table or ends past
    /// the blob, and certificates that overlap. Bytes after the last certificate
    /// (padding to a page) are allowed.
    public init<Bytes: RandomAccessCollection>(parsing blob: Bytes) throws where Bytes.Element == UInt8, Bytes.Index == Int {
        let size = blob.count
        let base = blob.startIndex
        func word(_ at: Int) -> UInt32 {
            var value: UInt32 = 0
            for index in 0..<4 { value |= UInt32(blob[base + at + index]) << (8 * UInt32(index)) }
            return value
        }

        var raw: [(guid: SNPCertificateGUID, offset: Int, length: Int)] = []
        var position = 0
        while true {
            guard size - position >= Self.entrySize else {
                throw SNPCertificateTableError.missingTerminator(entriesRead: raw.count, blobSize: size)
            }
            let guid = SNPCertificateGUID(bytes: blob[(base + position)..<(base + position + 16)])!
            let offset = Int(word(position + 16))
            let length = Int(word(position + 20))
            position += Self.entrySize
            if guid == .zero {
                if offset == 0 && length == 0 { break }
                throw SNPCertificateTableError.zeroGUID(entry: raw.count)
            }
            raw.append((guid, offset, length))
        }
        let tableEnd = position

        var seen: [SNPCertificateGUID: Int] = [:]
        for (index, entry) in raw.enumerated() {
            if let first = seen[entry.guid] {
                throw SNPCertificateTableError.duplicateGUID(entry.guid, first: first, second: index)
            }
            seen[entry.guid] = index
            if entry.length == 0 { throw SNPCertificateTableError.emptyCertificate(entry: index, entry.guid) }
            if entry.offset < tableEnd {
                throw SNPCertificateTableError.insideTable(entry: index, offset: entry.offset, tableEnd: tableEnd)
            }
            if entry.offset + entry.length > size {  // both below 2^32: no overflow in Int
                throw SNPCertificateTableError.pastEnd(entry: index, offset: entry.offset, length: entry.length, blobSize: size)
            }
        }
        let byStart = raw.enumerated().sorted { $0.element.offset < $1.element.offset }
        for (previous, next) in zip(byStart, byStart.dropFirst())
        where previous.element.offset + previous.element.length > next.element.offset {
            throw SNPCertificateTableError.overlap(
                first: min(previous.offset, next.offset), second: max(previous.offset, next.offset))
        }

        entries = raw.map {
            SNPCertificateEntry(guid: $0.guid, data: Array(blob[(base + $0.offset)..<(base + $0.offset + $0.length)]), offset: $0.offset)
        }
    }
}

/// Why a certificate table was refused. Entry numbers count from 0 in table order.
public enum SNPCertificateTableError: Error, Equatable, Sendable, CustomStringConvertible {
    case missingTerminator(entriesRead: Int, blobSize: Int)
    case zeroGUID(entry: Int)
    case duplicateGUID(SNPCertificateGUID, first: Int, second: Int)
    case emptyCertificate(entry: Int, SNPCertificateGUID)
    case insideTable(entry: Int, offset: Int, tableEnd: Int)
    case pastEnd(entry: Int, offset: Int, length: Int, blobSize: Int)
    case overlap(first: Int, second: Int)
    case tooLarge(entry: Int)

    public var description: String {
        switch self {
        case .missingTerminator(let count, let size):
            return "the table has no all-zero terminating entry: \(count) entries read, then the \(size)-byte blob ends"
        case .zeroGUID(let entry):
            return "entry \(entry) has the zero GUID but a non-zero offset or length (only the terminator may be zero)"
        case .duplicateGUID(let guid, let first, let second):
            return "entries \(first) and \(second) both carry GUID \(guid)"
        case .emptyCertificate(let entry, let guid):
            return "entry \(entry) (\(guid)) has length 0"
        case .insideTable(let entry, let offset, let tableEnd):
            return "entry \(entry) starts at offset \(offset), inside the table (which ends at \(tableEnd))"
        case .pastEnd(let entry, let offset, let length, let size):
            return "entry \(entry) covers bytes \(offset)..<\(offset + length), past the end of the \(size)-byte blob"
        case .overlap(let first, let second):
            return "the certificates of entries \(first) and \(second) overlap"
        case .tooLarge(let entry):
            return "certificate \(entry) does not fit the 32-bit offsets of a certificate table"
        }
    }
}

@inline(__always)
private func appendLittleEndian(_ value: UInt32, to bytes: inout [UInt8]) {
    for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(index)))) }
}
