#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import HostSystem
import Synchronization

/// virtio-balloon (virtio 1.2, section 5.5), as Firecracker offers it: the
/// host sets a target (`num_pages`), the driver inflates by giving pages
/// (their 4 KiB frame numbers on the inflate queue), which Kestrel returns
/// to the host (madvise MADV_REMOVE, or MADV_DONTNEED for private memory),
/// and deflates by taking them back. Optional: a statistics queue the device
/// polls every `statisticsInterval`, DEFLATE_ON_OOM, free page reporting
/// (the driver hands over free ranges, which are returned to the host too),
/// and free page hinting (the host asks for a run with a new command id; the
/// driver lends the free blocks it can find until the host says DONE).
///
/// Queues are numbered as the Linux driver numbers those it finds: inflate 0,
/// deflate 1, then statistics, hinting and reporting when offered. Pages the
/// guest keeps private (a confidential VM's) are never discarded.
public final class BalloonDevice: VirtioDevice {
    public enum Feature {
        public static let mustTellHost: UInt64 = 1 << 0
        public static let statisticsQueue: UInt64 = 1 << 1
        public static let deflateOnOOM: UInt64 = 1 << 2
        public static let freePageHinting: UInt64 = 1 << 3
        public static let freePageReporting: UInt64 = 1 << 5
    }

    /// The two reserved values of `free_page_hint_cmd_id`: STOP (no run; the
    /// driver also sends it when its run is over) and DONE (the host is
    /// finished with the hinted blocks, which the driver takes back). A run
    /// is any other value.
    public enum HintCommand {
        public static let stop: UInt32 = 0
        public static let done: UInt32 = 1
    }

    /// The statistics the driver reports (tags 0 to 15), by Firecracker's names.
    public static let statisticNames = [
        "swap_in", "swap_out", "major_faults", "minor_faults", "free_memory", "total_memory", "available_memory", "disk_caches",
        "hugetlb_allocations", "hugetlb_failures", "oom_kill", "alloc_stall", "async_scan", "direct_scan", "async_reclaim", "direct_reclaim",
    ]
    public static let pageSize = 4096
    /// The largest inflate or deflate buffer taken: 16 Ki frames (64 MiB of guest pages).
    static let largestFrameList = 64 << 10

    public let deviceType = VirtioDeviceType.balloon
    public let offeredFeatures: UInt64
    public let queueSizes: [UInt16]
    let statisticsQueue: Int?
    let hintingQueue: Int?
    let reportingQueue: Int?
    private let context = Mutex<VirtioContext?>(nil)
    private let state: Mutex<State>
    /// Held while a hinted block is checked against the host's command id
    /// and returned, and while the host changes that id: once DONE (or a
    /// newer run) is visible to the driver, which may then reuse its blocks,
    /// no block of the old run is still being discarded.
    private let hinting = Mutex(())
    private let timer: TimerNotifier

    struct State {
        var targetPages: UInt32
        var actualPages: UInt32 = 0
        var interval: Duration
        /// The driver's statistics buffer, kept until the next poll.
        var heldStatistics: UInt16?
        /// Restored from a snapshot: the buffer held then is to be read again.
        var rereadStatistics = false
        var statistics: [String: UInt64] = [:]
        var counts: [String: Int] = [:]
        /// `free_page_hint_cmd_id` as the host last set it.
        var hostCommand = HintCommand.stop
        /// The last command id the driver sent (nil: none since the reset).
        var guestCommand: UInt32?
        /// The driver echoed the host's current run before its STOP.
        var runEchoed = false
        /// The last run's id, so the next one differs.
        var lastRun: UInt32 = HintCommand.done
        /// Say DONE as soon as the driver says its run is over.
        var acknowledgeOnStop = true
        /// Bumped with every change of the configuration space.
        var generation: UInt32 = 0

        /// The host's command id names a run (it is neither STOP nor DONE).
        var runInProgress: Bool { hostCommand != HintCommand.stop && hostCommand != HintCommand.done }
    }

