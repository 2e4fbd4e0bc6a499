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
            abstract: "Fold Diff memory files onto a base memory file.",
            discussion: """
                Each diff's data (the pages it holds) replaces the same bytes of the base, in the order given; \
                a diff's holes leave the base alone. The result replaces BASE, or goes to --output; it is \
                written under a temporary name and renamed into place when whole, so a failure changes \
                nothing. The state file of the last diff then restores the merged memory.
                Diffs must stay sparse: a copy that fills their holes, or one that punches the zero pages \
                they hold (cp --sparse=always), changes what they say.
                Example: kestrel snapshot merge vm.mem diff1.mem diff2.mem
                """)

        @Argument(help: "The base memory file (a Full snapshot's, or an earlier merge).") var base: String
        @Argument(help: "Diff memory files, oldest first.") var diffs: [String]
        @Option(name: [.short, .customLong("output")], help: "Write the merge here instead of over the base.") var output: String?

        func validate() throws {
            if diffs.isEmpty { throw ValidationError("give at least one diff after the base") }
        }

        func run() throws {
            let start = ContinuousClock.now
            let report: SnapshotMemoryMerge.Report
            do { report = try SnapshotMemoryMerge.merge(base: base, diffs: diffs, output: output) } catch {
                throw CommandFailure("\(error)")
            }
            let mib = { (bytes: UInt64) in (Double(bytes) / 1048576).text(places: 1) }
            print("merged \(diffs.count) diff\(diffs.count == 1 ? "" : "s") onto \(base) into \(output ?? base): "
                  + "\(mib(report.size)) MiB of RAM, \(mib(report.baseBytes)) MiB from the base, \(mib(report.diffBytes)) MiB from the diffs, "
                  + "in \(SecondsText.text(ContinuousClock.now - start)) s")
        }
    }
}
