import ArgumentParser

/// The `kestrel` command.
struct Kestrel: ParsableCommand {
    static let version = "0.1.0"

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
        subcommands: [RunCommand.self, InitramfsCommand.self, VmlinuxCommand.self, CheckCommand.self, CapsCommand.self, LabCommand.self, SNPCommand.self, VsockCommand.self, BenchCommand.self],
        defaultSubcommand: nil)
}