    /// `targetMiB` to take from the guest at start; `statisticsInterval` of
    /// zero offers no statistics queue.
    public init(targetMiB: UInt32, deflateOnOOM: Bool, statisticsInterval: Duration, freePageHinting: Bool = false,
                freePageReporting: Bool) throws {
        var features = deflateOnOOM ? Feature.deflateOnOOM : 0
        var queues: [UInt16] = [256, 256]
        // Each optional queue, when offered, takes the next index and its feature bit.
        func optionalQueue(_ offered: Bool, _ feature: UInt64) -> Int? {
            guard offered else { return nil }
            features |= feature
            queues.append(256)
            return queues.count - 1
        }
        statisticsQueue = optionalQueue(statisticsInterval > .zero, Feature.statisticsQueue)
        hintingQueue = optionalQueue(freePageHinting, Feature.freePageHinting)
        reportingQueue = optionalQueue(freePageReporting, Feature.freePageReporting)
        offeredFeatures = features
        queueSizes = queues
        state = Mutex(State(targetPages: Self.pages(mib: targetMiB), interval: statisticsInterval))
        timer = try TimerNotifier()
    }

    static func pages(mib: UInt32) -> UInt32 { UInt32(clamping: UInt64(mib) * (1 << 20) / UInt64(pageSize)) }

    /// struct virtio_balloon_config: num_pages, actual, free_page_hint_cmd_id, poison_val.
    public var configurationSpace: [UInt8] {
        let (target, actual, command) = state.withLock { ($0.targetPages, $0.actualPages, $0.hostCommand) }
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.storeLittleEndian(target, at: 0)
        bytes.storeLittleEndian(actual, at: 4)
        bytes.storeLittleEndian(command, at: 8)
        return bytes
    }

    public var configurationGeneration: UInt32 { state.withLock { $0.generation } }

    /// The driver writes `actual`, the pages it holds; nothing else.
    public func writeConfiguration(offset: Int, bytes: [UInt8]) {
        guard offset == 4, bytes.count == 4 else { return }
        let value = bytes.littleEndian(at: 0, as: UInt32.self)
        state.withLock { $0.actualPages = value }
    }

    /// Sets the target (Firecracker's `PATCH /balloon`) and tells the driver.
    public func setTarget(mib: UInt32) {
        state.withLock {
            $0.targetPages = Self.pages(mib: mib)
            $0.generation &+= 1
        }
        context.withLock { $0 }?.interrupt.raise(.configurationChange)
    }

    /// Starts a free page hinting run (Firecracker's `PATCH
    /// /balloon/hinting/start`): a new command id, which the driver answers by
    /// sending it back and then the free blocks it finds, each returned to
    /// the host. With `acknowledgeOnStop` the device says DONE when the driver
    /// ends its run, and the driver takes the blocks back; without, they stay
    /// lent until `stopHinting()`.
    public func startHinting(acknowledgeOnStop: Bool) throws {
        _ = try activeForHinting()
        changeHostCommand { state in
            var run = state.lastRun &+ 1
            if run == HintCommand.stop || run == HintCommand.done { run = 2 }
            state.lastRun = run
            state.acknowledgeOnStop = acknowledgeOnStop
            state.hostCommand = run
            state.runEchoed = false
            return true
        }
    }

    /// Ends a run (`PATCH /balloon/hinting/stop`): DONE, so the driver takes
    /// back every block it lent; blocks still in flight are not discarded.
    public func stopHinting() throws {
        _ = try activeForHinting()
        changeHostCommand { $0.hostCommand = HintCommand.done; return true }
    }

    /// A balloon that offers hinting and whose driver is running (a command
    /// id set before that would be lost to its reset).
    private func activeForHinting() throws -> VirtioContext {
        try requireHinting()
        guard let context = context.withLock({ $0 }) else { throw BalloonError("the guest's balloon driver is not running") }
        return context
    }

    private func requireHinting() throws {
        guard hintingQueue != nil else { throw BalloonError("free page hinting was not enabled when the balloon was configured (free_page_hinting)") }
    }

