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
    /// Whom to tell when RAM can no longer be filled (every vCPU that then
    /// touches a missing page would wait for ever): `Machine.run` ends the run.
    func onFailure(_ handler: @escaping @Sendable (String) -> Void)
}

/// Kestrel's in-process pager for a restore with `paging` OnDemand or
/// Prefault: guest RAM is anonymous memory registered with a userfaultfd
/// (missing mode), and a server thread fills each page on its first touch,
/// by the guest (KVM's fault) or by Kestrel, from the snapshot's memory file:
/// UFFDIO_COPY for the file's data (up to `faultCluster` bytes from the
/// fault, within one data extent), UFFDIO_ZEROPAGE for its holes.
///
/// With `prefault`, a second thread at nice 19 (a small share of a CPU the
/// guest wants, all of one it leaves idle) copies the file's data
/// extents in address order, `prefaultChunk` bytes at a time. When all are
/// in it unregisters RAM and unmaps the file: the pages still missing are
/// the file's holes, which the kernel fills with zeros on its own, and the
/// machine no longer needs the file.
///
/// A balloon's discard (MADV_DONTNEED) in registered RAM arrives as a remove
/// event first (UFFD_FEATURE_EVENT_REMOVE); the pages it names are zero from
/// then on, so a later fault there gets a zero page, not the file's old
/// bytes, and the prefault passes over them. Fills check the discarded pages
/// and copy as readers of one lock, side by side; with a balloon, events are
/// read and removes marked as its writer, so no fill can land after the
/// discard it missed (without one no discard can come, and a fault never
/// waits behind a prefault chunk).
final class RestorePager: LazyRAMFiller, @unchecked Sendable {
    // @unchecked: `pending` is the server thread's alone; `fills` and
    // `sourceMapped` are behind `fillLock` (and `deinit` comes after both
    // threads end); `threads` is touched by init and `stop` only; the rest
    // of what both threads use is behind `control` or atomic; everything
    // else never changes.

    /// One RAM region: its mapping and where its bytes lie in the file.
    struct Region {
        let start: UInt
        let size: Int
        let fileOffset: Int
        /// The file's data extents within the region, as byte ranges of it.
        let extents: [Range<Int>]
    }

    static let faultCluster = 64 << 10
    static let prefaultChunk = 128 << 10
    private static let page = MemoryMapping.pageSize

    private let userfault: Userfault
    private let regions: [Region]
    /// The memory file mapped read-only: UFFDIO_COPY's source.
    private let source: UnsafeRawPointer
    private let sourceSize: Int
    private let prefault: Bool
    private let log: @Sendable (String) -> Void
    private let started = ContinuousClock.now

    /// What fills depend on: the pages discarded and whether RAM is still
    /// registered. Fills read it holding `fillLock` as readers (both
    /// threads at once); a discard and the prefault's end change it as the
    /// writer, so no fill straddles either.
    private struct Fills {
        /// Per region, a bit per page discarded since the restore (reads zero).
        var discarded: [[UInt64]]
        /// RAM is registered and the file mapped (until the prefault lets go).
        var registered = true
    }
    private let fillLock = ReadWriteLock()
    private nonisolated(unsafe) var fills: Fills
    private let faultsServed = Atomic<Int>(0)
    private let bytesPrefaulted = Atomic<Int>(0)
    /// Faults read while a fill waited for a remove event (server thread only).
    private var pending: [UInt] = []

    private struct Control {
        var stopRequested = false
        var failureHandler: (@Sendable (String) -> Void)?
        var seccomp: SeccompPolicy?
        /// Threads running and not yet under `seccomp`.
        var unconfined: Int
        var prefaultDone = false
        var serverDone = false
    }
    private let control: Mutex<Control>
    private let controlChanged = ConditionLock()
    private let wakeUp: EventNotifier
    private var threads: [POSIXThread] = []

    /// With `discards` (a balloon that may discard RAM), events are read as
    /// the fill lock's writer, so that no fill lands after a discard it
    /// missed; without, no discard can come, and a fault is never kept
    /// waiting behind a prefault chunk.
    private let discards: Bool

    /// Registers `regions` with a new userfaultfd, maps the memory file
    /// `fd` (kept by the mapping; the caller may close it) and starts the
    /// server thread, and with `prefault` the prefault thread.
    init(regions: [Region], memoryFile fd: Int32, fileSize: Int, prefault: Bool, discards: Bool,
         log: @escaping @Sendable (String) -> Void) throws {
        wakeUp = try EventNotifier()
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
        self.discards = discards
        self.log = log
        fills = Fills(discarded: regions.map { [UInt64](repeating: 0, count: ($0.size / Self.page + 63) / 64) })
        control = Mutex(Control(unconfined: prefault ? 2 : 1))
        do {
            threads.append(try POSIXThread.start { [self] in
                POSIXThread.setCurrentName("pager")
                serveFaults()
            })
            if prefault {
                threads.append(try POSIXThread.start { [self] in
                    POSIXThread.setCurrentName("prefault")
                    prefaultAll()
                })
            }
        } catch {
            stop()
            throw error
        }
    }

