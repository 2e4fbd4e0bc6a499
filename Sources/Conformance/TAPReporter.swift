/// kselftest-style TAP 13: `ok N id`, `not ok N id` with `#` diagnosis lines,
/// `ok N id # SKIP reason`, and a `# Totals:` line.
public final class TAPReporter: ResultReporter {
    private let sink: OutputSink

    public init(sink: OutputSink = .standardOutput) { self.sink = sink }

    public func begin(total: Int) {
        sink.line("TAP version 13")
        sink.line("1..\(total)")
    }

    public func record(_ result: TestResult, index: Int, total: Int) {
        switch result.outcome {
        case .pass:
            sink.line("ok \(index) \(result.id)")
        case .skip(let reason):
            sink.line("ok \(index) \(result.id) # SKIP \(Self.oneLine(reason))")
        case .fail(let diagnosis):
            for text in diagnosis.split(separator: "\n") { sink.line("# \(text)") }
            sink.line("not ok \(index) \(result.id)")
        }
    }

    public func finish(_ summary: RunSummary) {
        sink.line("# Totals: pass:\(summary.passed) fail:\(summary.failed) xfail:0 xpass:0 skip:\(summary.skipped) error:0")
    }

    static func oneLine(_ text: String) -> String {
        text.replacing("\n", with: " ")
    }
}
