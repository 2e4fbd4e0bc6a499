import Glibc
import GuestMemory
import HostSystem

/// Guest RAM in a snapshot's memory file: each RAM region's bytes at its
/// `MachineSnapshot.MemoryRange.fileOffset`, nothing else. The file is
/// sparse: only pages the guest has (pages never touched read as zero and
/// are holes), so a 1 GiB guest that used 40 MiB writes about 40 MiB.
enum SnapshotMemoryFile {
    /// lseek(2)'s whence values for data and holes (Linux; Glibc names them
    /// only under _GNU_SOURCE).
    private static let seekData: Int32 = 3, seekHole: Int32 = 4

    /// Writes `regions` into `file` (an `AtomicFile` the caller commits, so
    /// that the memory file and the state file are renamed into place
    /// together). Returns the ranges, the file's size and the bytes written.
    static func write(_ regions: [(start: UInt64, mapping: MemoryMapping, fromFile: Bool)], into file: AtomicFile) throws
        -> (ranges: [MachineSnapshot.MemoryRange], size: UInt64, written: UInt64) {
        try writeRuns(regions.map { region in
            (region.start, region.mapping, try populatedRuns(of: region.mapping, fileBacked: region.fromFile))
        }, into: file)
    }

    /// Lays the regions out one after another in `file` and writes the byte
    /// runs of each (ranges of its mapping) at their places; the rest stays
    /// holes. Returns the ranges, the file's size and the bytes written.
    private static func writeRuns(_ regions: [(start: UInt64, mapping: MemoryMapping, runs: [Range<Int>])], into file: AtomicFile) throws
        -> (ranges: [MachineSnapshot.MemoryRange], size: UInt64, written: UInt64) {
        let (ranges, size) = layout(regions.map { ($0.start, $0.mapping) })
        var written: UInt64 = 0
        for (region, range) in zip(regions, ranges) {
            for run in region.runs {
                // Sound: each run lies inside the guest mapping (whole pages of it).
                try file.write(UnsafeRawPointer(region.mapping.baseAddress + run.lowerBound), count: run.count,
                               at: off_t(range.fileOffset) + off_t(run.lowerBound))
                written += UInt64(run.count)
            }
        }
        return (ranges, size, written)
    }

    /// Where each region goes in a memory file: one after another, in order.
    /// Returns the ranges and the file's size.
    static func layout(_ regions: [(start: UInt64, mapping: MemoryMapping)]) -> (ranges: [MachineSnapshot.MemoryRange], size: UInt64) {
        var ranges: [MachineSnapshot.MemoryRange] = []
        var offset: UInt64 = 0
        for region in regions {
            ranges.append(.init(guestAddress: region.start, size: UInt64(region.mapping.size), fileOffset: offset))
            offset += UInt64(region.mapping.size)
        }
        return (ranges, offset)
    }

    /// Writes the pages each bitmap marks (bit `n` for the region's page
    /// `n`) at their places in a file laid out like `write`'s, zero pages
    /// included: in a diff a hole means "not changed", so a page the guest
    /// cleared must be there as zeros. Returns the ranges, the file's size
    /// and the bytes written.
    static func writeChanged(_ regions: [(start: UInt64, mapping: MemoryMapping, bitmap: [UInt64])], into file: AtomicFile) throws
        -> (ranges: [MachineSnapshot.MemoryRange], size: UInt64, written: UInt64) {
        let page = MemoryMapping.pageSize
        return try writeRuns(regions.map { region in
            (region.start, region.mapping, pageRuns(region.bitmap, pages: region.mapping.size / page).map { ($0.lowerBound * page)..<($0.upperBound * page) })
        }, into: file)
    }

    /// The runs of set bits among the first `pages` bits of `bitmap`, as page ranges.
    static func pageRuns(_ bitmap: [UInt64], pages: Int) -> [Range<Int>] {
        func isSet(_ index: Int) -> Bool { index / 64 < bitmap.count && bitmap[index / 64] & (1 << UInt64(index % 64)) != 0 }
        var runs: [Range<Int>] = []
        var index = 0
        while index < pages {
            // Whole empty words are skipped at once.
            if index % 64 == 0, index / 64 < bitmap.count, bitmap[index / 64] == 0 { index += 64; continue }
            guard isSet(index) else { index += 1; continue }
            let first = index
            while index < pages && isSet(index) { index += 1 }
            runs.append(first..<index)
        }
        return runs
    }

    /// For a Diff: when `path` is a regular file of exactly `size` bytes (an
    /// earlier snapshot's memory file, through a link too, as the target
    /// check follows them), copies its data extents into `file` and returns
    /// true, so that the diff lands on it; when there is no such file, or it
    /// has another size, returns false and the diff starts from holes.
    /// Any other failure to read it throws: a diff must not replace a base
    /// it was meant to land on.
    static func copyEarlierFile(_ path: String, ofSize size: UInt64, into file: AtomicFile) throws -> Bool {
        let source = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if source < 0 && errno == ENOENT { return false }
        guard source >= 0 else { throw SnapshotError("cannot read the earlier memory file \(path) to land the diff on: \(String(cString: strerror(errno)))") }
        defer { close(source) }
        var status = stat()
        guard fstat(source, &status) == 0, status.st_mode & S_IFMT == S_IFREG, UInt64(status.st_size) == size else { return false }
        try copyDataExtents(from: source, to: file.fd, size: off_t(size), what: "the earlier memory file \(path)")
        return true
    }

