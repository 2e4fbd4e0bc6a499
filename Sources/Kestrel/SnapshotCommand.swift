import ArgumentParser
import TextFormat
import VMM

/// `kestrel snapshot`: work on snapshot files offline.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Work on snapshot files (PUT /snapshot/create writes them).",
        subcommands: [Merge.self])

    /// `kestrel snapshot merge`: Firecracker's `snapshot-editor edit-memory rebase`, for any number of diffs.
    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fold Diff snapshots' memory onto a base snapshot's memory.",
            discussion: """
                Each snapshot is given as STATE:MEMORY, its state file and its memory file (split at the last colon). \
                Before anything is written, each diff is checked against its state file: it must continue the snapshot \
                before it (the base, then the previous diff), and its memory file must hold exactly the data its \
                snapshot wrote (neither cut short, nor copied with its holes filled or its zero pages punched, nor \
                changed). A diff on the wrong base, a corrupt diff and a truncated memory file are refused by name.
                Each diff's data (the pages it holds) then replaces the same bytes of the base, in the order given; \
                a diff's holes leave the base alone. The result replaces the base's memory file, or goes to --output; \
                it is written under a temporary name and renamed into place when whole, so a failure changes \
                nothing. The last diff's state file then restores the merged memory, and is the base of the next merge.
                With --unchecked, arguments are memory files alone (as Firecracker's snapshot-editor takes them) and \
                only their sizes are checked.
                Example: kestrel snapshot merge vm.state:vm.mem d1.state:d1.mem d2.state:d2.mem -o merged.mem
                """)

        @Argument(help: "The base snapshot, STATE:MEMORY (a Full snapshot, or the last diff's state with an earlier merge's memory).")
        var base: String
        @Argument(help: "Diff snapshots, STATE:MEMORY, oldest first.") var diffs: [String]
        @Option(name: [.short, .customLong("output")], help: "Write the merge here instead of over the base's memory file.") var output: String?
        @Flag(help: "Take memory files alone, unchecked but for their sizes.") var unchecked = false

        func validate() throws {
            if diffs.isEmpty { throw ValidationError("give at least one diff after the base") }
            if !unchecked {
                for argument in [base] + diffs where Self.split(argument) == nil {
                    throw ValidationError("\(argument): give each snapshot as STATE:MEMORY (or memory files alone with --unchecked)")
                }
            }
        }

        /// STATE:MEMORY, split at the last colon; nil unless both are non-empty.
        static func split(_ argument: String) -> SnapshotMemoryMerge.Files? {
            guard let colon = argument.lastIndex(of: ":") else { return nil }
            let state = String(argument[..<colon]), memory = String(argument[argument.index(after: colon)...])
            return state.isEmpty || memory.isEmpty ? nil : SnapshotMemoryMerge.Files(state: state, memory: memory)
        }

        func run() throws {
            let start = ContinuousClock.now
            let report: SnapshotMemoryMerge.Report
            do {
                if unchecked {
                    report = try SnapshotMemoryMerge.merge(base: base, diffs: diffs, output: output)
                } else {
                    report = try SnapshotMemoryMerge.merge(base: Self.split(base)!, diffs: diffs.map { Self.split($0)! }, output: output)
                }
            } catch {
                throw CommandFailure("\(error)")
            }
            let mib = { (bytes: UInt64) in (Double(bytes) / 1048576).text(places: 1) }
            let baseMemory = unchecked ? base : Self.split(base)!.memory
            print("merged \(diffs.count) diff\(diffs.count == 1 ? "" : "s") onto \(baseMemory) into \(output ?? baseMemory): "
                  + "\(mib(report.size)) MiB of RAM, \(mib(report.baseBytes)) MiB from the base, \(mib(report.diffBytes)) MiB from the diffs, "
                  + "in \(SecondsText.text(ContinuousClock.now - start)) s")
        }
    }
}
