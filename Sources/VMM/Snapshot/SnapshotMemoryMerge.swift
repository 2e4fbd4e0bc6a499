import Glibc

/// Folds Diff memory files onto a base memory file, as Firecracker's
/// `snapshot-editor edit-memory rebase` does: every data extent of each diff
/// (its pages changed) replaces the same bytes of the base, in order, and
/// the diffs' holes leave the base as it was.
///
/// A diff's holes are its meaning, so diffs must stay sparse: a copy that
/// fills holes (or one that punches the zero pages it holds) changes what it says.
public enum SnapshotMemoryMerge {
    /// What a merge wrote.
    public struct Report: Sendable, Equatable {
        /// The memory file's size (all of guest RAM).
        public let size: UInt64
        /// Bytes copied from the base, then from the diffs.
        public let baseBytes: UInt64
        public let diffBytes: UInt64
    }

    /// Writes base + `diffs` (in that order) to `output`, or over `base`
    /// when `output` is nil. The result is written under a temporary name
    /// and renamed into place when whole, so a failure leaves every file as
    /// it was. Refused before anything is written when a file is missing or
    /// not a regular file, when the sizes differ, or when the output is one
    /// of the diffs.
    public static func merge(base: String, diffs: [String], output: String? = nil) throws -> Report {
        guard !diffs.isEmpty else { throw SnapshotError("no diff to merge onto \(base)") }
        let target = output ?? base
        let size = try regularFileSize(base, what: "the base memory file")
        for diff in diffs {
            let diffSize = try regularFileSize(diff, what: "the diff")
            guard diffSize == size else {
                throw SnapshotError("the diff \(diff) is \(diffSize) bytes and the base \(base) \(size): they are not snapshots of one machine's RAM")
            }
            if FileIdentity(diff).isSame(as: FileIdentity(target)) {
                throw SnapshotError("the output \(target) is the diff \(diff); write the merge elsewhere")
            }
        }
        if let output, let kind = FileIdentity(output).kind, kind != .regular {
            throw SnapshotError("the output \(output) is \(kind); the merge is written to a new name or over a regular file")
        }
        let file = try AtomicFile(creating: target, what: "the merged memory file \(target)")
        do {
            let baseBytes = try copy(base, into: file, size: size, what: "the base memory file \(base)")
            var diffBytes: UInt64 = 0
            for diff in diffs { diffBytes += try copy(diff, into: file, size: size, what: "the diff \(diff)") }
            try file.finish(size: size)
            try AtomicFile.publish([file])
            return Report(size: size, baseBytes: baseBytes, diffBytes: diffBytes)
        } catch {
            file.abandon()
            throw error
        }
    }

    private static func copy(_ path: String, into file: AtomicFile, size: UInt64, what: String) throws -> UInt64 {
        let source = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard source >= 0 else { throw SnapshotError("cannot open \(what): \(String(cString: strerror(errno)))") }
        defer { close(source) }
        return try SnapshotMemoryFile.copyDataExtents(from: source, to: file.fd, size: off_t(size), what: what)
    }

    private static func regularFileSize(_ path: String, what: String) throws -> UInt64 {
        var status = stat()
        guard stat(path, &status) == 0 else { throw SnapshotError("cannot read \(what) \(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFREG else { throw SnapshotError("\(what) \(path) is not a regular file") }
        return UInt64(status.st_size)
    }
}
