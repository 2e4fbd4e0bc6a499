import Foundation
import Glibc
import GuestMemory
import Testing
@testable import VMM

/// Diff memory files and their merge: a diff holds exactly the pages marked
/// (zero pages as data, the rest holes), lands on an earlier file of the same
/// size, and base + diffs merge into what RAM held; bad merges are refused
/// and change nothing.
@Suite(.timeLimit(.minutes(5))) struct DiffSnapshotFileTests {
    static let page = 4096

    final class Directory {
        let path = NSTemporaryDirectory() + "kestrel-diff-\(UUID().uuidString)"
        init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        deinit { try? FileManager.default.removeItem(atPath: path) }
        func file(_ name: String) -> String { path + "/" + name }
    }

    static func bitmap(_ pages: [Int]) -> [UInt64] {
        var bits = [UInt64](repeating: 0, count: 2)
        for page in pages { bits[page / 64] |= 1 << UInt64(page % 64) }
        return bits
    }

    static func contents(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    /// Byte ranges lseek(SEEK_DATA/SEEK_HOLE) calls data.
    static func dataExtents(_ path: String) -> [Range<Int>] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let size = Int(lseek(fd, 0, SEEK_END))
        var extents: [Range<Int>] = []
        var position = 0
        while position < size {
            let data = Int(lseek(fd, off_t(position), 3))
            if data < 0 { break }
            let hole = Int(lseek(fd, off_t(data), 4))
            extents.append(data..<hole)
            position = hole
        }
        return extents
    }

    /// Writes `pages` of a RAM mapping through `writeChanged` into `path`.
    static func writeDiff(_ mapping: MemoryMapping, pages: [Int], to path: String, mergingEarlier: Bool = false) throws -> UInt64 {
        let file = try AtomicFile(creating: path, what: "test diff")
        let size = UInt64(mapping.size)
        if mergingEarlier { _ = try SnapshotMemoryFile.copyEarlierFile(path, ofSize: size, into: file) }
        let result = try SnapshotMemoryFile.writeChanged([(start: 0, mapping: mapping, bitmap: bitmap(pages))], into: file)
        try file.finish(size: result.size)
        try AtomicFile.publish([file])
        return result.written
    }

    @Test func pageRunsFollowTheBitmap() {
        #expect(SnapshotMemoryFile.pageRuns(Self.bitmap([0, 1, 2, 5, 63, 64, 70]), pages: 128) == [0..<3, 5..<6, 63..<65, 70..<71])
        #expect(SnapshotMemoryFile.pageRuns(Self.bitmap([3, 100]), pages: 64) == [3..<4], "bits past the region's pages are ignored")
        #expect(SnapshotMemoryFile.pageRuns([], pages: 10).isEmpty)
    }

    @Test func aDiffHoldsTheMarkedPagesZerosIncludedAndHolesElsewhere() throws {
        let directory = try Directory()
        let mapping = try MemoryMapping(anonymousSize: 16 * Self.page)
        for page in [1, 2, 9] { mapping.bytes[page * Self.page] = UInt8(page) }
        // Page 4 is marked but zero (the guest cleared it); page 9 has data but is not marked.
        let written = try Self.writeDiff(mapping, pages: [1, 2, 4], to: directory.file("diff"))
        #expect(written == UInt64(3 * Self.page))
        let bytes = try Self.contents(directory.file("diff"))
        #expect(bytes.count == 16 * Self.page)
        #expect(bytes[Self.page] == 1 && bytes[2 * Self.page] == 2 && bytes[9 * Self.page] == 0)
        #expect(Self.dataExtents(directory.file("diff")) == [Self.page..<(3 * Self.page), (4 * Self.page)..<(5 * Self.page)],
                "the marked pages are data, the zero page included, and nothing else")
    }

    @Test func aDiffOverAnEarlierFileOfTheSameSizeLandsOnIt() throws {
        let directory = try Directory()
        let mapping = try MemoryMapping(anonymousSize: 8 * Self.page)
        for page in 0..<8 { mapping.bytes[page * Self.page] = 0x10 + UInt8(page) }
        _ = try Self.writeDiff(mapping, pages: Array(0..<8), to: directory.file("mem"))
        mapping.bytes[3 * Self.page] = 0xEE
        _ = try Self.writeDiff(mapping, pages: [3], to: directory.file("mem"), mergingEarlier: true)
        let merged = try Self.contents(directory.file("mem"))
        #expect((0..<8).map { merged[$0 * Self.page] } == [0x10, 0x11, 0x12, 0xEE, 0x14, 0x15, 0x16, 0x17])
        // Through a link, as the target check sees it, the diff lands on the file linked to.
        #expect(symlink(directory.file("mem"), directory.file("link")) == 0)
        mapping.bytes[5 * Self.page] = 0xDD
        _ = try Self.writeDiff(mapping, pages: [5], to: directory.file("link"), mergingEarlier: true)
        let linked = try Self.contents(directory.file("link"))
        #expect((0..<8).map { linked[$0 * Self.page] } == [0x10, 0x11, 0x12, 0xEE, 0x14, 0xDD, 0x16, 0x17])
        // Another size: the diff starts from holes.
        let small = try MemoryMapping(anonymousSize: 4 * Self.page)
        small.bytes[Self.page] = 0x77
        _ = try Self.writeDiff(small, pages: [1], to: directory.file("mem"), mergingEarlier: true)
        let fresh = try Self.contents(directory.file("mem"))
        #expect(fresh.count == 4 * Self.page && fresh[0] == 0 && fresh[Self.page] == 0x77)
    }

    /// Base + diff 1 + diff 2 is what RAM held at diff 2: the host-side proof
    /// the lab repeats with a Linux guest.
    @Test func baseAndDiffsMergeIntoWhatRAMHeld() throws {
        let directory = try Directory()
        let mapping = try MemoryMapping(anonymousSize: 32 * Self.page)
        for page in 0..<32 where page % 3 == 0 { memset(mapping.baseAddress + page * Self.page, Int32(page + 1), Self.page) }
        _ = try Self.writeDiff(mapping, pages: (0..<32).filter { $0 % 3 == 0 }, to: directory.file("base"))
        memset(mapping.baseAddress + 4 * Self.page, 0xA4, Self.page)
        memset(mapping.baseAddress + 6 * Self.page, 0, Self.page)
        _ = try Self.writeDiff(mapping, pages: [4, 6], to: directory.file("diff1"))
        memset(mapping.baseAddress + 4 * Self.page, 0xB4, 100)
        memset(mapping.baseAddress + 31 * Self.page, 0xBF, Self.page)
        _ = try Self.writeDiff(mapping, pages: [4, 31], to: directory.file("diff2"))
        let report = try SnapshotMemoryMerge.merge(base: directory.file("base"), diffs: [directory.file("diff1"), directory.file("diff2")],
                                                   output: directory.file("merged"))
        #expect(report.size == UInt64(32 * Self.page) && report.diffBytes == UInt64(4 * Self.page))
        #expect(try Self.contents(directory.file("merged")) == Array(mapping.bytes), "the merge is RAM as it was at the last diff")
        #expect(try Self.contents(directory.file("base"))[4 * Self.page] == 0, "--output leaves the base alone")
        // In place, as snapshot-editor's rebase does.
        _ = try SnapshotMemoryMerge.merge(base: directory.file("base"), diffs: [directory.file("diff1"), directory.file("diff2")])
        #expect(try Self.contents(directory.file("base")) == Array(mapping.bytes))
    }

    @Test func badMergesAreRefusedAndChangeNothing() throws {
        let directory = try Directory()
        let mapping = try MemoryMapping(anonymousSize: 4 * Self.page)
        mapping.bytes[0] = 1
        _ = try Self.writeDiff(mapping, pages: [0], to: directory.file("base"))
        _ = try Self.writeDiff(mapping, pages: [1], to: directory.file("diff"))
        let other = try MemoryMapping(anonymousSize: 8 * Self.page)
        _ = try Self.writeDiff(other, pages: [1], to: directory.file("big"))
        let before = try Self.contents(directory.file("base"))
        let cases: [(String, [String], String?, String)] = [
            (directory.file("base"), [directory.file("big")], nil, "they are not snapshots of one machine's RAM"),
            (directory.file("base"), [directory.file("missing")], nil, "cannot read the diff"),
            (directory.file("missing"), [directory.file("diff")], nil, "cannot read the base memory file"),
            (directory.file("base"), [directory.file("diff")], directory.file("diff"), "is the diff"),
            (directory.path, [directory.file("diff")], nil, "is not a regular file"),
            (directory.file("base"), [], nil, "no diff to merge"),
        ]
        for (base, diffs, output, expected) in cases {
            do {
                _ = try SnapshotMemoryMerge.merge(base: base, diffs: diffs, output: output)
                Issue.record("merge \(base) \(diffs) was not refused")
            } catch {
                #expect("\(error)".contains(expected), "\(error)")
            }
        }
        #expect(try Self.contents(directory.file("base")) == before)
        let left = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(left == ["base", "big", "diff"], "no temporary file is left behind: \(left)")
    }
}