    /// Copies every data extent of `source` (lseek SEEK_DATA/SEEK_HOLE) in
    /// `[0, size)` to the same offsets of `target`, leaving its holes alone;
    /// returns the bytes copied. copy_file_range where the file systems
    /// allow it, pread/pwrite otherwise.
    @discardableResult
    static func copyDataExtents(from source: Int32, to target: Int32, size: off_t, what: String) throws -> UInt64 {
        var copied: UInt64 = 0
        var useCopyRange = true
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for extent in try dataExtents(of: source, in: 0..<size, what: what) {
            var done = extent.lowerBound
            while done < extent.upperBound {
                var result = -1
                if useCopyRange {
                    result = FileCopy.copyRange(from: source, at: Int(done), to: target, at: Int(done), length: Int(extent.upperBound - done))
                    if result < 0, [EXDEV, ENOSYS, EINVAL, EOPNOTSUPP].contains(errno) { useCopyRange = false; continue }
                } else {
                    let count = min(buffer.count, Int(extent.upperBound - done))
                    // Sound: at most `count` bytes, no more than the buffer holds, are read into it and written from it.
                    result = buffer.withUnsafeMutableBytes { pread(source, $0.baseAddress, count, done) }
                    if result > 0 {
                        let got = result
                        // A short write counts what it wrote; the rest is read again.
                        result = buffer.withUnsafeBytes { pwrite(target, $0.baseAddress, got, done) }
                        if result == 0 { result = -1; errno = ENOSPC }
                    }
                }
                if result < 0 && errno == EINTR { continue }
                guard result > 0 else {
                    throw SnapshotError("cannot copy \(what): \(result == 0 ? "it ends early" : String(cString: strerror(errno)))")
                }
                done += off_t(result)
                copied += UInt64(result)
            }
        }
        return copied
    }

    /// The data extents of `fd` within `range` (lseek SEEK_DATA and
    /// SEEK_HOLE), clipped to it; what lies between them are holes.
    static func dataExtents(of fd: Int32, in range: Range<off_t>, what: String) throws -> [Range<off_t>] {
        var extents: [Range<off_t>] = []
        var position = range.lowerBound
        while position < range.upperBound {
            let data = lseek(fd, position, seekData)
            if data < 0 && errno == ENXIO { break }  // only holes are left
            guard data >= 0 else { throw SnapshotError("cannot read \(what): \(String(cString: strerror(errno)))") }
            if data >= range.upperBound { break }
            let hole = min(lseek(fd, data, seekHole), range.upperBound)
            extents.append(data..<hole)
            position = hole
        }
        return extents
    }

