import TextFormat
/// The default output: one line per test as it finishes, diagnoses indented
/// under failures, and a closing count.
public final class HumanReporter: ResultReporter {
    private let sink: OutputSink
    private let verbose: Bool
    private var failures: [TestResult] = []

    public init(sink: OutputSink = .standardOutput, verbose: Bool = false) {
        self.sink = sink
        self.verbose = verbose
    }

    public func begin(total: Int) {
        sink.line("Running \(total) conformance test\(total == 1 ? "" : "s") against this host's KVM")
    }

    public func record(_ result: TestResult, index: Int, total: Int) {
        let width = String(total).count
        let position = String(repeating: " ", count: max(0, width - String(index).count)) + String(index)
        let milliseconds = Int((result.duration * 1000).rounded())
        var line = "[\(position)/\(total)] \(result.outcome.label)  \(result.id)  (\(milliseconds) ms)"
        if case .skip(let reason) = result.outcome { line += ": \(reason)" }
        sink.line(line)
        if case .fail(let diagnosis) = result.outcome {
            failures.append(result)
            for text in diagnosis.split(separator: "\n") { sink.line("        \(text)") }
        }
        if verbose { for entry in result.log { sink.line("        | \(entry)") } }
    }

    public func finish(_ summary: RunSummary) {
        if !failures.isEmpty {
            sink.line("")
            sink.line("Failed:")
            for result in failures {
                let detail = (result.outcome.detail ?? "").replacing("\n", with: "\n      ")
                sink.line("  \(result.id): \(detail)")
            }
        }
        sink.line("")
        sink.line("\(summary.passed) passed, \(summary.failed) failed, \(summary.skipped) skipped in \(summary.seconds.text(places: 2)) s")
    }
}

