/// Why a snapshot cannot be read or restored. Every refusal happens before
/// any vCPU of the restored machine runs.
public struct SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Little-endian fields appended to a byte array: the snapshot state file's
/// encoding.
struct SnapshotWriter {
    private(set) var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func bool(_ value: Bool) { u8(value ? 1 : 0) }
    /// A length (u32) and the bytes.
    mutating func blob(_ value: [UInt8]) {
        u32(UInt32(value.count))
        bytes += value
    }
    mutating func string(_ value: String) { blob(Array(value.utf8)) }
    /// A presence byte, then the value when there is one.
    mutating func optional<T>(_ value: T?, _ write: (inout SnapshotWriter, T) -> Void) {
        bool(value != nil)
        if let value { write(&self, value) }
    }
    mutating func raw(_ value: [UInt8]) { bytes += value }
}

/// Reads what `SnapshotWriter` wrote, from untrusted bytes: every read is
/// checked against what is left, and a count is believed only when that many
/// items of at least `minimumSize` bytes could follow, so no input makes it
/// allocate more than the input's own size or read past its end.
struct SnapshotReader {
    private let bytes: [UInt8]
    private(set) var offset: Int
    private let end: Int
    /// Names the section being read, for errors.
    let context: String

    init(_ bytes: [UInt8], from start: Int = 0, to end: Int? = nil, context: String) {
        self.bytes = bytes
        offset = start
        self.end = min(end ?? bytes.count, bytes.count)
        self.context = context
    }

    var remaining: Int { end - offset }
    var isAtEnd: Bool { offset == end }

    func truncated(_ what: String) -> SnapshotError {
        SnapshotError("the snapshot is truncated or corrupt: \(context) ends inside \(what)")
    }

    mutating func take(_ count: Int, _ what: String) throws(SnapshotError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else { throw truncated(what) }
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }

    private mutating func integer<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws(SnapshotError) -> T {
        let slice = try take(MemoryLayout<T>.size, what)
        var value: T = 0
        for (shift, byte) in slice.enumerated() { value |= T(byte) << (8 * shift) }
        return value
    }

    mutating func u8(_ what: String) throws(SnapshotError) -> UInt8 { try integer(UInt8.self, what) }
    mutating func u16(_ what: String) throws(SnapshotError) -> UInt16 { try integer(UInt16.self, what) }
    mutating func u32(_ what: String) throws(SnapshotError) -> UInt32 { try integer(UInt32.self, what) }
    mutating func u64(_ what: String) throws(SnapshotError) -> UInt64 { try integer(UInt64.self, what) }

    mutating func bool(_ what: String) throws(SnapshotError) -> Bool {
        switch try u8(what) {
        case 0: return false
        case 1: return true
        case let other: throw SnapshotError("the snapshot is corrupt: \(context): \(what) is \(other), neither 0 nor 1")
        }
    }

    mutating func blob(_ what: String) throws(SnapshotError) -> [UInt8] {
        let count = try u32("the length of \(what)")
        return Array(try take(Int(count), what))
    }

    mutating func string(_ what: String) throws(SnapshotError) -> String {
        let bytes = try blob(what)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw SnapshotError("the snapshot is corrupt: \(context): \(what) is not UTF-8")
        }
        return text
    }

    /// A count of items that each take at least `minimumSize` bytes.
    mutating func count(_ what: String, minimumSize: Int) throws(SnapshotError) -> Int {
        let count = Int(try u32("the number of \(what)"))
        guard count <= remaining / max(minimumSize, 1) else { throw truncated("\(count) \(what)") }
        return count
    }

    mutating func optional<T>(_ what: String, _ read: (inout SnapshotReader) throws(SnapshotError) -> T) throws(SnapshotError) -> T? {
        try bool("whether there is \(what)") ? try read(&self) : nil
    }

    /// Refuses bytes left over at the end of a section.
    func requireEnd() throws(SnapshotError) {
        guard isAtEnd else { throw SnapshotError("the snapshot is corrupt: \(context) has \(remaining) bytes past its end") }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and Firecracker's snapshot files
/// compute it).
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        ~bytes.withUnsafeBytes { continuing(0xFFFF_FFFF, $0) }
    }

    /// Feeds `bytes` to a running CRC register (start with 0xFFFFFFFF; the
    /// checksum is the complement of the last value).
    public static func continuing(_ register: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc = register
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc
    }
}