    /// `GET /balloon/hinting/status`: the host's last command id and the
    /// driver's (nil: it sent none since its reset).
    public func hintingStatus() throws -> (host: UInt32, guest: UInt32?) {
        try requireHinting()
        return state.withLock { ($0.hostCommand, $0.guestCommand) }
    }

    /// Changes `free_page_hint_cmd_id` with `change` (false: it left it as it
    /// was), under the hinting lock, so that no block is being discarded as
    /// the driver sees the new id; then tells an active driver.
    private func changeHostCommand(_ change: (inout State) -> Bool) {
        let changed = hinting.withLock { _ in
            state.withLock { state in
                guard change(&state) else { return false }
                state.generation &+= 1
                return true
            }
        }
        if changed { context.withLock { $0 }?.interrupt.raise(.configurationChange) }
    }

    /// Changes the polling interval; the queue must exist (it was offered at
    /// start), so a zero interval, or one for a balloon without statistics, is refused.
    public func setStatisticsInterval(_ interval: Duration) throws {
        guard statisticsQueue != nil else { throw BalloonError("the balloon was made without statistics (stats_polling_interval_s 0)") }
        guard interval > .zero else { throw BalloonError("statistics cannot be turned off after the start") }
        state.withLock { $0.interval = interval }
        timer.arm(after: interval)
    }

    public struct Status: Equatable, Sendable {
        public var targetPages: UInt32, actualPages: UInt32
        public var statistics: [String: UInt64]
        public var statisticsEnabled: Bool
    }

    public var status: Status {
        state.withLock { Status(targetPages: $0.targetPages, actualPages: $0.actualPages, statistics: $0.statistics, statisticsEnabled: statisticsQueue != nil) }
    }

    /// The counters `metricCounts` reports, by Firecracker's names where it has them.
    public static let metricNames = ["inflate_count", "deflate_count", "stats_updates_count", "stats_update_fails", "free_page_report_count",
                                     "free_page_report_freed", "free_page_hint_count", "free_page_hint_freed", "discard_refused"]

    public var metricCounts: [String: Int] {
        let counts = state.withLock { $0.counts }
        return Self.metricNames.reduce(into: [:]) { $0[$1] = counts[$1] ?? 0 }
    }

    public func activate(_ context: VirtioContext) throws {
        self.context.withLock { $0 = context }
        if statisticsQueue != nil {
            try context.watch(timer.fileDescriptor) { [weak self] _ throws(QueueFault) in try self?.poll() }
            // The driver primes the statistics queue before DRIVER_OK, when its
            // notification finds no device to serve it: look at the queue soon.
            timer.arm(after: .milliseconds(1))
        }
    }

    public func reset() {
        context.withLock { $0 = nil }
        hinting.withLock { _ in
            state.withLock {
                $0.heldStatistics = nil
                $0.rereadStatistics = false
                $0.guestCommand = nil
                $0.runEchoed = false
                $0.hostCommand = HintCommand.stop
                $0.generation &+= 1
            }
        }
    }

    /// After a restore the driver still waits for the statistics buffer it
    /// had handed over, which the snapshot does not name: the next poll takes
    /// it from the queue again (see `poll`), so statistics go on.
    ///
    /// The driver may also still hold blocks lent to a hinting run of the
    /// process that was snapshotted: DONE gives them back to it. That
    /// process's run ids are not in the snapshot, and a driver skips a run
    /// whose id it last served, so the next run starts from a random id.
    public func restored() {
        if statisticsQueue != nil {
            state.withLock { $0.rereadStatistics = true }
            timer.arm(after: .milliseconds(1))
        }
        guard hintingQueue != nil else { return }
        changeHostCommand { state in
            state.lastRun = UInt32.random(in: 2...UInt32.max - 1)
            state.hostCommand = HintCommand.done
            return true
        }
    }

