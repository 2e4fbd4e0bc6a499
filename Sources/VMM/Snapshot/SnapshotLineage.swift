import Glibc
import HostSystem

/// Which snapshot a memory file continues, recorded in the state file (its
/// MEMO section), so that `kestrel snapshot merge` can refuse a diff on the
/// wrong base and a diff whose memory file is not what its snapshot wrote.
///
/// Every snapshot gets a random id. A Diff names the snapshot before it on
/// the same machine (or the one the machine was restored from) as its
/// parent: it holds the pages changed since then, and applies on top of that
/// snapshot's memory and nothing else. A Diff also records its memory file's
/// data (`SnapshotMemoryFile.dataDigest`): the bytes in its data extents and
/// a CRC-32 over each extent's offset, length and bytes, which a filled hole,
/// a punched page, a changed byte or a cut-short file all change.
public struct SnapshotLineage: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        /// All of RAM.
        case full = 0
        /// The pages changed since `parent`; every other page is a hole.
        case diff = 1
        /// A Diff written over an earlier memory file of the same size, which
        /// it landed on (as Firecracker does): whole, if that file was the parent's.
        case landed = 2
    }

    public var kind: Kind
    /// 16 random bytes.
    public var id: [UInt8]
    /// The id of the snapshot whose memory this one continues (Diffs).
    public var parent: [UInt8]?
    /// For a Diff: bytes in its memory file's data extents, and their digest.
    public var dataBytes: UInt64
    public var dataDigest: UInt32

    public init(kind: Kind, id: [UInt8], parent: [UInt8]? = nil, dataBytes: UInt64 = 0, dataDigest: UInt32 = 0) {
        self.kind = kind
        self.id = id
        self.parent = parent
        self.dataBytes = dataBytes
        self.dataDigest = dataDigest
    }

    /// What a state file written before lineage was recorded would say: a
    /// Full snapshot with a zero id (tests build snapshots without one).
    public static let unrecorded = SnapshotLineage(kind: .full, id: [UInt8](repeating: 0, count: 16))

    /// A new random id.
    public static func newID() -> [UInt8] {
        var id = [UInt8](repeating: 0, count: 16)
        _ = id.withUnsafeMutableBytes { HostRandom.fill($0) }
        return id
    }

    /// `SnapshotMemoryFile.dataDigest` of the memory file at `path`, all of it:
    /// what a Diff written there records, and what the checked merge compares
    /// (`what` names the file in errors; the path by default).
    public static func dataDigest(ofFile path: String, what: String? = nil) throws -> (bytes: UInt64, digest: UInt32) {
        let what = what ?? path
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SnapshotError("cannot open \(what): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        return try SnapshotMemoryFile.dataDigest(of: fd, size: lseek(fd, 0, SEEK_END), what: what)
    }

    /// The first 8 bytes of an id, in hex, for messages.
    public static func text(_ id: [UInt8]?) -> String {
        guard let id else { return "none" }
        return id.prefix(8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension SnapshotMemoryFile {
    /// The bytes in `fd`'s data extents within `[0, size)` and a CRC-32 over
    /// each extent's offset and length (little-endian u64s) and its bytes,
    /// in file order: what a Diff's lineage records and a merge checks.
    public static func dataDigest(of fd: Int32, size: off_t, what: String) throws -> (bytes: UInt64, digest: UInt32) {
        var crc: UInt32 = 0xFFFF_FFFF
        var total: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for extent in try dataExtents(of: fd, in: 0..<size, what: what) {
            var header = [UInt64(extent.lowerBound).littleEndian, UInt64(extent.count).littleEndian]
            // Sound: the two integers' 16 bytes are read in place.
            crc = header.withUnsafeMutableBytes { CRC32.continuing(crc, UnsafeRawBufferPointer($0)) }
            var done = extent.lowerBound
            while done < extent.upperBound {
                let count = min(buffer.count, Int(extent.upperBound - done))
                // Sound: at most `count` bytes, no more than the buffer holds, are read into it.
                let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, done) }
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else { throw SnapshotError("cannot read \(what): \(got == 0 ? "it ends early" : String(cString: strerror(errno)))") }
                crc = buffer.withUnsafeBytes { CRC32.continuing(crc, UnsafeRawBufferPointer(rebasing: $0.prefix(got))) }
                done += off_t(got)
                total += UInt64(got)
            }
        }
        return (total, ~crc)
    }
}
