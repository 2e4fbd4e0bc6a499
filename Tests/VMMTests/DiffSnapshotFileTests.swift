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

/// The checked merge (`kestrel snapshot merge STATE:MEMORY...`): each diff's
/// state file names its parent and the digest of the data it wrote, so a
/// diff on the wrong base, a corrupt diff and a truncated memory file are
/// refused by name before anything is written, and the base stays as it was.
extension DiffSnapshotFileTests {
    /// Writes a state file for a snapshot of `pages` pages of RAM with `lineage`.
    static func writeState(_ path: String, pages: Int, lineage: SnapshotLineage) throws {
        var snapshot = try MachineSnapshotTests.sample()
        snapshot.memory = [.init(guestAddress: 0, size: UInt64(pages * page), fileOffset: 0)]
        snapshot.lineage = lineage
        try put(snapshot.encoded(), path)
    }

    /// Writes every byte (a file with no holes).
    static func put(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    /// A Diff's lineage for the memory file at `path`, as `createSnapshot` records it.
    static func diffLineage(_ path: String, parent: [UInt8]?) throws -> SnapshotLineage {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let data = try SnapshotMemoryFile.dataDigest(of: fd, size: lseek(fd, 0, SEEK_END), what: path)
        return SnapshotLineage(kind: .diff, id: SnapshotLineage.newID(), parent: parent, dataBytes: data.bytes, dataDigest: data.digest)
    }

    @Test func aCheckedMergeRefusesTheWrongBaseACorruptDiffAndATruncatedFile() throws {
        let directory = try Directory()
        func file(_ name: String) -> String { directory.file(name) }
        func pair(_ name: String, memory: String? = nil) -> SnapshotMemoryMerge.Files { .init(state: file(name + ".state"), memory: file(memory ?? name + ".mem")) }
        let mapping = try MemoryMapping(anonymousSize: 16 * Self.page)
        for index in [0, 3, 9] { memset(mapping.baseAddress + index * Self.page, Int32(index + 1), Self.page) }
        _ = try Self.writeDiff(mapping, pages: [0, 3, 9], to: file("base.mem"))
        let base = SnapshotLineage(kind: .full, id: SnapshotLineage.newID())
        try Self.writeState(file("base.state"), pages: 16, lineage: base)
        memset(mapping.baseAddress + 5 * Self.page, 0x55, Self.page)
        memset(mapping.baseAddress + 3 * Self.page, 0, Self.page)  // a page cleared: zeros as data
        _ = try Self.writeDiff(mapping, pages: [3, 5], to: file("d1.mem"))
        let d1 = try Self.diffLineage(file("d1.mem"), parent: base.id)
        try Self.writeState(file("d1.state"), pages: 16, lineage: d1)
        memset(mapping.baseAddress + 12 * Self.page, 0x66, Self.page)
        _ = try Self.writeDiff(mapping, pages: [12], to: file("d2.mem"))
        try Self.writeState(file("d2.state"), pages: 16, lineage: try Self.diffLineage(file("d2.mem"), parent: d1.id))

        // Corrupt copies of d1: holes filled, a byte changed, cut short; and a Diff taken before any snapshot.
        try Self.put(try Self.contents(file("d1.mem")), file("filled.mem"))
        _ = try Self.writeDiff(mapping, pages: [3, 5], to: file("flipped.mem"))
        let flip = open(file("flipped.mem"), O_WRONLY)
        #expect(pwrite(flip, [UInt8(0x54)], 1, off_t(5 * Self.page + 100)) == 1)
        close(flip)
        try Self.put(Array(try Self.contents(file("d1.mem")).prefix(8 * Self.page)), file("short.mem"))
        try Self.writeState(file("orphan.state"), pages: 16, lineage: try Self.diffLineage(file("d1.mem"), parent: nil))
        let baseBefore = try Self.contents(file("base.mem"))

        let refusals: [(SnapshotMemoryMerge.Files, [SnapshotMemoryMerge.Files], String)] = [
            (pair("base"), [pair("d2")], "wrong base: the diff \(file("d2.state")) continues snapshot"),
            (pair("base"), [pair("d2"), pair("d1")], "wrong base"),
            (pair("base"), [pair("d1", memory: "filled.mem")], "is corrupt"),
            (pair("base"), [pair("d1", memory: "flipped.mem")], "is corrupt"),
            (pair("base"), [pair("d1", memory: "short.mem")], "truncated"),
            (pair("base", memory: "short.mem"), [pair("d1")], "truncated"),
            (pair("base"), [pair("base")], "is a Full snapshot, not a diff"),
            (pair("base"), [pair("orphan", memory: "d1.mem")], "before any other snapshot"),
            (pair("d1"), [pair("d2")], "is the diff \(file("d1.state"))'s own memory file"),
        ]
        for (base, diffs, expected) in refusals {
            do {
                _ = try SnapshotMemoryMerge.merge(base: base, diffs: diffs)
                Issue.record("\(base) + \(diffs) was not refused")
            } catch {
                #expect("\(error)".contains(expected), "\(diffs.map(\.memory)): \(error)")
            }
        }
        #expect(try Self.contents(file("base.mem")) == baseBefore, "nothing was written over the base")
        #expect(!(try FileManager.default.contentsOfDirectory(atPath: directory.path)).contains { $0.hasSuffix(".kestrel-partial") })

        // The chain holds: base + d1 + d2 is RAM at d2; then (d2's state, the merge) is the base of nothing more, but a valid base.
        let report = try SnapshotMemoryMerge.merge(base: pair("base"), diffs: [pair("d1"), pair("d2")], output: file("merged.mem"))
        #expect(report.diffBytes == UInt64(3 * Self.page))
        #expect(try Self.contents(file("merged.mem")) == Array(mapping.bytes))
        // One diff at a time gives the same: the merge of d1 is d2's base, with d1's state.
        _ = try SnapshotMemoryMerge.merge(base: pair("base"), diffs: [pair("d1")], output: file("step.mem"))
        _ = try SnapshotMemoryMerge.merge(base: pair("d1", memory: "step.mem"), diffs: [pair("d2")])
        #expect(try Self.contents(file("step.mem")) == Array(mapping.bytes))
    }
}