    /// Byte ranges of `mapping` that may hold data, in page multiples.
    /// - Anonymous private memory: pages /proc/self/pagemap shows present or
    ///   swapped; any other page was never written and reads as zero.
    /// - Shared memory (a memfd): the file's data extents; its holes read as
    ///   zero, and reading them through the mapping would allocate them.
    /// - A guest_memfd (mapped shared): the pages its file holds, resident in
    ///   mincore(2) whether or not this process touched them (KVM fills them
    ///   from the file itself); reading the others through the mapping would
    ///   allocate them (and took 9 s for 1 GiB in the lab).
    /// - A memory file mapped from an earlier snapshot: every page, since the
    ///   file's pages are the guest's without a host page-table entry here.
    /// Of those, pages that are all zero are left out as well.
    static func populatedRuns(of mapping: MemoryMapping, fileBacked: Bool) throws -> [Range<Int>] {
        let page = MemoryMapping.pageSize
        let pages = mapping.size / page
        var present: [Bool]
        if let memfd = mapping.sharedMemoryFile {
            present = [Bool](repeating: false, count: pages)
            for extent in try dataExtents(of: memfd, in: 0..<off_t(mapping.size), what: "guest RAM's memfd") {
                for index in (Int(extent.lowerBound) / page)..<min(pages, (Int(extent.upperBound) + page - 1) / page) { present[index] = true }
            }
        } else if mapping.sharing == .shared {
            let resident = try DirtyPageTracker.residentPages(of: mapping)
            present = (0..<pages).map { resident[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
        } else {
            present = !fileBacked ? try pagemapPresence(of: mapping) : [Bool](repeating: true, count: pages)
        }
        // Of the pages that may hold data, those that are all zero need not be
        // written either (a huge page the guest touched in one place is
        // mostly zeros).
        let words = mapping.bytes.bindMemory(to: UInt64.self)
        let perPage = page / 8
        for index in 0..<pages where present[index] {
            var any: UInt64 = 0
            for word in (index * perPage)..<((index + 1) * perPage) { any |= words[word] }
            present[index] = any != 0
        }
        var runs: [Range<Int>] = []
        var index = 0
        while index < pages {
            guard present[index] else { index += 1; continue }
            let start = index
            while index < pages && present[index] { index += 1 }
            runs.append((start * page)..<(index * page))
        }
        return runs
    }

    /// For each page of `mapping`, whether /proc/self/pagemap shows it
    /// present or swapped (bits 63 and 62).
    static func pagemapPresence(of mapping: MemoryMapping) throws -> [Bool] {
        let page = MemoryMapping.pageSize
        let pages = mapping.size / page
        var present = [Bool](repeating: false, count: pages)
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SnapshotError("cannot read /proc/self/pagemap: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let chunk = 65536
        var entries = [UInt64](repeating: 0, count: chunk)
        var first = 0
        while first < pages {
            let count = min(chunk, pages - first)
            let offset = off_t((Int(bitPattern: mapping.baseAddress) / page + first) * 8)
            // Sound: pread writes at most count * 8 bytes into the buffer of `chunk` entries.
            let got = entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count * 8, offset) }
            guard got == count * 8 else { throw SnapshotError("cannot read /proc/self/pagemap: \(String(cString: strerror(errno)))") }
            for index in 0..<count { present[first + index] = entries[index] & (3 << 62) != 0 }
            first += count
        }
        return present
    }

    /// Copies the data extents of the memory file (seekData/seekHole) into
    /// `mapping`: for RAM that cannot be mapped from the file (guest_memfd).
    static func copy(from fd: Int32, range: MachineSnapshot.MemoryRange, into mapping: MemoryMapping, path: String) throws {
        let start = off_t(range.fileOffset)
        for extent in try dataExtents(of: fd, in: start..<(start + off_t(range.size)), what: "the memory file \(path)") {
            var done = extent.lowerBound
            while done < extent.upperBound {
                let target = mapping.baseAddress + Int(done - start)
                // Sound: [done, extent end) lies inside the range, so the target lies inside the mapping.
                let result = pread(fd, target, Int(extent.upperBound - done), done)
                if result < 0 && errno == EINTR { continue }
                guard result > 0 else { throw SnapshotError("cannot read the memory file \(path): it ends early") }
                done += off_t(result)
            }
        }
    }
}

/// A file written under a temporary name beside its path, finished (sized
/// and synced) and then renamed into place only when whole; `abandon`
/// removes it. The snapshot's state and memory files are written this way,
/// mode 0600, both finished before either is renamed (`publish`).
final class AtomicFile {
    let path: String
    let temporary: String
    /// The temporary file's descriptor (-1 once finished or abandoned).
    private(set) var fd: Int32
    /// Names the file in errors ("the memory file /tmp/vm.mem").
    let what: String

    init(creating path: String, what: String) throws {
        self.path = path
        self.what = what
        temporary = path + ".kestrel-partial"
        // Never through a link, and never waiting: O_NONBLOCK makes a FIFO
        // under the temporary name fail (ENXIO) and changes nothing for a
        // regular file.
        // Read too: a Diff's digest is taken from what was written.
        fd = open(temporary, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapshotError("cannot create \(what): \(String(cString: strerror(errno)))") }
    }

    /// Writes `count` bytes from `source` at `offset` (pwrite, until done).
    func write(_ source: UnsafeRawPointer, count: Int, at offset: off_t) throws {
        var done = 0
        while done < count {
            // Sound: the caller's range [source, source + count) is readable.
            let result = pwrite(fd, source + done, count - done, offset + off_t(done))
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw SnapshotError("cannot write \(what): \(String(cString: strerror(result < 0 ? errno : ENOSPC)))") }
            done += result
        }
    }

    /// Sets the size (when given), syncs and closes: the temporary file is
    /// whole, not yet under its name.
    func finish(size: UInt64? = nil) throws {
        if let size, ftruncate(fd, off_t(size)) != 0 { throw SnapshotError("cannot finish \(what): \(String(cString: strerror(errno)))") }
        guard fsync(fd) == 0 else { throw SnapshotError("cannot finish \(what): \(String(cString: strerror(errno)))") }
        close(fd)
        fd = -1
    }

    /// Renames finished files into place, in order. Each temporary file lies
    /// in its target's directory and each target was checked to be a new
    /// name or a regular file, so a rename can fail only if the file system
    /// changed meanwhile; the files not yet renamed are then removed.
    static func publish(_ files: [AtomicFile]) throws {
        for (index, file) in files.enumerated() where rename(file.temporary, file.path) != 0 {
            let reason = String(cString: strerror(errno))
            for rest in files[index...] { unlink(rest.temporary) }
            throw SnapshotError("cannot rename \(file.what) into place: \(reason)")
        }
    }

    /// Closes and removes the temporary file (after a failed write).
    func abandon() {
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(temporary)
    }
}
