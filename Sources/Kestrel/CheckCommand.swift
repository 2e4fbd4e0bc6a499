import TextFormat
import ArgumentParser
import Conformance

/// `kestrel check`: the KVM conformance suites.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Run the KVM conformance suites against this host's /dev/kvm.",
        discussion: """
            Each test checks a promise KVM makes. It PASSes, FAILs with a diagnosis \
            (a host defect is a failure), or SKIPs with the requirement this host lacks. \
            Suites: \(ConformanceCatalog.suiteNames.joined(separator: ", ")). \
            The exit status is 1 when any test fails, 2 when KVM cannot be used \
            (every test skipped) or no test matches the filters.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case human, tap, json
    }

    @Flag(name: .long, help: "Write kselftest-style TAP (same as --format tap).")
    var tap = false

    @Flag(name: .long, help: "Write one JSON document (same as --format json).")
    var json = false

    @Option(name: .long, help: "Output format: \(Format.allCases.map(\.rawValue).joined(separator: ", ")).")
    var format: Format = .human

    @Option(name: [.customShort("f"), .long],
            help: "Run only tests whose id contains this text (or matches it as a glob with * or ?). Repeatable.")
    var filter: [String] = []

    @Flag(name: .long, help: "List the tests with what each checks, without running them.")
    var list = false

    @Flag(name: [.short, .long], help: "Show what each test logged (guest PRINTs, values seen).")
    var verbose = false

    @Option(name: .long, help: "The KVM device to open.")
    var device = "/dev/kvm"

    @Option(name: .customLong("label"), help: "Add KEY=VALUE to the JSON document's metadata (repeatable; `kestrel lab` records its host this way).")
    var labels: [String] = []

    func validate() throws {
        if tap && json { throw ValidationError("--tap and --json cannot be combined") }
    }

    func run() throws {
        let host = HostProbe(path: device)
        let tests = ConformanceRunner.select(ConformanceCatalog.allTests(host: host), filters: filter)
        if list {
            let width = tests.map(\.id.count).max() ?? 0
            for test in tests { print(test.id.padded(to: width) + "  " + test.summary) }
            return
        }
        guard !tests.isEmpty else {
            printError("kestrel: no test matches \(filter.map { "'\($0)'" }.joined(separator: ", ")); see `kestrel check --list`")
            throw ExitCode(2)
        }
        if let reason = host.unavailableReason {
            printError("kestrel: \(reason); every test will be skipped")
        }
        let chosen: Format = tap ? .tap : json ? .json : format
        let reporter: ResultReporter
        switch chosen {
        case .human: reporter = HumanReporter(verbose: verbose)
        case .tap: reporter = TAPReporter()
        case .json:
            var metadata = ["kestrel": Kestrel.version, "device": device, "kernel": host.kernelRelease]
            for label in labels {
                let parts = label.split(separator: "=", maxSplits: 1).map(String.init)
                metadata[parts[0]] = parts.count > 1 ? parts[1] : ""
            }
            reporter = JSONReporter(metadata: metadata)
        }
        let summary = ConformanceRunner(host: host).run(tests, reporters: [reporter])
        if summary.failed > 0 { throw ExitCode(1) }
        // Nothing was checked: a run without KVM must not look like a pass.
        if host.unavailableReason != nil { throw ExitCode(2) }
    }
}
