import GuestMemory
import HostSystem

/// A virtio device's own part: its type, features, configuration space and
/// what it does with its queues. The transport does the rest (feature
/// negotiation, queue set-up, status, interrupts, notifications).
///
/// Threads: `readConfiguration`/`writeConfiguration` come from vCPU threads;
/// `activate`, `process` and `reset` from the device's event loop thread.
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceType: VirtioDeviceType { get }
    /// Device-specific feature bits offered (the transport adds VERSION_1,
    /// EVENT_IDX and INDIRECT_DESC).
    var offeredFeatures: UInt64 { get }
    /// The largest size of each queue.
    var queueSizes: [UInt16] { get }

    func readConfiguration(at offset: Int, into data: UnsafeMutableRawBufferPointer)
    func writeConfiguration(at offset: Int, from data: UnsafeRawBufferPointer)

    /// The driver set DRIVER_OK: `queues` are ready, and `features` are what
    /// it accepted. Throwing marks the device as needing a reset.
    func activate(_ context: VirtioContext) throws
    /// The driver notified queue `queue` (or, for `nil`, another event source
    /// the device registered on the loop is ready; devices call their own
    /// handlers for those).
    func process(queue: Int) throws(QueueFault)
    /// The driver reset the device: drop the queues and any connection state.
    func reset()
}

extension VirtioDevice {
    public func writeConfiguration(at offset: Int, from data: UnsafeRawBufferPointer) {}
}

/// What an active device works with.
public struct VirtioContext: @unchecked Sendable {
    // @unchecked: the queues are used only on the event loop's thread.
    public let queues: [SplitQueue]
    public let features: UInt64
    public let memory: GuestAddressSpace
    public let interrupt: VirtioInterrupt
    public let loop: EventLoop

    public init(queues: [SplitQueue], features: UInt64, memory: GuestAddressSpace, interrupt: VirtioInterrupt, loop: EventLoop) {
        self.queues = queues
        self.features = features
        self.memory = memory
        self.interrupt = interrupt
        self.loop = loop
    }

    /// Interrupts the driver if `queue` completed chains it wants to hear about.
    public func notifyIfNeeded(_ queue: SplitQueue) {
        if queue.needsInterrupt() { interrupt.raise(.usedBuffer) }
    }
}
