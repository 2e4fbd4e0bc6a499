import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import VMM

/// Kestrel's restore pager against a memory file with data and holes: each
/// page reads what the file holds there, through the guest's own accesses
/// and the kernel's; a discarded page reads zero afterwards; the prefault
/// brings in every data page and then lets go of RAM.
@Suite(.enabled(if: (try? Userfault()) != nil, "needs userfaultfd(2) with kernel faults (root or vm.unprivileged_userfaultfd)"),
       .timeLimit(.minutes(1)))
struct RestorePagerTests {
    static let page = MemoryMapping.pageSize
    static let pages = 1024  // 4 MiB: data in [0, 100), [300, 301) and [600, 1000); the rest holes

    /// A memory file with one region's bytes at `offset` (page `n` of it
    /// holds n's low byte repeated, for the data pages) and holes elsewhere.
    static func memoryFile(offset: Int) throws -> (fd: Int32, path: String) {
        let path = "/tmp/kestrel-pager-\(getpid())-\(offset).mem"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemCallError.current("open(\(path))") }
        unlink(path)
        #expect(ftruncate(fd, off_t(offset + pages * page)) == 0)
        for run in [0..<100, 300..<301, 600..<1000] {
            for index in run {
                let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: index | 1), count: page)
                #expect(pwrite(fd, bytes, page, off_t(offset + index * page)) == page)
            }
        }
        return (fd, path)
    }

    static func expected(_ index: Int) -> UInt8 {
        (0..<100).contains(index) || index == 300 || (600..<1000).contains(index) ? UInt8(truncatingIfNeeded: index | 1) : 0
    }

    static func pager(prefault: Bool, fileOffset: Int = 8192, discards: Bool = true) throws -> (RestorePager, MemoryMapping) {
        let file = try memoryFile(offset: fileOffset)
        defer { close(file.fd) }
        let mapping = try MemoryMapping(anonymousSize: pages * page)
        let start = off_t(fileOffset)
        let extents = try SnapshotMemoryFile.dataExtents(of: file.fd, in: start..<(start + off_t(pages * page)), what: "test file")
        let region = RestorePager.Region(start: UInt(bitPattern: mapping.baseAddress), size: mapping.size, fileOffset: fileOffset,
                                         extents: extents.map { Int($0.lowerBound - start)..<Int($0.upperBound - start) })
        return (try RestorePager(regions: [region], memoryFile: file.fd, fileSize: fileOffset + pages * page, prefault: prefault, discards: discards, log: { _ in }), mapping)
    }

    @Test func everyPageReadsWhatTheFileHoldsAndADiscardedPageReadsZero() throws {
        let (pager, mapping) = try Self.pager(prefault: false)
        defer { pager.stop() }
        // The kernel's own access (as KVM's are): write(2) from guest RAM to a pipe.
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        #expect(write(ends[1], mapping.baseAddress + 650 * Self.page, 8) == 8)
        var copied = [UInt8](repeating: 0, count: 8)
        #expect(read(ends[0], &copied, 8) == 8 && copied == [UInt8](repeating: Self.expected(650), count: 8))
        for index in stride(from: 0, to: Self.pages, by: 7) {
            let byte = mapping.bytes[index * Self.page + 123]
            #expect(byte == Self.expected(index), "page \(index)")
        }
        // A write to a hole page lands (a zero page first, then the kernel's copy).
        mapping.bytes[200 * Self.page] = 0x77
        #expect(mapping.bytes[200 * Self.page] == 0x77)
        // Discarded (a balloon's MADV_DONTNEED): zero from now on, not the file's bytes.
        #expect(mapping.bytes[42 * Self.page] == Self.expected(42))
        try mapping.advise(offset: 40 * Self.page, length: 4 * Self.page, MADV_DONTNEED)
        for index in 40..<44 { #expect(mapping.bytes[index * Self.page + 5] == 0, "discarded page \(index)") }
        #expect(mapping.bytes[44 * Self.page] == Self.expected(44))
        #expect(!pager.serverEnded && !pager.isPrefaulted, "an on-demand pager serves until it is stopped")
    }

    @Test func extentsAreRoundedOutToWholePages() {
        #expect(RestorePager.pageExtents([100..<5000, 5000..<9000, 20000..<20001], size: 32768) == [0..<12288, 16384..<20480])
        #expect(RestorePager.pageExtents([30000..<40000], size: 32768) == [28672..<32768], "clipped to the region")
    }

    @Test func thePrefaultBringsInEveryDataPageAndThenLetsGo() throws {
        // No balloon: events are read without the fill lock's writer side.
        let (pager, mapping) = try Self.pager(prefault: true, fileOffset: 0, discards: false)
        defer { pager.stop() }
        #expect(pager.waitUntilPrefaulted(timeout: .seconds(20)), "the prefault ends")
        let present = try SnapshotMemoryFile.pagemapPresence(of: mapping)
        let dataPages = (0..<Self.pages).filter { Self.expected($0) != 0 }
        #expect(dataPages.allSatisfy { present[$0] }, "every data page is in")
        #expect(!present[150] && !present[1020], "holes are left to the kernel")
        for index in 0..<Self.pages { if mapping.bytes[index * Self.page + 4095] != Self.expected(index) { Issue.record("page \(index)"); break } }
        // Unregistered: a discard now is the kernel's business alone.
        try mapping.advise(offset: 0, length: Self.page, MADV_DONTNEED)
        #expect(mapping.bytes[0] == 0)
    }
}
