import Confidential

/// Feeds the certificate-table parser random and mutated blobs and checks what
/// it says: every refusal carries a reason, and every accepted blob satisfies
/// the format's invariants (entries inside the blob and after the table,
/// distinct non-zero GUIDs, no overlaps) and survives a rebuild.
public struct CertificateTableFuzzer {
    public struct Report: Sendable, CustomStringConvertible {
        public var inputs = 0
        public var accepted = 0
        public var refusedByReason: [String: Int] = [:]
        /// Invariant violations: must stay empty.
        public var violations: [String] = []

        public var refused: Int { refusedByReason.values.reduce(0, +) }
        public var description: String {
            let reasons = refusedByReason.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            return "\(inputs) inputs: \(accepted) accepted, \(refused) refused (\(reasons)), \(violations.count) invariant violations"
        }
    }

    private var random: SplitMix64
    public private(set) var report = Report()

    public init(seed: UInt64) { random = SplitMix64(seed: seed) }

    /// Runs `count` inputs.
    public mutating func run(count: Int) {
        for _ in 0..<count { check(nextInput()) }
    }

    /// Parses one input and records the verdict.
    public mutating func check(_ blob: [UInt8]) {
        report.inputs += 1
        do {
            let table = try SNPCertificateTable(parsing: blob)
            report.accepted += 1
            if let problem = Self.violation(table, blob: blob) { report.violations.append(problem) }
        } catch let error as SNPCertificateTableError {
            let text = error.description
            if text.isEmpty { report.violations.append("refusal without a reason: \(error)") }
            report.refusedByReason[Self.kind(error), default: 0] += 1
        } catch {
            report.violations.append("unexpected error type: \(error)")
        }
    }

    static func kind(_ error: SNPCertificateTableError) -> String {
        switch error {
        case .missingTerminator: return "missingTerminator"
        case .zeroGUID: return "zeroGUID"
        case .duplicateGUID: return "duplicateGUID"
        case .emptyCertificate: return "emptyCertificate"
        case .insideTable: return "insideTable"
        case .pastEnd: return "pastEnd"
        case .overlap: return "overlap"
        case .tooLarge: return "tooLarge"
        }
    }

    public static func violation(_ table: SNPCertificateTable, blob: [UInt8]) -> String? {
        var guids = Set<SNPCertificateGUID>()
        var ranges: [Range<Int>] = []
        for entry in table.entries {
            if entry.guid == .zero { return "accepted a zero GUID" }
            if !guids.insert(entry.guid).inserted { return "accepted duplicate GUID \(entry.guid)" }
            let range = entry.offset..<(entry.offset + entry.data.count)
            if entry.data.isEmpty { return "accepted an empty certificate" }
            if range.lowerBound < table.tableSize || range.upperBound > blob.count { return "accepted \(range) outside the certificate area" }
            if Array(blob[range]) != entry.data { return "entry data differs from the blob" }
            if ranges.contains(where: { $0.overlaps(range) }) { return "accepted overlapping certificates" }
            ranges.append(range)
        }
        do {
            let rebuilt = try SNPCertificateTable(table.entries.map { ($0.guid, $0.data) })
            let reparsed = try SNPCertificateTable(parsing: rebuilt.encoded())
            if reparsed.entries.map(\.guid) != table.entries.map(\.guid) || reparsed.entries.map(\.data) != table.entries.map(\.data) {
                return "rebuild changed the table"
            }
        } catch {
            return "an accepted table does not rebuild: \(error)"
        }
        return nil
    }

    // MARK: inputs

    private mutating func nextInput() -> [UInt8] {
        switch random.next() % 4 {
        case 0: return randomBytes(count: Int(random.next() % 512))
        default:
            var blob = validBlob()
            let mutations = 1 + Int(random.next() % 4)
            for _ in 0..<mutations { mutate(&blob) }
            return blob
        }
    }

    private mutating func randomBytes(count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    private mutating func randomGUID() -> SNPCertificateGUID {
        if random.next() % 2 == 0 {
            return SNPCertificateGUID.known[Int(random.next() % 4)].guid
        }
        return SNPCertificateGUID(bytes: randomBytes(count: 16))!
    }

    private mutating func validBlob() -> [UInt8] {
        var certificates: [(guid: SNPCertificateGUID, data: [UInt8])] = []
        for _ in 0..<Int(random.next() % 6) {
            let guid = randomGUID()
            if guid == .zero || certificates.contains(where: { $0.guid == guid }) { continue }
            certificates.append((guid, randomBytes(count: 1 + Int(random.next() % 200))))
        }
        var blob = (try? SNPCertificateTable(certificates).encoded()) ?? []
        if random.next() % 3 == 0 { blob += [UInt8](repeating: 0, count: Int(random.next() % 300)) }
        return blob
    }

    private static let interesting: [UInt32] = [0, 1, 23, 24, 47, 48, 71, 72, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]

    private mutating func mutate(_ blob: inout [UInt8]) {
        guard !blob.isEmpty else { blob = randomBytes(count: Int(random.next() % 64)); return }
        let entryCount = blob.count / SNPCertificateTable.entrySize
        switch random.next() % 9 {
        case 0:  // flip a bit
            let index = Int(random.next() % UInt64(blob.count))
            blob[index] ^= 1 << UInt8(random.next() % 8)
        case 1:  // set a byte
            blob[Int(random.next() % UInt64(blob.count))] = UInt8(truncatingIfNeeded: random.next())
        case 2, 3:  // overwrite an offset or length with a boundary value
            guard entryCount > 0 else { return }
            let entry = Int(random.next() % UInt64(entryCount))
            let field = entry * 24 + (random.next() % 2 == 0 ? 16 : 20)
            var value = Self.interesting[Int(random.next() % UInt64(Self.interesting.count))]
            if random.next() % 3 == 0 { value = UInt32(truncatingIfNeeded: blob.count) &+ UInt32(truncatingIfNeeded: Int(random.next() % 3) - 1) }
            for index in 0..<4 { blob[field + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
        case 4:  // truncate
            blob.removeLast(Int(random.next() % UInt64(blob.count + 1)))
        case 5:  // extend
            blob += randomBytes(count: Int(random.next() % 64))
        case 6:  // duplicate an entry over the next one
            guard entryCount >= 2 else { return }
            let entry = Int(random.next() % UInt64(entryCount - 1))
            for index in 0..<24 { blob[(entry + 1) * 24 + index] = blob[entry * 24 + index] }
        case 7:  // zero an entry (an early terminator, or a zero GUID with fields)
            guard entryCount > 0 else { return }
            let entry = Int(random.next() % UInt64(entryCount))
            let width = random.next() % 2 == 0 ? 24 : 16
            for index in 0..<width { blob[entry * 24 + index] = 0 }
        default:  // swap two entries
            guard entryCount >= 2 else { return }
            let first = Int(random.next() % UInt64(entryCount)), second = Int(random.next() % UInt64(entryCount))
            for index in 0..<24 { blob.swapAt(first * 24 + index, second * 24 + index) }
        }
    }
}
