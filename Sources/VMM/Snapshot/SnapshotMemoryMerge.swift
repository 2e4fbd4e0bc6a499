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

    /// A snapshot's two files.
    public struct Files: Sendable, Equatable {
        public let state: String
        public let memory: String
        public init(state: String, memory: String) {
            self.state = state
            self.memory = memory
        }
    }

    /// `merge`, with every diff checked against its state file first, so
    /// that nothing is written unless the chain holds:
    /// - each diff's state file is a Diff's, and names the snapshot before it
    ///   (the base, then the previous diff) as its parent;
    /// - each diff's memory file holds exactly the data its snapshot wrote
    ///   (the bytes and CRC-32 of its data extents, `SnapshotLineage`): not
    ///   cut short, no hole filled, no zero page punched, no byte changed;
    /// - every memory file has the size its state file's RAM needs;
    /// - the base's memory is whole (a Full snapshot's, an earlier merge's,
    ///   or a Diff that landed on one), not a diff's own sparse file.
    public static func merge(base: Files, diffs: [Files], output: String? = nil) throws -> Report {
        guard !diffs.isEmpty else { throw SnapshotError("no diff to merge onto \(base.memory)") }
        let baseSnapshot = try MachineBuilder.readSnapshotState(base.state, naming: true)
        try checkSize(base.memory, snapshot: baseSnapshot, state: base.state)
        var previous = (snapshot: baseSnapshot, files: base)
        for diff in diffs {
            let snapshot = try MachineBuilder.readSnapshotState(diff.state, naming: true)
            let lineage = snapshot.lineage
            guard lineage.kind == .diff else {
                let name = lineage.kind == .full ? "a Full snapshot" : "a Diff that landed on an earlier memory file (whole memory)"
                throw SnapshotError("\(diff.state) is \(name), not a diff to merge; restore it as it is")
            }
            guard let parent = lineage.parent else {
                throw SnapshotError("the diff \(diff.state) was taken before any other snapshot of its machine: it holds everything since boot and merges onto nothing; restore it as it is")
            }
            guard parent == previous.snapshot.lineage.id else {
                throw SnapshotError("wrong base: the diff \(diff.state) continues snapshot \(SnapshotLineage.text(parent)), "
                    + "and \(previous.files.state) is snapshot \(SnapshotLineage.text(previous.snapshot.lineage.id))")
            }
            try checkSize(diff.memory, snapshot: snapshot, state: diff.state)
            let data = try SnapshotLineage.dataDigest(ofFile: diff.memory, what: "the diff \(diff.memory)")
            guard data.bytes == lineage.dataBytes && data.digest == lineage.dataDigest else {
                throw SnapshotError("the diff \(diff.memory) is corrupt: its snapshot wrote \(lineage.dataBytes) bytes of data "
                    + "(CRC-32 0x\(String(lineage.dataDigest, radix: 16))), the file holds \(data.bytes) (CRC-32 0x\(String(data.digest, radix: 16))); "
                    + "a copy that filled its holes or punched its zero pages, a cut-short file and changed bytes all do this")
            }
            previous = (snapshot, diff)
        }
        if baseSnapshot.lineage.kind == .diff {
            // A merge's output keeps its last diff's state file; the diff's own sparse file is not whole memory.
            let data = try SnapshotLineage.dataDigest(ofFile: base.memory, what: "the base \(base.memory)")
            if data.bytes == baseSnapshot.lineage.dataBytes && data.digest == baseSnapshot.lineage.dataDigest {
                throw SnapshotError("the base \(base.memory) is the diff \(base.state)'s own memory file, not whole memory: merge it onto its base first")
            }
        }
        return try merge(base: base.memory, diffs: diffs.map(\.memory), output: output)
    }


    private static func checkSize(_ memory: String, snapshot: MachineSnapshot, state: String) throws {
        let size = try regularFileSize(memory, what: "the memory file")
        guard size == snapshot.memoryFileSize else {
            throw SnapshotError("the memory file \(memory) has \(size) bytes; \(state)'s RAM needs \(snapshot.memoryFileSize) (truncated, or another snapshot's)")
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
