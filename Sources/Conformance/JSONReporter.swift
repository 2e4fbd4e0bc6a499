import FoundationEssentials
import Glibc

/// Machine-readable output: one JSON document at the end of the run.
public final class JSONReporter: ResultReporter {
    private let sink: OutputSink
    private let metadata: [String: String]
    private var results: [TestResult] = []

    public init(sink: OutputSink = .standardOutput, metadata: [String: String] = [:]) {
        self.sink = sink
        self.metadata = metadata
    }

    public func begin(total: Int) { results.reserveCapacity(total) }

    public func record(_ result: TestResult, index: Int, total: Int) { results.append(result) }

    struct Document: Encodable {
        struct Entry: Encodable {
            let id: String
            let suite: String
            let outcome: String
            let detail: String?
            let seconds: Double
            let log: [String]
        }
        struct Totals: Encodable {
            let passed: Int
            let failed: Int
            let skipped: Int
            let seconds: Double
        }
        let metadata: [String: String]
        let results: [Entry]
        let totals: Totals
    }

    public func finish(_ summary: RunSummary) {
        let document = Document(
            metadata: metadata,
            results: results.map {
                .init(id: $0.id, suite: $0.suite, outcome: $0.outcome.label.lowercased(), detail: $0.outcome.detail,
                      seconds: $0.duration, log: $0.log)
            },
            totals: .init(passed: summary.passed, failed: summary.failed, skipped: summary.skipped, seconds: summary.seconds))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let data = try? encoder.encode(document) {
            sink.line(String(decoding: data, as: UTF8.self))
        }
    }
}