    deinit { munmapIfMapped() }

    private var sourceMapped = true
    private func munmapIfMapped() {
        if sourceMapped { munmap(UnsafeMutableRawPointer(mutating: source), sourceSize) }
        sourceMapped = false
    }

    func onFailure(_ handler: @escaping @Sendable (String) -> Void) {
        control.withLock { $0.failureHandler = handler }
    }

    /// Rounds each extent out to whole pages (a file system with blocks
    /// smaller than a page may report data from mid-page), clipped to the
    /// region, and joins those that then touch.
    static func pageExtents(_ extents: [Range<Int>], size: Int) -> [Range<Int>] {
        var rounded: [Range<Int>] = []
        for extent in extents {
            let low = extent.lowerBound / page * page, high = min(size, (extent.upperBound + page - 1) / page * page)
            guard low < high else { continue }
            if let last = rounded.last, low <= last.upperBound {
                rounded[rounded.count - 1] = last.lowerBound..<max(last.upperBound, high)
            } else {
                rounded.append(low..<high)
            }
        }
        return rounded
    }

    func confine(_ seccomp: SeccompPolicy) {
        controlChanged.withLockBroadcasting { control.withLock { $0.seccomp = seccomp } }
        wakeUp.signal()
        controlChanged.wait(until: { control.withLock { $0.unconfined == 0 } }) {}
    }

    /// Whether the prefault has brought every data page in and let go of RAM.
    var isPrefaulted: Bool { control.withLock { $0.prefaultDone } }

    /// Whether the server thread has ended (after `stop`, or a fill the kernel refused).
    var serverEnded: Bool { control.withLock { $0.serverDone } }

    /// Waits up to `timeout` for the prefault to end; true if it has.
    func waitUntilPrefaulted(timeout: Duration) -> Bool {
        controlChanged.wait(until: { control.withLock { $0.prefaultDone } }, timeout: timeout)
    }

    func stop() {
        controlChanged.withLockBroadcasting { control.withLock { $0.stopRequested = true } }
        wakeUp.signal()
        for thread in threads { thread.join() }
        threads = []
    }

    /// At the top of each thread's loop: installs the pager list once asked;
    /// returns whether the thread is to stop.
    private func checkControl(confined: inout Bool) -> Bool {
        let (stopping, seccomp) = control.withLock { ($0.stopRequested, $0.seccomp) }
        if let seccomp, !confined {
            seccomp.enter(.pager)
            confined = true
            controlChanged.withLockBroadcasting { control.withLock { $0.unconfined -= 1 } }
        }
        return stopping
    }

    private func threadEnded(confined: Bool, _ change: (inout Control) -> Void) {
        controlChanged.withLockBroadcasting {
            control.withLock {
                if !confined { $0.unconfined -= 1 }
                change(&$0)
            }
        }
    }

    // MARK: The server thread

