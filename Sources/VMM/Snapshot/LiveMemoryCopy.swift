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
/// 2. `protectAhead` (guest running): the memfds' data extents are read
///    (lseek SEEK_DATA) and all of RAM is write-protected
///    (UFFDIO_WRITEPROTECT; holes get the kernel's markers), which takes
///    time in proportion to RAM. Until the pause, `serveAhead` lifts the
///    protection of each page written meanwhile and notes it, and notes the
///    ranges a discard took.
/// 3. `protect` (guest paused, devices quiesced): the data at the instant
///    is the extents of step 2, less the discarded ranges, plus the pages
///    written and what the discarded ranges hold now; the pages written and
///    that data are protected again. This is the instant; the pause ends
///    after it, and it is short because step 2 did the bulk of the work.
///    Without step 2 (a machine paused already) it reads the extents and
///    protects them.
/// 4. `copy` (guest running): the extents go to the file a chunk at a time,
///    each chunk's protection lifted once it is written. Between chunks, a
///    write to a protected page (the guest's, through KVM, or a device's)
///    waits as a fault until its page is written out first; so it waits for
///    at most one chunk.
/// 5. `release`, always: every protection lifted (waking any writer still
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
        /// The data extents when `protectAhead` protected all of RAM (nil without it).
        var ahead: [Range<Int>]?
        /// Pages whose protection was lifted for a write since `protectAhead`.
        var written: [Range<Int>] = []
        /// Byte ranges discarded since `protectAhead`.
        var discarded: [Range<Int>] = []
        /// One bit per page: written to the file (and protection lifted).
        var copied: [UInt64]

        var start: UInt { UInt(bitPattern: mapping.baseAddress) }
    }

    /// What the copy did, for the snapshot's report.
    struct Counts {
        var bytesWritten: UInt64 = 0
        /// Writes to data of the instant that waited for it to be copied
        /// (writes to holes wait too, only for the protection to go).
        var faults = 0
    }

    static let page = MemoryMapping.pageSize
    /// Bytes copied between two looks at the fault queue.
    static let chunk = 1 << 20

    private let userfault: Userfault
    private var regions: [Region]
    /// Pages whose writers wait, read from the userfaultfd and not yet answered.
    private var pendingFaults: [UInt] = []
    /// Whether the instant has passed (`protect`).
    private var copying = false
    private var registered: [Region] = []
    private(set) var counts = Counts()

    /// Opens a userfaultfd that can write-protect shared memory and registers
    /// every region in write-protect mode. Throws, naming what the host
    /// lacks, when it cannot.
    init(regions: [(mapping: MemoryMapping, fileOffset: UInt64)]) throws {
        guard regions.allSatisfy({ $0.mapping.sharedMemoryFile != nil }) else {
            throw SnapshotError("a live snapshot needs guest RAM in shared memory (machine-config memory_backend \"shared\", or a "
                + "snapshot of such a machine loaded with mem_backend paging Eager): the copy takes the data from the memfd's extents")
        }
        let userfault: Userfault
        do { userfault = try Userfault(features: Userfault.writeProtectShared | Userfault.eventRemove) } catch {
            throw SnapshotError("a live snapshot needs a userfaultfd that takes the kernel's faults and write-protects shared memory "
                + "(UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19; root, vm.unprivileged_userfaultfd or /dev/userfaultfd): \(error)")
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

    /// Write-protects all of RAM while the guest runs; from here to
    /// `protect`, call `serveAhead` often (and while waiting for a pause:
    /// a vCPU or device thread may be waiting on a fault).
    func protectAhead() throws {
        for index in regions.indices {
            // Protected first: a page that becomes data after the protection faults, and is noted as written;
            // read the other way round, one written in between would be neither data nor noted.
            try setProtection(true, regions[index].start, regions[index].mapping.size)
            regions[index].ahead = try dataExtents(of: regions[index].mapping, in: 0..<regions[index].mapping.size)
        }
    }

    /// Before the instant: lifts the protection of each page written (the
    /// writer goes on at once) and notes it; discards are noted as they come.
    /// Returns the number of writes answered.
    @discardableResult
    func serveAhead() throws -> Int {
        try readEvents()
        let answered = pendingFaults.count
        while let page = pendingFaults.popLast() {
            guard let index = region(containing: page) else { continue }
            let offset = Int(page - regions[index].start)
            regions[index].written.append(offset..<(offset + Self.page))
            try setProtection(false, page, Self.page)
        }
        return answered
    }

    /// The instant: what RAM holds now, write-protected where it is not
    /// already (all of it without `protectAhead`). Call with the guest paused
    /// and the devices quiesced. Returns the bytes of data the copy will write.
    func protect() throws -> UInt64 {
        if regions.contains(where: { $0.ahead != nil }) { try serveAhead() }
        var total: UInt64 = 0
        for index in regions.indices {
            let mapping = regions[index].mapping
            let reprotect: [Range<Int>]
            if let ahead = regions[index].ahead {
                let discarded = Self.merge(regions[index].discarded)
                let stillThere = try discarded.flatMap { try dataExtents(of: mapping, in: $0) }
                // A page written and then discarded is a hole now: only what the discarded ranges still hold.
                reprotect = Self.merge(Self.subtract(Self.merge(regions[index].written), discarded) + stillThere)
                regions[index].extents = Self.merge(Self.subtract(ahead, discarded) + reprotect)
            } else {
                regions[index].extents = try dataExtents(of: mapping, in: 0..<mapping.size)
                reprotect = regions[index].extents
            }
            for range in reprotect { try setProtection(true, regions[index].start + UInt(range.lowerBound), range.count) }
            total += regions[index].extents.reduce(UInt64(0)) { $0 + UInt64($1.count) }
        }
        copying = true
        return total
    }

    /// Reads every pending event: write faults are queued (`pendingFaults`),
    /// discards handled at once. A discard waits until its event is read, so
    /// it is not over yet: before the instant its range is noted (its data
    /// is read again at the instant). After it, a discard of data not yet
    /// copied throws (the file would get zeros there); otherwise its pages
    /// count as copied (reading them would allocate them again).
    private func readEvents() throws {
        while let event = try userfault.nextEvent() {
            switch event {
            case .writeProtectFault(let address):
                pendingFaults.append(address & ~UInt(Self.page - 1))
            case .removed(let start, let end):
                for index in regions.indices {
                    let low = max(start, regions[index].start), high = min(end, regions[index].start + UInt(regions[index].mapping.size))
                    guard low < high else { continue }
                    let range = Int(low - regions[index].start)..<Int(high - regions[index].start)
                    if !copying {
                        regions[index].discarded.append(range)
                        continue
                    }
                    // After the instant (the snapshot holds the balloon's discards meanwhile: this is someone
                    // else's), pages not yet copied lose their data before they can be: the file would be wrong.
                    let pages = (range.lowerBound / Self.page)..<((range.upperBound + Self.page - 1) / Self.page)
                    if let lost = pages.first(where: { !isCopied(index, $0) && holdsData(index, $0 * Self.page) }) {
                        throw SnapshotError("guest RAM at offset 0x\(String(lost * Self.page, radix: 16)) was discarded (MADV_REMOVE or "
                            + "MADV_DONTNEED) before the live snapshot had copied it; the snapshot is abandoned")
                    }
                    for page in pages { markCopied(index, page) }
                }
            case .pageFault, .other:
                break
            }
        }
    }

    /// UFFDIO_WRITEPROTECT on or off over `[start, start + length)`, again
    /// after reading the events while the kernel answers that the address
    /// space is changing (a discard's event waits to be read).
    private func setProtection(_ protect: Bool, _ start: UInt, _ length: Int) throws {
        while !(protect ? try userfault.writeProtect(start: start, length: length)
                        : try userfault.removeWriteProtection(start: start, length: length)) {
            try readEvents()
            sched_yield()
        }
    }

    /// The memfd's data extents within `range` (page aligned), rounded out to whole pages.
    private func dataExtents(of mapping: MemoryMapping, in range: Range<Int>) throws -> [Range<Int>] {
        let extents = try SnapshotMemoryFile.dataExtents(of: mapping.sharedMemoryFile!, in: off_t(range.lowerBound)..<off_t(range.upperBound),
                                                         what: "guest RAM's memfd")
        return RestorePager.pageExtents(extents.map { Int($0.lowerBound)..<Int($0.upperBound) }, size: mapping.size)
    }

    private func region(containing address: UInt) -> Int? {
        regions.firstIndex { address >= $0.start && address < $0.start + UInt($0.mapping.size) }
    }

    /// Sorted, overlapping or touching ranges joined.
    static func merge(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var merged: [Range<Int>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty {
            if let last = merged.last, range.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }

    /// What of `ranges` lies outside `removed` (both sorted and disjoint).
    static func subtract(_ ranges: [Range<Int>], _ removed: [Range<Int>]) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var cut = 0
        for range in ranges {
            var start = range.lowerBound
            while cut < removed.count && removed[cut].upperBound <= start { cut += 1 }
            var index = cut
            while index < removed.count && removed[index].lowerBound < range.upperBound {
                if removed[index].lowerBound > start { result.append(start..<removed[index].lowerBound) }
                start = max(start, removed[index].upperBound)
                index += 1
            }
            if start < range.upperBound { result.append(start..<range.upperBound) }
        }
        return result
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
            do { try setProtection(false, region.start, region.mapping.size) } catch {}
            try? userfault.unregister(start: region.start, length: region.mapping.size)
        }
        registered = []
        // A discard's event queued before the unregistering still holds its thread until read.
        while (try? userfault.nextEvent()) != nil {}
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
        try setProtection(false, regions[index].start + UInt(range.lowerBound), range.count)
    }

    /// Answers every pending write: its page is copied first (if it held
    /// data at the instant and is not copied yet), then the write goes on.
    private func serveFaults(into file: AtomicFile) throws {
        try readEvents()
        while let page = pendingFaults.popLast() {
            guard let index = region(containing: page) else { continue }
            let offset = Int(page - regions[index].start)
            if holdsData(index, offset) {
                counts.faults += 1
                try copyPages(region: index, offset..<(offset + Self.page), into: file)
            } else {
                try setProtection(false, page, Self.page)
            }
        }
    }

    /// Whether `offset` of region `index` held data at the instant (a binary search of its extents).
    private func holdsData(_ index: Int, _ offset: Int) -> Bool {
        let extents = regions[index].extents
        var low = 0, high = extents.count
        while low < high {
            let middle = (low + high) / 2
            if extents[middle].upperBound <= offset { low = middle + 1 } else { high = middle }
        }
        return low < extents.count && extents[low].contains(offset)
    }

    private func isCopied(_ region: Int, _ page: Int) -> Bool { regions[region].copied[page / 64] & (1 << UInt64(page % 64)) != 0 }
    private func markCopied(_ region: Int, _ page: Int) { regions[region].copied[page / 64] |= 1 << UInt64(page % 64) }
}
