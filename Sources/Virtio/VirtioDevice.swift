import GuestMemory
import HostSystem

/// A virtio device's own part: its type, features, configuration space and
/// what it does with its queues. The transport does the rest (feature
/// negotiation, queue set-up, status, interrupts, notifications).
///
/// Threads: `configurationSpace` is read from vCPU threads; `activate`,
/// `process` and `reset` come from the device's event loop thread.
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceType: VirtioDeviceType { get }
    /// Device-specific feature bits offered (the transport adds VERSION_1,
    /// EVENT_IDX and INDIRECT_DESC).
    var offeredFeatures: UInt64 { get }
    /// The largest size of each queue.
    var queueSizes: [UInt16] { get }

    /// The device's configuration space, read-only (no device Kestrel has
    /// offers a writable field); the transport serves reads from it.
    var configurationSpace: [UInt8] { get }

    /// The driver set DRIVER_OK: `queues` are ready, and `features` are what
    /// it accepted. Throwing marks the device as needing a reset.
    func activate(_ context: VirtioContext) throws
    /// The driver notified queue `queue`.
    func process(queue: Int) throws(QueueFault)
    /// The driver reset the device: drop the queues and any connection state.
    func reset()
    /// What the device did, for `kestrel run --verbose` (nil: nothing to say).
    var activitySummary: String? { get }
    /// The driver wrote `bytes` at `offset` of the configuration space (only
    /// the balloon has a field the driver writes: `actual`).
    func writeConfiguration(offset: Int, bytes: [UInt8])
    /// Changes whenever `configurationSpace` does (virtio-mmio's
    /// ConfigGeneration), so a driver can tell a torn read.
    var configurationGeneration: UInt32 { get }
    /// Running totals for the metrics, by Firecracker's field names where
    /// they mean the same thing (`rx_bytes_count`, `read_count`, ...).
    var metricCounts: [String: Int] { get }
    /// The device was activated again from a snapshot, in a new process:
    /// whatever it held outside guest memory (connections, pending host
    /// data) is gone, and it may tell the driver so.
    func restored()
    /// The device's loop is about to park (a pause, before a snapshot): work
    /// it started outside the guest's view (I/O in a ring) is finished and
    /// given back now, on the loop's thread.
    func quiesce()
}

extension VirtioDevice {
    /// What the device did, for `kestrel run --verbose` (nil: nothing to say).
    public var activitySummary: String? { nil }
    /// Nothing counted.
    public var metricCounts: [String: Int] { [:] }
    /// Configuration writes are dropped: nothing else the driver may write.
    public func writeConfiguration(offset: Int, bytes: [UInt8]) {}
    /// A configuration that never changes.
    public var configurationGeneration: UInt32 { 0 }
    /// Nothing to tell: the device keeps no state outside guest memory.
    public func restored() {}
    /// Nothing in flight between handlers.
    public func quiesce() {}
}

/// What an active device works with.
public struct VirtioContext: @unchecked Sendable {
    // @unchecked: the queues are used only on the event loop's thread.
    public let queues: [SplitQueue]
    public let features: UInt64
    public let memory: GuestAddressSpace
    public let interrupt: VirtioInterrupt
    public typealias Handler = @Sendable (ReadyEvents) throws(QueueFault) -> Void
    private let watcher: @Sendable (Int32, ReadyEvents, @escaping Handler) throws -> Void
    private let interest: @Sendable (Int32, ReadyEvents) -> Void
    private let unwatcher: @Sendable (Int32) -> Void

    public init(queues: [SplitQueue], features: UInt64, memory: GuestAddressSpace, interrupt: VirtioInterrupt,
                watch: @escaping @Sendable (Int32, ReadyEvents, @escaping Handler) throws -> Void,
                interest: @escaping @Sendable (Int32, ReadyEvents) -> Void,
                unwatch: @escaping @Sendable (Int32) -> Void) {
        self.queues = queues
        self.features = features
        self.memory = memory
        self.interrupt = interrupt
        watcher = watch
        self.interest = interest
        unwatcher = unwatch
    }

    /// Calls `handler` on the device's event loop when `fd` is ready, under the
    /// same rules as `process(queue:)` (serialised with it, a fault needs a
    /// reset). The transport stops watching every such fd on reset.
    public func watch(_ fd: Int32, for events: ReadyEvents = .readable, _ handler: @escaping Handler) throws {
        try watcher(fd, events, handler)
    }

    /// Changes what a watched fd waits for (empty: nothing, until changed again).
    public func setInterest(_ fd: Int32, _ events: ReadyEvents) { interest(fd, events) }

    /// Stops watching `fd` (before the device closes it).
    public func unwatch(_ fd: Int32) { unwatcher(fd) }

    /// Interrupts the driver if `queue` completed chains it wants to hear about.
    public func notifyIfNeeded(_ queue: SplitQueue) {
        if queue.needsInterrupt() { interrupt.raise(.usedBuffer) }
    }
}
