import Glibc
import GuestMemory
import HostSystem

/// Guest RAM copied into a memory file while the guest runs, as it was at
/// one instant: copy-on-write through userfaultfd write protection.
///
/// RAM must be shared memory (`MemoryMapping.sharedMemoryFile`, a memfd):
/// its data extents at the instant are what the copy takes, and a page that
/// was a hole then stays a hole in the file whatever the guest writes there
/// later. The steps:
/// 1. `init` (guest running): a userfaultfd, RAM registered in write-protect
///    mode. Nothing is protected yet.
/// 2. `protect` (guest paused, devices quiesced): the memfds' data extents
///    are read (lseek SEEK_DATA) and write-protected (UFFDIO_WRITEPROTECT).
///    This is the instant; the pause ends after it.
/// 3. `copy` (guest running): the extents go to the file a chunk at a time,
///    each chunk's protection lifted once it is written. Between chunks, a
///    write to a protected page (the guest's, through KVM, or a device's)
///    waits as a fault until its page is written out first; so it waits for
///    at most one chunk.
/// 4. `release`, always: every protection lifted (waking any writer still
///    waiting) and RAM unregistered, whether or not the copy finished.
///
/// One thread drives it from `protect` to `release`; it must not write guest
/// RAM itself in between (it would wait on its own fault).
final class LiveMemoryCopy {
    /// A RAM region: its mapping and where its bytes go in the memory file.
    struct Region {
        let mapping: MemoryMapping
        let fileOffset: off_t
        /// Page-rounded byte ranges of the mapping that held data at the instant.
        var extents: [Range<Int>] = []
        /// One bit per page: written to the file (and protection lifted).
        var copied: [UInt64]

        var start: UInt { UInt(bitPattern: mapping.baseAddress) }
    }

    /// What the copy did, for the snapshot's report.
    struct Counts {
        var bytesWritten: UInt64 = 0
        /// Writes that waited for their page to be copied first.
        var faults = 0
    }

    static let page = MemoryMapping.pageSize
    /// Bytes copied between two looks at the fault queue.
    static let chunk = 1 << 20

    private let userfault: Userfault
    private var regions: [Region]
    private var registered: [Region] = []
    private(set) var counts = Counts()

    /// Opens a userfaultfd that can write-protect shared memory and registers
    /// every region in write-protect mode. Throws, naming what the host
    /// lacks, when it cannot.
    init(regions: [(mapping: MemoryMapping, fileOffset: UInt64)]) throws {
        guard regions.allSatisfy({ $0.mapping.sharedMemoryFile != nil }) else {
            throw SnapshotError("a live snapshot needs shared guest RAM (machine-config memory_backend \"shared\"): "
                + "write protection of this machine's RAM could not show which pages changed")
        }
        let userfault: Userfault
        do { userfault = try Userfault(features: Userfault.writeProtectShared) } catch {
            throw SnapshotError("a live snapshot needs a userfaultfd that write-protects shared memory "
                + "(UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19): \(error)")
        }
        self.userfault = userfault
        self.regions = regions.map { region in
            Region(mapping: region.mapping, fileOffset: off_t(region.fileOffset),
                   copied: [UInt64](repeating: 0, count: (region.mapping.size / Self.page + 63) / 64))
        }
        do {
            for region in self.regions {
                try userfault.registerWriteProtect(start: region.start, length: region.mapping.size)
                registered.append(region)
            }
        } catch {
            release()
            throw SnapshotError("a live snapshot could not register guest RAM for write protection: \(error)")
        }
    }

    /// The instant: reads each memfd's data extents and write-protects them.
    /// Call with the guest paused and the devices quiesced. Returns the bytes
    /// of data the copy will write.
    func protect() throws -> UInt64 {
        var total: UInt64 = 0
        for index in regions.indices {
            let mapping = regions[index].mapping
            let extents = try SnapshotMemoryFile.dataExtents(of: mapping.sharedMemoryFile!, in: 0..<off_t(mapping.size), what: "guest RAM's memfd")
            regions[index].extents = RestorePager.pageExtents(extents.map { Int($0.lowerBound)..<Int($0.upperBound) }, size: mapping.size)
            for extent in regions[index].extents {
                try userfault.writeProtect(start: regions[index].start + UInt(extent.lowerBound), length: extent.count)
                total += UInt64(extent.count)
            }
        }
        return total
    }

    /// Writes every protected extent into `file` (laid out as
    /// `SnapshotMemoryFile.write` lays a Full one out), serving faults
    /// between chunks. Call after the guest resumed.
    func copy(into file: AtomicFile) throws {
        for index in regions.indices {
            for extent in regions[index].extents {
                var offset = extent.lowerBound
                while offset < extent.upperBound {
                    try serveFaults(into: file)
                    let end = min(extent.upperBound, offset + Self.chunk)
                    try copyPages(region: index, offset..<end, into: file)
                    offset = end
                }
            }
        }
        try serveFaults(into: file)
    }

    /// Lifts every protection (waking writers still waiting) and unregisters
    /// RAM. Safe to call more than once, and after any failure.
    func release() {
        for region in registered {
            try? userfault.removeWriteProtection(start: region.start, length: region.mapping.size)
            try? userfault.unregister(start: region.start, length: region.mapping.size)
        }
        registered = []
    }

    /// Writes the pages of `range` (of region `index`) not yet copied, then
    /// lifts the range's protection.
    private func copyPages(region index: Int, _ range: Range<Int>, into file: AtomicFile) throws {
        var page = range.lowerBound / Self.page
        let last = range.upperBound / Self.page
        while page < last {
            guard !isCopied(index, page) else { page += 1; continue }
            let first = page
            while page < last && !isCopied(index, page) { markCopied(index, page); page += 1 }
            let bytes = (page - first) * Self.page
            // Sound: the run lies inside the region's mapping (whole pages of it); its pages are write-protected,
            // so they hold the instant's bytes while they are read.
            try file.write(UnsafeRawPointer(regions[index].mapping.baseAddress + first * Self.page), count: bytes,
                           at: regions[index].fileOffset + off_t(first * Self.page))
            counts.bytesWritten += UInt64(bytes)
        }
        try userfault.removeWriteProtection(start: regions[index].start + UInt(range.lowerBound), length: range.count)
    }

    /// Reads every pending fault and copies its page first (if it held data
    /// at the instant and is not copied yet), then lets the write go on.
    private func serveFaults(into file: AtomicFile) throws {
        while let event = try userfault.nextEvent() {
            guard case .writeProtectFault(let address) = event else { continue }
            let pageAddress = address & ~UInt(Self.page - 1)
            guard let index = regions.firstIndex(where: { pageAddress >= $0.start && pageAddress < $0.start + UInt($0.mapping.size) }) else {
                continue
            }
            counts.faults += 1
            let offset = Int(pageAddress - regions[index].start)
            if regions[index].extents.contains(where: { $0.contains(offset) }) {
                try copyPages(region: index, offset..<(offset + Self.page), into: file)
            } else {
                try userfault.removeWriteProtection(start: pageAddress, length: Self.page)
            }
        }
    }

    private func isCopied(_ region: Int, _ page: Int) -> Bool { regions[region].copied[page / 64] & (1 << UInt64(page % 64)) != 0 }
    private func markCopied(_ region: Int, _ page: Int) { regions[region].copied[page / 64] |= 1 << UInt64(page % 64) }
}