    public func process(queue: Int) throws(QueueFault) {
        guard let context = context.withLock({ $0 }), queue < context.queues.count else { return }
        let virtqueue = context.queues[queue]
        switch queue {
        case 0, 1:
            while let chain = try virtqueue.nextOrEnableNotification() {
                var reader = ChainReader(chain, memory: context.memory)
                guard reader.remaining <= Self.largestFrameList else {
                    throw QueueFault("virtio-balloon \(queue == 0 ? "inflate" : "deflate") buffer \(chain.head) has \(reader.remaining) bytes; "
                        + "a driver sends at most \(Self.largestFrameList) (Linux: 1 KiB)")
                }
                let frames = (reader.readBytes(reader.remaining - reader.remaining % 4) ?? []).chunked(4).map {
                    UInt64($0.littleEndian(at: 0, as: UInt32.self))
                }
                if queue == 0 {
                    // Runs of consecutive frames are returned with one call each.
                    var runStart: UInt64?, runLength: UInt64 = 0
                    for frame in frames.sorted() {
                        if let start = runStart, start + runLength == frame { runLength += 1; continue }
                        if let start = runStart { discard(GuestAddress(start << 12), length: runLength << 12, context.memory) }
                        runStart = frame
                        runLength = 1
                    }
                    if let start = runStart { discard(GuestAddress(start << 12), length: runLength << 12, context.memory) }
                }
                state.withLock { $0.counts[queue == 0 ? "inflate_count" : "deflate_count", default: 0] += 1 }
                virtqueue.complete(chain.head, written: 0)
            }
        case statisticsQueue:
            // The driver's buffer of {le16 tag, le64 value}: read it, and keep it until the next poll.
            while let chain = try virtqueue.nextOrEnableNotification() {
                var reader = ChainReader(chain, memory: context.memory)
                guard reader.remaining <= 10 * 64 else {
                    throw QueueFault("virtio-balloon statistics buffer \(chain.head) has \(reader.remaining) bytes, more than 64 entries")
                }
                let bytes = reader.readBytes(reader.remaining - reader.remaining % 10) ?? []
                var statistics: [String: UInt64] = [:]
                for entry in bytes.chunked(10) {
                    let tag = Int(entry.littleEndian(at: 0, as: UInt16.self))
                    let value = entry.littleEndian(at: 2, as: UInt64.self)
                    if tag < Self.statisticNames.count { statistics[Self.statisticNames[tag]] = value }
                }
                let (previous, interval) = state.withLock { state -> (UInt16?, Duration) in
                    defer {
                        state.heldStatistics = chain.head
                        state.statistics.merge(statistics) { $1 }
                        state.counts["stats_updates_count", default: 0] += 1
                    }
                    return (state.heldStatistics, state.interval)
                }
                // A second buffer while one is held: give the older back.
                if let previous { virtqueue.complete(previous, written: 0) }
                timer.arm(after: interval)
            }
        case hintingQueue:
            try processHints(virtqueue, context)
        case reportingQueue:
            // Free page reporting: each buffer's device-writable ranges are free guest pages.
            while let chain = try virtqueue.nextOrEnableNotification() {
                var freed: UInt64 = 0
                for segment in chain.writable {
                    discard(segment.address, length: UInt64(segment.length), context.memory)
                    freed += UInt64(segment.length)
                }
                state.withLock {
                    $0.counts["free_page_report_count", default: 0] += 1
                    $0.counts["free_page_report_freed", default: 0] += Int(freed)
                }
                virtqueue.complete(chain.head, written: 0)
            }
        default:
            break
        }
        context.notifyIfNeeded(virtqueue)
    }

