import Confidential
import Testing

@Suite(.timeLimit(.minutes(5))) struct CertificateTableTests {
    let vcek: [UInt8] = Array(repeating: 0x11, count: 100)
    let ask: [UInt8] = Array(repeating: 0x22, count: 50)
    let ark: [UInt8] = Array(repeating: 0x33, count: 7)

    @Test func knownGUIDsReadInRFC4122Order() {
        #expect(SNPCertificateGUID.vcek.bytes.prefix(4) == [0x63, 0xda, 0x75, 0x8d])
        #expect(SNPCertificateGUID.ark.uuidString == "c0b406a4-a803-4952-9743-3fb6014cd0ae")
        #expect(SNPCertificateGUID("VLEK") == .vlek)
        #expect(SNPCertificateGUID("ask") == .ask)
        #expect(SNPCertificateGUID("4AB7B379-BBAC-4FE4-A02F-05AEF327C782")?.name == "ASK")
        #expect(SNPCertificateGUID("not-a-guid") == nil)
        #expect(SNPCertificateGUID("4ab7b379-bbac-4fe4-a02f-05aef327c78") == nil)
        #expect(SNPCertificateGUID("4ab7b379-bbac-4fe4-a02f-05aef327c7zz") == nil)
    }

    @Test func encodesTheLayoutByteForByte() throws {
        let table = try SNPCertificateTable([(.vcek, vcek), (.ask, ask), (.ark, ark)])
        let blob = table.encoded()
        #expect(table.tableSize == 96)
        #expect(blob.count == 96 + 157)
        #expect(Array(blob[0..<16]) == SNPCertificateGUID.vcek.bytes)
        #expect(Array(blob[16..<24]) == [96, 0, 0, 0, 100, 0, 0, 0])
        #expect(Array(blob[24..<40]) == SNPCertificateGUID.ask.bytes)
        #expect(Array(blob[40..<48]) == [196, 0, 0, 0, 50, 0, 0, 0])
        #expect(Array(blob[64..<72]) == [246, 0, 0, 0, 7, 0, 0, 0])
        #expect(blob[72..<96].allSatisfy { $0 == 0 })
        #expect(Array(blob[96..<196]) == vcek)
        #expect(Array(blob[246..<253]) == ark)
        #expect(try SNPCertificateTable(parsing: blob) == table)
    }

    @Test func unknownGUIDsAreKeptAsTheyAre() throws {
        let custom = SNPCertificateGUID("01234567-89ab-cdef-0123-456789abcdef")!
        let table = try SNPCertificateTable([(custom, [1, 2, 3])])
        let parsed = try SNPCertificateTable(parsing: table.encoded())
        #expect(parsed.entries[0].guid == custom)
        #expect(parsed.entries[0].guid.name == nil)
        #expect(parsed.entries[0].data == [1, 2, 3])
    }

    @Test func emptyTableIsJustTheTerminator() throws {
        let table = try SNPCertificateTable([])
        #expect(table.encoded() == [UInt8](repeating: 0, count: 24))
        #expect(try SNPCertificateTable(parsing: [UInt8](repeating: 0, count: 4096)).entries.isEmpty)
    }

    @Test func buildRefusesDuplicatesZeroGUIDsAndEmptyCertificates() {
        #expect(throws: SNPCertificateTableError.duplicateGUID(.vcek, first: 0, second: 2)) {
            try SNPCertificateTable([(.vcek, vcek), (.ask, ask), (.vcek, ark)])
        }
        #expect(throws: SNPCertificateTableError.zeroGUID(entry: 1)) { try SNPCertificateTable([(.vcek, vcek), (.zero, ask)]) }
        #expect(throws: SNPCertificateTableError.emptyCertificate(entry: 0, .ark)) { try SNPCertificateTable([(.ark, [])]) }
    }

    /// A raw blob of hand-written entries, for the refusals.
    func blob(_ entries: [(SNPCertificateGUID, UInt32, UInt32)], terminator: Bool = true, size: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for (guid, offset, length) in entries {
            bytes += guid.bytes
            for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: offset >> UInt32(shift))) }
            for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: length >> UInt32(shift))) }
        }
        if terminator { bytes += [UInt8](repeating: 0, count: 24) }
        if bytes.count < size { bytes += [UInt8](repeating: 0xEE, count: size - bytes.count) }
        return bytes
    }

    @Test func parseRefusesEachMalformedTable() {
        #expect(throws: SNPCertificateTableError.missingTerminator(entriesRead: 0, blobSize: 10)) {
            try SNPCertificateTable(parsing: [UInt8](repeating: 0, count: 10))
        }
        #expect(throws: SNPCertificateTableError.missingTerminator(entriesRead: 2, blobSize: 48)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 48, 1), (.ask, 48, 1)], terminator: false, size: 48))
        }
        #expect(throws: SNPCertificateTableError.pastEnd(entry: 0, offset: 48, length: 100, blobSize: 120)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 48, 100)], size: 120))
        }
        #expect(throws: SNPCertificateTableError.pastEnd(entry: 0, offset: 0xFFFF_FFF0, length: 0x20, blobSize: 100)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 0xFFFF_FFF0, 0x20)], size: 100))
        }
        #expect(throws: SNPCertificateTableError.overlap(first: 0, second: 1)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 72, 20), (.ask, 80, 20)], size: 200))
        }
        #expect(throws: SNPCertificateTableError.overlap(first: 0, second: 1)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 100, 20), (.ask, 72, 30)], size: 200))
        }
        #expect(throws: SNPCertificateTableError.duplicateGUID(.ask, first: 0, second: 1)) {
            try SNPCertificateTable(parsing: blob([(.ask, 72, 10), (.ask, 82, 10)], size: 200))
        }
        #expect(throws: SNPCertificateTableError.insideTable(entry: 0, offset: 24, tableEnd: 48)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 24, 10)], size: 200))
        }
        #expect(throws: SNPCertificateTableError.emptyCertificate(entry: 0, .vcek)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 48, 0)], size: 200))
        }
        #expect(throws: SNPCertificateTableError.zeroGUID(entry: 1)) {
            try SNPCertificateTable(parsing: blob([(.vcek, 72, 1), (.zero, 73, 1)], size: 200))
        }
    }

    @Test func adjacentCertificatesAndTrailingPaddingAreAccepted() throws {
        let parsed = try SNPCertificateTable(parsing: blob([(.vcek, 72, 10), (.ask, 82, 10)], size: 4096))
        #expect(parsed.entries.map(\.offset) == [72, 82])
        #expect(parsed.entries[1].data == [UInt8](repeating: 0xEE, count: 10))
    }

    @Test func everyRefusalHasAReason() {
        let errors: [SNPCertificateTableError] = [
            .missingTerminator(entriesRead: 1, blobSize: 30), .zeroGUID(entry: 2), .duplicateGUID(.vcek, first: 0, second: 1),
            .emptyCertificate(entry: 0, .ask), .insideTable(entry: 0, offset: 3, tableEnd: 48),
            .pastEnd(entry: 1, offset: 100, length: 20, blobSize: 110), .overlap(first: 0, second: 1), .tooLarge(entry: 0),
        ]
        for error in errors { #expect(error.description.count > 20) }
        #expect(SNPCertificateTableError.duplicateGUID(.vcek, first: 0, second: 1).description.contains("VCEK"))
    }
}
