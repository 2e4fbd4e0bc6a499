import ArgumentParser
import Conformance

/// `kestrel caps`: what this host's KVM can do.
struct CapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caps",
        abstract: "Report what this host's KVM offers for the features Kestrel targets.",
        discussion: """
            Lists the KVM API version, VM types, guest_memfd flags, memory attributes, \
            capabilities, the CPUID bits SHSTK/IBT/FRED/LKGS, which CET and FRED MSRs KVM \
            saves and restores, and SEV presence.
            """)

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    @Option(name: .long, help: "The KVM device to open.")
    var device = "/dev/kvm"

    func run() throws {
        let report = HostReport.probe(devicePath: device)
        print(json ? try report.renderJSON() : report.renderText())
        if report.unavailableReason != nil { throw ExitCode(2) }
    }
}
