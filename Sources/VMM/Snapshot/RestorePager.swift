import Glibc
import GuestMemory
import HostSystem
import Synchronization

/// What fills a lazily restored machine's RAM while it runs: Kestrel's own
/// pager thread, or the connection to an external page-fault handler.
protocol LazyRAMFiller: AnyObject, Sendable {
    /// Puts the filler's thread, if it has one, under `seccomp`'s pager
    /// list; returns once the list is in force. `Machine.run` calls it before
    /// any vCPU runs.
    func confine(_ seccomp: SeccompPolicy)
    /// Stops filling, once no vCPU or device touches RAM any more.
    func stop()
}

/// Kestrel's in-process pager for a restore with `paging` OnDemand or
/// Prefault: guest RAM is anonymous memory registered with a userfaultfd
/// (missing mode), and this thread fills each page on its first touch, by
/// the guest (KVM's fault) or by Kestrel, from the snapshot's memory file:
/// UFFDIO_COPY for the file's data (up to `faultCluster` bytes around the
/// fault, within one data extent), UFFDIO_ZEROPAGE for its holes.
///
/// With `prefault`, between faults it copies the file's data extents in
/// address order, `prefaultChunk` bytes at a time. When all are in it
/// unregisters RAM and closes the userfaultfd and the file: the pages still
/// missing are the file's holes, which the kernel fills with zeros on their
/// own, and the machine no longer needs the file.
///
/// A balloon's discard (MADV_DONTNEED) in registered RAM arrives as a
/// remove event first (UFFD_FEATURE_EVENT_REMOVE); the pages it names are
/// zero from then on, so a later fault there gets a zero page, not the
/// file's old bytes, and the prefault passes over them.
final class RestorePager: LazyRAMFiller, @unchecked Sendable {
    // @unchecked: everything below `control` is used by the pager thread
    // only, after `init` hands it over; `control` is behind its lock.

    /// One RAM region: its mapping and where its bytes lie in the file.
    struct Region {
        let start: UInt
        let size: Int
        let fileOffset: Int
        /// The file's data extents within the region, as byte ranges of it.
        let extents: [Range<Int>]
    }

    static let faultCluster = 64 << 10
    static let prefaultChunk = 256 << 10
    private static let page = MemoryMapping.pageSize

    private let userfault: Userfault
    private let regions: [Region]
    /// The memory file mapped read-only: UFFDIO_COPY's source.
    private let source: UnsafeRawPointer
    private let sourceSize: Int
    private var sourceMapped = true
    private let prefault: Bool
    private let log: @Sendable (String) -> Void
    /// Per region, a bit per page discarded since the restore (reads zero).
    private var discarded: [[UInt64]]
    /// The prefault's place: region, extent, byte offset in the region.
    private var cursor = (region: 0, extent: 0, offset: 0)
    private var faultsServed = 0
    private var bytesPrefaulted = 0
    private let wakeUp: EventNotifier
    private let started = ContinuousClock.now

    private struct Control {
        var stopRequested = false
        var seccomp: SeccompPolicy?
        var confined = false
        var finished = false
    }
    private let control = Mutex(Control())
    private let controlChanged = ConditionLock()
    private var thread: POSIXThread?

    /// Registers `regions` with a new userfaultfd, maps the memory file
    /// `fd` (kept by the mapping; the caller may close it) and starts the
    /// pager thread.
    init(regions: [Region], memoryFile fd: Int32, fileSize: Int, prefault: Bool, log: @escaping @Sendable (String) -> Void) throws {
        let userfault = try Userfault(features: Userfault.eventRemove)
        guard userfault.offeredFeatures & Userfault.eventRemove != 0 else {
            throw SnapshotError("this kernel's userfaultfd has no UFFD_FEATURE_EVENT_REMOVE, which the pager needs for balloon discards")
        }
        for region in regions { try userfault.registerMissing(start: region.start, length: region.size) }
        let mapped = mmap(nil, max(fileSize, 1), PROT_READ, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw SnapshotError("cannot map the memory file for the pager: \(String(cString: strerror(errno)))")
        }
        if prefault { _ = madvise(mapped, fileSize, MADV_SEQUENTIAL) }
        self.userfault = userfault
        self.regions = regions
        source = UnsafeRawPointer(mapped)
        sourceSize = max(fileSize, 1)
        self.prefault = prefault
        self.log = log
        discarded = regions.map { [UInt64](repeating: 0, count: ($0.size / Self.page + 63) / 64) }
        wakeUp = try EventNotifier()
        thread = try POSIXThread.start { [self] in
            POSIXThread.setCurrentName("pager")
            serve()
        }
    }

