import Glibc

/// The `kestrel` executable that goes into an L1: it must be static (the L1
/// has no C library), and it is stripped once and cached to keep the
/// initramfs small.
public enum LabExecutable {
    /// The `kestrel` executable that `swift build` put beside the running
    /// program (a test bundle), found by walking up from /proc/self/exe to
    /// `.build`; `KESTREL_LAB_KESTREL` overrides it. nil when there is none.
    public static func builtBesideThisProcess() -> String? {
        if let path = getenv("KESTREL_LAB_KESTREL").map({ String(cString: $0) }) { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard readlink("/proc/self/exe", &buffer, buffer.count - 1) > 0 else { return nil }
        var directory = String(cString: buffer)
        while !directory.isEmpty {
            directory = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
            if fileExists(directory + "/kestrel") && !isDirectory(directory + "/kestrel") { return directory + "/kestrel" }
            if directory.hasSuffix("/.build") { break }
        }
        return nil
    }

    /// Whether an ELF64 executable has no PT_INTERP program header.
    public static func isStatic(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 64, bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]), bytes[4] == 2 else { return false }
        func integer(_ offset: Int, _ size: Int) -> Int {
            (0..<size).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) }
        }
        let table = integer(0x20, 8), entrySize = integer(0x36, 2), count = integer(0x38, 2)
        guard entrySize >= 56, table <= bytes.count, count <= (bytes.count - table) / entrySize else { return false }
        return !(0..<count).contains { integer(table + $0 * entrySize, 4) == 3 }  // PT_INTERP
    }

    /// A stripped copy of the static executable at `path` (resolved through
    /// /proc/self/exe and symlinks), cached by size and modification time.
    public static func prepare(_ path: String, cache: LabCache) throws -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(path, &resolved) != nil else { throw LabError("cannot find the kestrel executable \(path)") }
        let source = String(cString: resolved)
        var status = stat()
        guard stat(source, &status) == 0 else { throw LabError("cannot read \(source)") }
        let bytes = try readBytes(source)
        guard isStatic(bytes) else {
            throw LabError("\(source) is dynamically linked; the L1 needs the static kestrel that `swift build` makes (or give --kestrel)")
        }
        let directory = cache.root + "/bin"
        try makeDirectories(directory)
        let target = "\(directory)/kestrel-\(status.st_size)-\(status.st_mtim.tv_sec)"
        if fileExists(target) { return target }
        // Copies of earlier builds go once they are an hour old (a run that
        // started with one has long since packed it).
        for old in directoryEntries(directory) where old.hasPrefix("kestrel-") {
            if let time = modificationTime(directory + "/" + old), currentTime() - time > 3600 { unlink(directory + "/" + old) }
        }
        if HostProcess.find("strip") != nil,
           (try? HostProcess.output(["strip", "-o", target + ".partial", source]))?.status == 0,
           rename(target + ".partial", target) == 0 {
            return target
        }
        try writeFileAtomically(bytes, to: target, mode: 0o755)
        return target
    }
}