    private func serveFaults() {
        var confined = false
        defer { threadEnded(confined: confined) { $0.serverDone = true } }
        do {
            while !checkControl(confined: &confined) {
                try readEvents()
                while let address = pending.popLast() { try serveFault(at: address) }
                waitForEvents()
            }
        } catch {
            // A vCPU waiting on a page nobody fills waits for ever: end the run.
            let message = "restore pager: \(error); guest RAM can no longer be filled from the memory file"
            log(message)
            control.withLock { $0.failureHandler }?(message)
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

    /// Reads every pending event: removes are marked at once, faults queued.
    /// Read as the lock's writer: a fill begun before a remove event is read
    /// ends before it (the discard then zaps what it copied), and one begun
    /// after sees the mark; none lands in between, after the zap.
    private func readEvents() throws {
        func read() throws {
            while let event = try userfault.nextEvent() {
                switch event {
                case .pageFault(let address, _): pending.append(address & ~UInt(Self.page - 1))
                case .removed(let start, let end):
                    if discards { Self.markDiscarded(start..<end, in: &fills, regions: regions) } else {
                        fillLock.withWriteLock { Self.markDiscarded(start..<end, in: &fills, regions: regions) }
                    }
                case .other, .writeProtectFault: break  // nothing here is write-protected
                }
            }
        }
        if discards { try fillLock.withWriteLock { try read() } } else { try read() }
    }

    private static func markDiscarded(_ range: Range<UInt>, in fills: inout Fills, regions: [Region]) {
        for (index, region) in regions.enumerated() {
            let low = max(range.lowerBound, region.start), high = min(range.upperBound, region.start + UInt(region.size))
            guard low < high else { continue }
            for page in (Int(low - region.start) / Self.page)..<((Int(high - region.start) + Self.page - 1) / Self.page) {
                fills.discarded[index][page / 64] |= 1 << UInt64(page % 64)
            }
        }
    }

    private static func isDiscarded(_ fills: Fills, region: Int, page: Int) -> Bool {
        fills.discarded[region][page / 64] & (1 << UInt64(page % 64)) != 0
    }

    /// `[offset, end)` of region `index`, cut short at its first discarded
    /// page after the first.
    private static func undiscarded(_ fills: Fills, region index: Int, from offset: Int, to end: Int) -> Int {
        var next = offset / page + 1
        while next * page < end {
            if isDiscarded(fills, region: index, page: next) { return next * page }
            next += 1
        }
        return end
    }

    /// Fills the page at `address`: the file's bytes there and after it (up
    /// to `faultCluster`, within its extent, up to a discarded page), or a
    /// zero page in a hole or a discarded page.
    private func serveFault(at address: UInt) throws {
        guard let index = regions.firstIndex(where: { address >= $0.start && address < $0.start + UInt($0.size) }) else { return }
        let region = regions[index]
        let offset = Int(address - region.start)
        let extent = region.extents.first { $0.contains(offset) }
        while true {
            let result = try fillLock.withReadLock { () -> Userfault.Fill? in
                // Once the prefault let go, the kernel serves the fault itself.
                guard fills.registered else { return nil }
                faultsServed.add(1, ordering: .relaxed)
                if let extent, !Self.isDiscarded(fills, region: index, page: offset / Self.page) {
                    let end = Self.undiscarded(fills, region: index, from: offset,
                                               to: min(extent.upperBound, (offset / Self.faultCluster + 1) * Self.faultCluster))
                    return try userfault.copy(to: address, from: source + region.fileOffset + offset, length: end - offset)
                }
                return try userfault.zeroPage(start: address, length: Self.page)
            }
            switch result {
            case nil, .filled?: return
            case .alreadyPresent?:
                try userfault.wake(start: address, length: Self.page)
                return
            case .retry?:
                // A remove event waits to be read before any fill can go on.
                try readEvents()
            }
        }
    }

    // MARK: The prefault thread

    private func prefaultAll() {
        var confined = false
        var finished = false
        defer { threadEnded(confined: confined) { $0.prefaultDone = finished } }
        // Nice 19: about 1.5% of a CPU against a busy vCPU at nice 0, so the
        // copy neither delays the guest (at nice 0 it doubled a lab guest's
        // first answer) nor starves (SCHED_IDLE never finished beside a
        // guest that kept its one CPU busy).
        try? POSIXThread.setCurrentNice(19)
        do {
            for (index, region) in regions.enumerated() {
                for extent in region.extents {
                    var offset = extent.lowerBound
                    while offset < extent.upperBound {
                        if checkControl(confined: &confined) { return }
                        offset = try prefaultChunk(region: index, at: offset, extentEnd: extent.upperBound)
                    }
                }
            }
            try fillLock.withWriteLock {
                fills.registered = false
                for region in regions { try userfault.unregister(start: region.start, length: region.size) }
                munmapIfMapped()
            }
            let bytes = bytesPrefaulted.load(ordering: .relaxed), faults = faultsServed.load(ordering: .relaxed)
            finished = true
            let elapsed = (ContinuousClock.now - started).components
            let milliseconds = Double(elapsed.seconds) * 1000 + Double(elapsed.attoseconds) / 1e15
            log("restore pager: all \(bytes >> 10) KiB of the memory file's data prefaulted, "
                + "\(faults) faults served on demand, in \(Int(milliseconds.rounded())) ms; RAM no longer needs the file")
        } catch {
            log("restore pager: the prefault stopped: \(error); pages are still filled on demand")
        }
    }

    /// Copies one chunk from `offset` of region `index` (not past the
    /// extent's end or a discarded page); returns where the next starts.
    private func prefaultChunk(region index: Int, at offset: Int, extentEnd: Int) throws -> Int {
        let region = regions[index]
        let result = try fillLock.withReadLock { () -> (Userfault.Fill, Int) in
            if Self.isDiscarded(fills, region: index, page: offset / Self.page) { return (.alreadyPresent, 0) }
            let end = Self.undiscarded(fills, region: index, from: offset, to: min(extentEnd, offset + Self.prefaultChunk))
            let fill = try userfault.copy(to: region.start + UInt(offset), from: source + region.fileOffset + offset, length: end - offset)
            if case .filled(let count) = fill { bytesPrefaulted.add(count, ordering: .relaxed) }
            return (fill, end)
        }
        switch result.0 {
        case .filled(let count): return offset + count
        case .alreadyPresent: return offset + Self.page
        case .retry:
            // The server reads the remove event; then the chunk goes again.
            usleep(1000)
            return offset
        }
    }
}
