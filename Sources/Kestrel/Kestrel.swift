import ArgumentParser

/// The `kestrel` command.
struct Kestrel: ParsableCommand {
    static let version = "0.2.0"
    /// The Firecracker release whose API and command line Kestrel follows
    /// (its swagger at 1.17.0-dev, less what the README lists as refused).
    static let firecrackerAPIVersion = "1.16.0"
    /// What Firecracker's clients read as its version (`GET /version`, and
    /// `firecracker --version` when Kestrel is run under that name): the
    /// API level, with Kestrel's own version as semver build metadata, which
    /// version comparisons ignore.
    static let firecrackerVersion = "\(firecrackerAPIVersion)+kestrel.\(version)"

    /// "release" or "debug", for benchmark lines.
    #if DEBUG
    static let buildConfiguration = "debug"
    #else
    static let buildConfiguration = "release"
    #endif

    static let configuration = CommandConfiguration(
        commandName: "kestrel",
        abstract: "A KVM toolkit: a Linux VMM, conformance checks, host capabilities and SEV-SNP certificate tools for guest_memfd, CET, FRED, SEV-SNP and CCA.",
        version: version,
        subcommands: [RunCommand.self, JailCommand.self, InitramfsCommand.self, VmlinuxCommand.self, CheckCommand.self, CapsCommand.self, LabCommand.self, SNPCommand.self, VsockCommand.self, SnapshotCommand.self, BenchCommand.self],
        defaultSubcommand: nil)
}

/// The command line as Kestrel reads it: under the name `firecracker`,
/// every argument belongs to `run`.
enum LaunchLine {
    static let programName = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
    static let isFirecracker = programName == "firecracker"
    /// Under the name `jailer`, every argument belongs to `jail`.
    static let isJailer = programName == "jailer"
    /// The arguments after the program name, `run` (or `jail`) first under those names.
    static let arguments: [String] = (isFirecracker ? ["run"] : isJailer ? ["jail"] : []) + CommandLine.arguments.dropFirst()
    /// When `main` began (CLOCK_MONOTONIC, µs): where the start-up time is
    /// measured from, unless a jailer passes `--start-time-us`. Unsafe but
    /// sound: `main` writes it once, before any other thread exists.
    nonisolated(unsafe) static var startMicroseconds: Int64 = 0
}