    deinit { unmapSource() }

    private func unmapSource() {
        if sourceMapped { munmap(UnsafeMutableRawPointer(mutating: source), sourceSize) }
        sourceMapped = false
    }

    func confine(_ seccomp: SeccompPolicy) {
        controlChanged.withLockBroadcasting { control.withLock { $0.seccomp = seccomp } }
        wakeUp.signal()
        controlChanged.wait(until: { control.withLock { $0.confined || $0.finished } }) {}
    }

    /// Whether the pager thread has ended: after a prefault that let go of
    /// RAM, after `stop`, or after a fill the kernel refused.
    var isFinished: Bool { control.withLock { $0.finished } }

    /// Waits up to `timeout` for the thread to end (a prefault's end); true if it has.
    func waitUntilFinished(timeout: Duration) -> Bool {
        controlChanged.wait(until: { control.withLock { $0.finished } }, timeout: timeout)
    }

    func stop() {
        controlChanged.withLockBroadcasting { control.withLock { $0.stopRequested = true } }
        wakeUp.signal()
        thread?.join()
        thread = nil
    }

    /// The pager thread: events first, then a prefault chunk or a wait.
    private func serve() {
        defer {
            controlChanged.withLockBroadcasting { control.withLock { $0.finished = true } }
        }
        do {
            while true {
                let (stopping, seccomp) = control.withLock { ($0.stopRequested, $0.confined ? nil : $0.seccomp) }
                if let seccomp {
                    seccomp.enter(.pager)
                    controlChanged.withLockBroadcasting { control.withLock { $0.confined = true } }
                }
                if stopping { return }
                try drainEvents()
                if prefault {
                    if try prefaultNextChunk() { continue }
                    try letGo()
                    return
                }
                waitForEvents()
            }
        } catch {
            // A fill the kernel refuses leaves a vCPU waiting for ever:
            // say so loudly rather than hang in silence.
            log("restore pager: \(error); guest RAM can no longer be filled from the memory file, and the guest will stop at its next missing page")
        }
    }

    /// Blocks until the userfaultfd or the wake-up eventfd is readable.
    private func waitForEvents() {
        var descriptors = [pollfd(fd: userfault.fileDescriptor, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: wakeUp.fileDescriptor, events: Int16(POLLIN), revents: 0)]
        // Sound: poll reads and writes the two entries of the array.
        _ = descriptors.withUnsafeMutableBufferPointer { poll($0.baseAddress, 2, -1) }
        wakeUp.drain()
    }

    private func drainEvents() throws {
        while let event = try userfault.nextEvent() {
            switch event {
            case .pageFault(let address, _):
                try serveFault(at: address & ~UInt(Self.page - 1))
                faultsServed += 1
            case .removed(let start, let end):
                markDiscarded(start..<end)
            case .other:
                break
            }
        }
    }

    private func region(containing address: UInt) -> Int? {
        regions.firstIndex { address >= $0.start && address < $0.start + UInt($0.size) }
    }

    private func isDiscarded(region: Int, page: Int) -> Bool {
        discarded[region][page / 64] & (1 << UInt64(page % 64)) != 0
    }

