import Glibc

/// An error of the lab: a message for the user, naming what failed.
public struct LabError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A directory under /tmp (mkdtemp) removed with its contents when released.
public final class TemporaryDirectory {
    public let path: String

    public init(prefix: String) throws {
        var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw LabError("cannot create a temporary directory: \(String(cString: strerror(errno)))")
        }
        path = String(cString: result)
    }

    deinit { removeTree(path) }
}

/// Reads a whole file.
public func readBytes(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw LabError("cannot read \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count >= 0 else { throw LabError("cannot read \(path): \(String(cString: strerror(errno)))") }
        if count == 0 { return bytes }
        bytes += chunk[0..<count]
    }
}

/// Reads a whole file as UTF-8 text.
public func readText(_ path: String) throws -> String {
    String(decoding: try readBytes(path), as: UTF8.self)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a
/// reader (or a cache lookup after an interrupted run) never sees half a file.
public func writeFileAtomically(_ bytes: [UInt8], to path: String, mode: mode_t = 0o644) throws {
    let temporary = path + ".partial"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw LabError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw LabError("cannot write \(temporary): \(reason)")
        }
        offset += written
    }
    guard fsync(fd) == 0, close(fd) == 0 else { throw LabError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
    guard rename(temporary, path) == 0 else { throw LabError("cannot rename \(temporary): \(String(cString: strerror(errno)))") }
}

/// Creates `path` and its parents (mkdir -p).
public func makeDirectories(_ path: String) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        current += "/" + component
        if mkdir(current, 0o755) != 0 && errno != EEXIST {
            throw LabError("cannot create \(current): \(String(cString: strerror(errno)))")
        }
    }
}

/// Whether `path` exists (following symlinks).
public func fileExists(_ path: String) -> Bool {
    var status = stat()
    return stat(path, &status) == 0
}

/// The size of the file at `path` in bytes, or -1 when it cannot be read.
public func fileSize(_ path: String) -> Int {
    var status = stat()
    return stat(path, &status) == 0 ? Int(status.st_size) : -1
}

/// Whether `path` is a directory.
public func isDirectory(_ path: String) -> Bool {
    var status = stat()
    return stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFDIR
}

/// The names in a directory, without "." and "..".
public func directoryEntries(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}

/// Every regular file under `root`, as paths relative to it (no symlinks followed).
public func regularFiles(under root: String) -> [String] {
    var result: [String] = []
    func walk(_ relative: String) {
        let full = relative.isEmpty ? root : root + "/" + relative
        for name in directoryEntries(full) {
            let child = relative.isEmpty ? name : relative + "/" + name
            var status = stat()
            guard lstat(root + "/" + child, &status) == 0 else { continue }
            switch status.st_mode & S_IFMT {
            case S_IFDIR: walk(child)
            case S_IFREG: result.append(child)
            default: break
            }
        }
    }
    walk("")
    return result
}

/// Removes a file or a directory tree (rm -rf), ignoring what does not exist.
public func removeTree(_ path: String) {
    var status = stat()
    guard lstat(path, &status) == 0 else { return }
    if status.st_mode & S_IFMT == S_IFDIR {
        for name in directoryEntries(path) { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}

/// The modification time of `path` in seconds since the epoch, or nil.
public func modificationTime(_ path: String) -> Int? {
    var status = stat()
    return stat(path, &status) == 0 ? Int(status.st_mtim.tv_sec) : nil
}

/// Seconds since the epoch.
public func currentTime() -> Int { Int(time(nil)) }