    /// The hinting queue. The driver sends its command id in a 4-byte
    /// device-readable buffer (the run's id as it starts, STOP when it has
    /// no more), and each free block as a device-writable buffer. A block is
    /// returned to the host only while its run is the host's current one:
    /// after DONE or a newer run, the driver may already be using it again.
    func processHints(_ virtqueue: SplitQueue, _ context: VirtioContext) throws(QueueFault) {
        var acknowledge = false
        while let chain = try virtqueue.nextOrEnableNotification() {
            var reader = ChainReader(chain, memory: context.memory)
            let command = reader.remaining == 4 ? reader.readBytes(4)?.littleEndian(at: 0, as: UInt32.self) : nil
            hinting.withLock { _ in
                let (host, guest, running) = state.withLock { state -> (UInt32, UInt32?, Bool) in
                    if let command {
                        state.guestCommand = command
                        if command == state.hostCommand { state.runEchoed = true }
                        // STOP (or DONE, the host's word) ends the driver's run; only
                        // the current run's end is acknowledged.
                        if command == HintCommand.stop || command == HintCommand.done, state.runInProgress, state.runEchoed, state.acknowledgeOnStop {
                            acknowledge = true
                        }
                    }
                    return (state.hostCommand, state.guestCommand, state.runInProgress)
                }
                guard running, guest == host, !acknowledge else { return }
                var freed: UInt64 = 0
                for segment in chain.writable {
                    discard(segment.address, length: UInt64(segment.length), context.memory)
                    freed += UInt64(segment.length)
                }
                if freed > 0 {
                    state.withLock {
                        $0.counts["free_page_hint_count", default: 0] += 1
                        $0.counts["free_page_hint_freed", default: 0] += Int(freed)
                    }
                }
            }
            virtqueue.complete(chain.head, written: 0)
        }
        if acknowledge {
            // DONE, unless the host started another run meanwhile.
            changeHostCommand { state in
                guard state.runEchoed, state.runInProgress,
                      state.guestCommand == HintCommand.stop || state.guestCommand == HintCommand.done else { return false }
                state.hostCommand = HintCommand.done
                return true
            }
        }
    }

    /// The polling timer: hands the held statistics buffer back, which asks
    /// the driver for new figures; with none held, reads the queue. After a
    /// restore, the one buffer the queue's positions say was taken and not
    /// returned (the device keeps at most one) is the driver's, and is read again.
    func poll() throws(QueueFault) {
        timer.clear()
        guard let context = context.withLock({ $0 }), let index = statisticsQueue, index < context.queues.count else { return }
        guard let head = state.withLock({ state -> UInt16? in defer { state.heldStatistics = nil }; return state.heldStatistics }) else {
            let queue = context.queues[index]
            if state.withLock({ state in defer { state.rereadStatistics = false }; return state.rereadStatistics }),
               queue.nextAvailable &- queue.nextUsed == 1 {
                queue.undoNext()
            }
            try process(queue: index)
            return
        }
        context.queues[index].complete(head, written: 0)
        context.interrupt.raise(.usedBuffer)
    }

    /// Gives the host back the pages of `[address, address + length)` that
    /// are guest RAM and not private; a range outside RAM is ignored.
    func discard(_ address: GuestAddress, length: UInt64, _ memory: GuestAddressSpace) {
        guard length > 0, address.rawValue % UInt64(Self.pageSize) == 0, length % UInt64(Self.pageSize) == 0,
              let region = memory.region(containing: address, length: length), memory.access(address, length: length) == .shared else {
            state.withLock { $0.counts["discard_refused", default: 0] += 1 }
            return
        }
        guard !memory.discardsHeld else {
            // A live snapshot is copying RAM: the pages stay (and keep what they hold).
            state.withLock { $0.counts["discard_held", default: 0] += 1 }
            return
        }
        let offset = Int(address.rawValue - region.start.rawValue)
        // Private anonymous mappings free their pages with MADV_DONTNEED; shared
        // ones (a file, guest_memfd) need MADV_REMOVE, tried when DONTNEED would
        // leave the pages in the file.
        let advice = region.mapping.sharing == .shared ? MADV_REMOVE : MADV_DONTNEED
        if (try? region.mapping.advise(offset: offset, length: Int(length), advice)) == nil {
            state.withLock { $0.counts["discard_refused", default: 0] += 1 }
        } else {
            // The pages read as zero (or as the file under a private mapping)
            // now, and the guest's dirty log does not know it.
            memory.markWritten(address, length: length)
        }
    }
}

/// A refused balloon change.
public struct BalloonError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension Array where Element == UInt8 {
    /// The array in pieces of `size` (the last may be shorter).
    func chunked(_ size: Int) -> [[UInt8]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
