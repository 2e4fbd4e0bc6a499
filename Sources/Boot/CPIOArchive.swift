/// A writer of "newc" cpio archives (the initramfs format): a 110-byte ASCII
/// header per entry ("070701" and 13 eight-digit hex fields), the NUL-terminated
/// name, padding to 4 bytes, the data, padding to 4 bytes; ended by TRAILER!!!.
public struct CPIOArchive: Sendable {
    public enum Kind: Sendable, Equatable {
        case directory
        case file([UInt8])
        case symlink(target: String)
        case characterDevice(major: UInt32, minor: UInt32)

        var typeBits: UInt32 {
            switch self {
            case .directory: return 0o040000
            case .file: return 0o100000
            case .symlink: return 0o120000
            case .characterDevice: return 0o020000
            }
        }
    }

    public private(set) var bytes: [UInt8] = []
    private var inode: UInt32 = 1
    private var names = Set<String>()

    public init() {}

    /// Adds an entry. `path` is relative (no leading "/"); permissions are the low 12 bits of `mode`.
    public mutating func add(_ path: String, _ kind: Kind, mode: UInt32, modificationTime: UInt32 = 0) throws {
        let name = try Self.entryName(path)
        guard names.insert(name).inserted else { throw CPIOError("\(name) is in the archive twice") }
        let data: [UInt8]
        var major: UInt32 = 0, minor: UInt32 = 0
        switch kind {
        case .file(let contents): data = contents
        case .symlink(let target): data = Array(target.utf8)
        case .characterDevice(let deviceMajor, let deviceMinor): data = []; major = deviceMajor; minor = deviceMinor
        case .directory: data = []
        }
        guard data.count <= Int(UInt32.max) else { throw CPIOError("\(name) is larger than 4 GiB") }
        append(name: name, mode: kind.typeBits | (mode & 0o7777), links: kind == .directory ? 2 : 1,
               time: modificationTime, data: data, rdevMajor: major, rdevMinor: minor)
    }

    /// Adds an entry after any of its parent directories that are not in the
    /// archive yet (as mode 0755 directories).
    public mutating func addWithParents(_ path: String, _ kind: Kind, mode: UInt32, modificationTime: UInt32 = 0) throws {
        let name = try Self.entryName(path)
        var parent = ""
        for component in name.split(separator: "/").dropLast() {
            parent += parent.isEmpty ? String(component) : "/" + component
            if !names.contains(parent) { try add(parent, .directory, mode: 0o755) }
        }
        if kind == .directory && names.contains(name) { return }
        try add(name, kind, mode: mode, modificationTime: modificationTime)
    }

    /// `path` without a leading "/"; refused when empty or when it climbs out with "..".
    private static func entryName(_ path: String) throws -> String {
        let name = path.hasPrefix("/") ? String(path.dropFirst()) : path
        guard !name.isEmpty, !name.split(separator: "/").contains("..") else { throw CPIOError("invalid archive path \"\(path)\"") }
        return name
    }

    /// The archive with its trailer.
    public func finished() -> [UInt8] {
        var copy = self
        copy.append(name: "TRAILER!!!", mode: 0, links: 1, time: 0, data: [], rdevMajor: 0, rdevMinor: 0, isTrailer: true)
        return copy.bytes
    }

    private mutating func append(name: String, mode: UInt32, links: UInt32, time: UInt32, data: [UInt8],
                                 rdevMajor: UInt32, rdevMinor: UInt32, isTrailer: Bool = false) {
        let nameBytes = Array(name.utf8) + [0]
        let fields: [UInt32] = [
            isTrailer ? 0 : inode, mode, 0, 0, links, time, UInt32(data.count), 0, 0, rdevMajor, rdevMinor,
            UInt32(nameBytes.count), 0,
        ]
        if !isTrailer { inode += 1 }
        bytes += Array("070701".utf8)
        for field in fields {
            let digits = String(field, radix: 16, uppercase: true)
            bytes += Array((String(repeating: "0", count: 8 - digits.count) + digits).utf8)
        }
        bytes += nameBytes
        pad()
        bytes += data
        pad()
    }

    private mutating func pad() {
        while bytes.count % 4 != 0 { bytes.append(0) }
    }
}

public struct CPIOError: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
