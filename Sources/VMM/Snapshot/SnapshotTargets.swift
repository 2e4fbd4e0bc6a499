import Glibc
import HostSystem

/// The two paths a snapshot is written to, checked before a byte is written:
/// each may be a new name or an existing regular file, and neither may be a
/// file the running machine or its API uses (a drive image, the kernel, the
/// vsock socket, the API socket). A snapshot over the API socket's path would
/// replace the socket, and the paused machine could never be resumed.
enum SnapshotTargets {
    /// Throws a `SnapshotError` naming the first target that cannot be used.
    /// `served` are the paths in use; they are compared with each target by
    /// device and inode when both exist, and by absolute path otherwise.
    static func check(statePath: String, memoryPath: String, served: [(what: String, path: String)]) throws {
        let state = FileIdentity(statePath), memory = FileIdentity(memoryPath)
        try check([("snapshot_path", statePath, state), ("mem_file_path", memoryPath, memory)], served: served)
        if state.isSame(as: memory) {
            throw SnapshotError("snapshot_path and mem_file_path name the same file")
        }
    }

    /// The same for a memory dump's one file.
    static func check(memoryPath: String, served: [(what: String, path: String)]) throws {
        try check([("mem_file_path", memoryPath, FileIdentity(memoryPath))], served: served)
    }

    private static func check(_ targets: [(String, String, FileIdentity)], served: [(what: String, path: String)]) throws {
        let inUse = served.map { (what: $0.what, path: $0.path, identity: FileIdentity($0.path)) }
        for (field, path, target) in targets {
            if let kind = target.kind, kind != .regular {
                throw SnapshotError("\(field) \(path) is \(kind); it is written to a new name or over a regular file")
            }
            for file in inUse where target.isSame(as: file.identity) {
                throw SnapshotError("\(field) \(path) is \(file.what) this microVM uses (\(file.path)); choose another path")
            }
        }
    }
}

/// A path as the file system sees it: its kind, device and inode when it
/// exists (stat(2), following links), and its absolute form.
struct FileIdentity {
    let absolutePath: String
    let kind: HostFile.Kind?
    let device: UInt64
    let inode: UInt64

    init(_ path: String) {
        absolutePath = Self.absolute(path)
        var status = stat()
        if stat(path, &status) == 0 {
            kind = HostFile.Kind(mode: status.st_mode)
            device = UInt64(status.st_dev)
            inode = UInt64(status.st_ino)
        } else {
            kind = nil
            device = 0
            inode = 0
        }
    }

    /// Both exist and are one file, or neither exists under one absolute path.
    func isSame(as other: FileIdentity) -> Bool {
        if kind != nil && other.kind != nil { return device == other.device && inode == other.inode }
        return absolutePath == other.absolutePath
    }

    /// `path` made absolute against the working directory, with `.`, `..`
    /// and repeated slashes removed (textually; links are not resolved).
    static func absolute(_ path: String) -> String {
        var base = ""
        if !path.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            // Sound: getcwd writes at most buffer.count bytes, NUL included.
            base = buffer.withUnsafeMutableBufferPointer { getcwd($0.baseAddress, $0.count) != nil ? String(cString: $0.baseAddress!) : "" }
        }
        var parts: [Substring] = []
        for part in (base + "/" + path).split(separator: "/") {
            switch part {
            case ".": continue
            case "..": _ = parts.popLast()
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }
}