    private func markDiscarded(_ range: Range<UInt>) {
        for (index, region) in regions.enumerated() {
            let low = max(range.lowerBound, region.start), high = min(range.upperBound, region.start + UInt(region.size))
            guard low < high else { continue }
            var page = Int(low - region.start) / Self.page
            while page * Self.page < Int(high - region.start) {
                discarded[index][page / 64] |= 1 << UInt64(page % 64)
                page += 1
            }
        }
    }

    /// Fills the page at `address`: the file's bytes there and after it
    /// (up to `faultCluster`, within its extent, up to a discarded page),
    /// or a zero page in a hole or a discarded page.
    private func serveFault(at address: UInt) throws {
        guard let index = region(containing: address) else { return }
        let region = regions[index]
        let offset = Int(address - region.start)
        let page = offset / Self.page
        let extent = region.extents.first { $0.contains(offset) }
        while true {
            let result: Userfault.Fill
            if let extent, !isDiscarded(region: index, page: page) {
                var end = min(extent.upperBound, (offset / Self.faultCluster + 1) * Self.faultCluster)
                var next = page + 1
                while next * Self.page < end {
                    if isDiscarded(region: index, page: next) { end = next * Self.page; break }
                    next += 1
                }
                result = try userfault.copy(to: address, from: source + region.fileOffset + offset, length: end - offset)
            } else {
                result = try userfault.zeroPage(start: address, length: Self.page)
            }
            switch result {
            case .filled: return
            case .alreadyPresent:
                try userfault.wake(start: address, length: Self.page)
                return
            case .retry:
                try drainRemovals()
            }
        }
    }

    /// Reads pending events while a fill must wait for a remove event to be
    /// read; faults among them are served after it.
    private func drainRemovals() throws {
        var faults: [UInt] = []
        while let event = try userfault.nextEvent() {
            switch event {
            case .pageFault(let address, _): faults.append(address & ~UInt(Self.page - 1))
            case .removed(let start, let end): markDiscarded(start..<end)
            case .other: break
            }
        }
        for fault in faults { try serveFault(at: fault) }
    }

    /// Copies the next chunk of file data not yet in RAM; false once all is.
    private func prefaultNextChunk() throws -> Bool {
        while cursor.region < regions.count {
            let region = regions[cursor.region]
            guard cursor.extent < region.extents.count else {
                cursor = (cursor.region + 1, 0, 0)
                continue
            }
            let extent = region.extents[cursor.extent]
            let start = max(cursor.offset, extent.lowerBound)
            guard start < extent.upperBound else {
                cursor = (cursor.region, cursor.extent + 1, 0)
                continue
            }
            let page = start / Self.page
            if isDiscarded(region: cursor.region, page: page) {
                cursor.offset = start + Self.page
                return true
            }
            var end = min(extent.upperBound, start + Self.prefaultChunk)
            var next = page + 1
            while next * Self.page < end {
                if isDiscarded(region: cursor.region, page: next) { end = next * Self.page; break }
                next += 1
            }
            switch try userfault.copy(to: region.start + UInt(start), from: source + region.fileOffset + start, length: end - start) {
            case .filled(let count):
                bytesPrefaulted += count
                cursor.offset = start + count
            case .alreadyPresent:
                cursor.offset = start + Self.page
            case .retry:
                try drainRemovals()
                cursor.offset = start
            }
            return true
        }
        return false
    }

    /// After the prefault: RAM is the kernel's again; what is still missing
    /// is holes, which fault in as zero pages.
    private func letGo() throws {
        for region in regions { try userfault.unregister(start: region.start, length: region.size) }
        unmapSource()
        let elapsed = (ContinuousClock.now - started).components
        let milliseconds = Double(elapsed.seconds) * 1000 + Double(elapsed.attoseconds) / 1e15
        log("restore pager: all \(bytesPrefaulted >> 10) KiB of the memory file's data prefaulted, "
            + "\(faultsServed) faults served on demand, in \(Int(milliseconds.rounded())) ms; RAM no longer needs the file")
    }
}
