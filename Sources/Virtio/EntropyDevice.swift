import HostSystem
import Synchronization

/// virtio-rng (virtio 1.2, section 5.4): fills every device-writable buffer
/// from getrandom(2).
public final class EntropyDevice: VirtioDevice {
    public let deviceType = VirtioDeviceType.entropy
    public let offeredFeatures: UInt64 = 0
    public let queueSizes: [UInt16] = [256]
    private let context = Mutex<VirtioContext?>(nil)
    /// Bytes handed to the guest so far.
    private let served = Atomic<Int>(0)

    /// Firecracker's entropy `rate_limiter` (bytes, and requests).
    public let rateLimit: LimitedQueue

    public init(bandwidth: TokenBucket? = nil, operations: TokenBucket? = nil) throws {
        rateLimit = try LimitedQueue(bandwidth: bandwidth, operations: operations)
    }

    public var bytesServed: Int { served.load(ordering: .relaxed) }

    public var metricCounts: [String: Int] { ["entropy_bytes": bytesServed] }

    /// virtio-rng has no configuration space.
    public let configurationSpace: [UInt8] = []

    public func activate(_ context: VirtioContext) throws {
        self.context.withLock { $0 = context }
        try rateLimit.activate(context) { [weak self] () throws(QueueFault) in try self?.process(queue: 0) }
    }
    public func reset() { context.withLock { $0 = nil } }

    public func process(queue: Int) throws(QueueFault) {
        guard let context = context.withLock({ $0 }), queue == 0 else { return }
        let requests = context.queues[0]
        while rateLimit.mayServe(), let chain = try requests.nextOrEnableNotification() {
            var writer = ChainWriter(chain, memory: context.memory)
            // At most 64 KiB per request: the driver asks for small amounts.
            for piece in writer.take(min(writer.remaining, 1 << 16)) {
                writer.unwrite(piece.count - HostRandom.fill(piece))
            }
            served.add(writer.written, ordering: .relaxed)
            rateLimit.limiter.consume(bytes: writer.written)
            requests.complete(chain.head, written: writer.written)
        }
        context.notifyIfNeeded(requests)
    }
}
