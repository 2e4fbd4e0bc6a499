import Confidential
import FoundationEssentials

/// The text `kestrel snp certs show` prints for a certificate blob.
public enum CertificateBlobReport {
    public static func text(for table: SNPCertificateTable, blobSize: Int, now: Date = Date()) -> String {
        var lines = ["certificate table: \(table.entries.count) entries, table \(table.tableSize) bytes, blob \(blobSize) bytes"]
        for (index, entry) in table.entries.enumerated() {
            lines.append("[\(index)] \(entry.guid): offset \(entry.offset), \(entry.data.count) bytes")
            switch CertificateSummary.inspect(entry.data) {
            case .success(let summary):
                lines.append("    subject: \(summary.subject)")
                lines.append("    issuer:  \(summary.issuer)")
                let state = summary.isValid(at: now) ? "valid now" : (now < summary.notValidBefore ? "NOT YET VALID" : "EXPIRED")
                lines.append("    valid:   \(iso(summary.notValidBefore)) to \(iso(summary.notValidAfter)) (\(state))")
            case .failure(let error):
                lines.append("    not an X.509 certificate (\(error.reason)); kept as given")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// A JSON object with the same facts.
    public static func json(for table: SNPCertificateTable, blobSize: Int) throws -> String {
        struct Entry: Encodable {
            let guid: String
            let name: String?
            let offset: Int
            let length: Int
            let subject: String?
            let issuer: String?
            let notValidBefore: String?
            let notValidAfter: String?
            let x509Error: String?
        }
        struct Report: Encodable {
            let blobSize: Int
            let tableSize: Int
            let entries: [Entry]
        }
        let entries = table.entries.map { entry -> Entry in
            let summary = CertificateSummary.inspect(entry.data)
            let good = try? summary.get()
            var failure: String?
            if case .failure(let error) = summary { failure = error.reason }
            return Entry(
                guid: entry.guid.uuidString, name: entry.guid.name, offset: entry.offset, length: entry.data.count,
                subject: good?.subject, issuer: good?.issuer,
                notValidBefore: good.map { iso($0.notValidBefore) }, notValidAfter: good.map { iso($0.notValidAfter) },
                x509Error: failure)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(Report(blobSize: blobSize, tableSize: table.tableSize, entries: entries))
        return String(decoding: data, as: UTF8.self)
    }

    /// 2026-11-21T10:55:39Z
    private static func iso(_ date: Date) -> String { date.formatted(Date.ISO8601FormatStyle()) }
}
