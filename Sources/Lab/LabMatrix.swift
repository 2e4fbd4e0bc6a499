import TextFormat
import FoundationEssentials

/// The JSON document `kestrel check --json` writes (Conformance's JSONReporter).
public struct CheckDocument: Codable, Sendable {
    public struct Entry: Codable, Sendable {
        public let id: String
        public let suite: String
        public let outcome: String
        public let detail: String?
    }
    public struct Totals: Codable, Sendable {
        public let passed: Int
        public let failed: Int
        public let skipped: Int
        public let seconds: Double
    }
    public let metadata: [String: String]
    public let results: [Entry]
    public let totals: Totals

    /// Parses the document out of a command's output (anything before the
    /// first "{" at the start of a line is ignored).
    public static func parse(_ text: String) throws -> CheckDocument {
        let bytes = Array(text.utf8)
        var start = 0
        while start < bytes.count, !(bytes[start] == UInt8(ascii: "{") && (start == 0 || bytes[start - 1] == UInt8(ascii: "\n"))) { start += 1 }
        guard start < bytes.count else { throw LabError("the check printed no JSON document") }
        do {
            return try JSONDecoder().decode(CheckDocument.self, from: Data(bytes[start...]))
        } catch {
            throw LabError("the check's JSON document cannot be read: \(error)")
        }
    }
}

/// One column of the matrix: a host and its check result (or why there is none).
public struct MatrixColumn: Codable, Sendable {
    /// Short title ("6.1", "local").
    public let title: String
    /// What the host is (kernel, accelerator, CPU model, QEMU version).
    public let host: String
    public let document: CheckDocument?
    public let error: String?
    public let seconds: Double?

    public init(title: String, host: String, document: CheckDocument?, error: String? = nil, seconds: Double? = nil) {
        self.title = title
        self.host = host
        self.document = document
        self.error = error
        self.seconds = seconds
    }
}

/// Test × host verdicts, with the tests whose verdict differs between hosts marked.
public struct LabMatrix: Codable, Sendable {
    public let columns: [MatrixColumn]

    public init(columns: [MatrixColumn]) { self.columns = columns }

    /// Test ids in the order they first appear.
    public var testIDs: [String] {
        var seen = Set<String>(), ids: [String] = []
        for column in columns { for entry in column.document?.results ?? [] where seen.insert(entry.id).inserted { ids.append(entry.id) } }
        return ids
    }

    public func verdict(_ id: String, in column: MatrixColumn) -> String? {
        column.document?.results.first { $0.id == id }?.outcome
    }

    /// Whether the hosts that ran `id` disagree on it.
    public func differs(_ id: String) -> Bool {
        Set(columns.compactMap { verdict(id, in: $0) }).count > 1
    }

    /// The table as text: a legend of the hosts, one row per test, "≠" before
    /// tests whose verdict depends on the host, then the totals and the
    /// diagnoses of every failure on a row that differs.
    public func render() -> String {
        var lines: [String] = []
        for column in columns {
            lines.append("\(column.title): \(column.host)" + (column.seconds.map { "  (\($0.text(places: 1)) s)" } ?? "")
                         + (column.error.map { "\n    no result: \($0)" } ?? ""))
        }
        lines.append("")
        let ids = testIDs
        let idWidth = max(4, ids.map(\.count).max() ?? 0)
        let widths = columns.map { max($0.title.count, 4) }
        func row(_ mark: String, _ first: String, _ cells: [String]) -> String {
            mark + " " + first.padded(to: idWidth) + zip(cells, widths).map { "  " + $0.padded(to: $1) }.joined()
        }
        lines.append(row(" ", "test", columns.map(\.title)))
        for id in ids {
            let cells = columns.map { column in (verdict(id, in: column) ?? (column.document == nil ? "-" : "n/a")).uppercased() }
            lines.append(row(differs(id) ? "≠" : " ", id, cells))
        }
        lines.append(row(" ", "passed/failed/skipped", columns.map { column in
            column.document.map { "\($0.totals.passed)/\($0.totals.failed)/\($0.totals.skipped)" } ?? "-"
        }))
        let differing = ids.filter(differs)
        lines.append("")
        lines.append("\(ids.count) tests on \(columns.count) hosts; \(differing.count) verdicts depend on the host (≠).")
        // The failures behind the differences (skips name their requirement in the
        // hosts' own reports, and would repeat one reason per test here).
        for id in differing {
            for column in columns {
                guard let entry = column.document?.results.first(where: { $0.id == id }), entry.outcome == "fail", let detail = entry.detail else { continue }
                lines.append("  \(id) on \(column.title): FAIL: \(detail.split(separator: "\n").first ?? "")")
            }
        }
        return lines.joined(separator: "\n")
    }
}

