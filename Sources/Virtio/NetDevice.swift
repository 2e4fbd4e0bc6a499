import Glibc
import GuestMemory
import HostSystem
import Synchronization

/// Where a virtio-net device's frames go: a file descriptor that moves one
/// frame per read or write, each led by a 12-byte virtio-net header (a tap
/// with IFF_VNET_HDR; a datagram socket pair in tests).
public protocol PacketEndpoint: AnyObject, Sendable {
    var fileDescriptor: Int32 { get }
    /// Lets the endpoint hand the guest offloaded frames the guest accepted
    /// (its negotiated VIRTIO_NET_F_GUEST_* features).
    func acceptOffloads(guestFeatures: UInt64) throws
}

extension TapDevice: PacketEndpoint {
    public func acceptOffloads(guestFeatures: UInt64) throws {
        var offloads: Offloads = []
        if guestFeatures & NetDevice.Feature.guestChecksum != 0 {
            offloads.insert(.checksum)
            if guestFeatures & NetDevice.Feature.guestTSO4 != 0 { offloads.insert(.tso4) }
            if guestFeatures & NetDevice.Feature.guestTSO6 != 0 { offloads.insert(.tso6) }
        }
        try setOffloads(offloads)
    }
}

/// virtio-net (virtio 1.2, section 5.1): one receive and one transmit queue,
/// a MAC address and a link that is up. Offered offloads: checksum both ways
/// (CSUM, GUEST_CSUM) and TCP segmentation both ways (HOST_TSO4/6,
/// GUEST_TSO4/6); the 12-byte header passes between the guest and the tap
/// unchanged, so the host kernel does the work. With an MTU, VIRTIO_NET_F_MTU
/// advertises it. No mergeable receive buffers, no control queue, one queue
/// pair. An `interceptor` (the MMDS) answers the frames it claims in place of
/// the endpoint.
public final class NetDevice: VirtioDevice {
    public enum Feature {
        public static let checksum: UInt64 = 1 << 0
        public static let guestChecksum: UInt64 = 1 << 1
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        public static let mtu: UInt64 = 1 << 3
        public static let mac: UInt64 = 1 << 5
        public static let status: UInt64 = 1 << 16
    }

    public static let headerSize = 12
    static let receiveQueue = 0, transmitQueue = 1

    public let deviceType = VirtioDeviceType.network
    public let queueSizes: [UInt16] = [256, 256]
    public let offeredFeatures: UInt64
    public let macAddress: [UInt8]
    /// The MTU advertised to the driver (Firecracker's `mtu`), or nil for none.
    public let mtu: UInt16?
    public let endpoint: any PacketEndpoint
    /// Takes the guest frames it claims, and has frames of its own for the guest.
    public let interceptor: (any FrameInterceptor)?
    /// Firecracker's `rx_rate_limiter` and `tx_rate_limiter` (bytes of frames,
    /// and frames); the interceptor's frames are not counted.
    public let receiveLimit: LimitedQueue
    public let transmitLimit: LimitedQueue
    private let context = Mutex<VirtioContext?>(nil)
    private let counters = Mutex(Counters())
    /// Whether the endpoint is watched for frames (off while the guest has no receive buffers).
    private let receiving = Mutex(false)

    public struct Counters: Equatable, Sendable {
        public var receivedFrames = 0, receivedBytes = 0, sentFrames = 0, sentBytes = 0, dropped = 0
        /// Frames the interceptor took from the guest, and gave it.
        public var interceptedFrames = 0, interceptorFrames = 0
    }

    public var statistics: Counters { counters.withLock { $0 } }

    public var metricCounts: [String: Int] {
        let counts = statistics
        return ["rx_bytes_count": counts.receivedBytes, "rx_packets_count": counts.receivedFrames, "tx_bytes_count": counts.sentBytes,
                "tx_packets_count": counts.sentFrames, "dropped_frames": counts.dropped,
                "tx_mmds_frames": counts.interceptedFrames, "rx_mmds_frames": counts.interceptorFrames,
                "rx_rate_limiter_throttled": receiveLimit.limiter.throttledEvents, "tx_rate_limiter_throttled": transmitLimit.limiter.throttledEvents]
    }

    public var activitySummary: String? {
        let counts = statistics
        return "sent \(counts.sentFrames) frames (\(counts.sentBytes) bytes), received \(counts.receivedFrames) (\(counts.receivedBytes) bytes), dropped \(counts.dropped)"
    }

    /// The MTU range virtio-net allows a device to advertise: 68 (IPv4's
    /// minimum) to 65535.
    public static let mtuRange: ClosedRange<Int> = 68...65535

    /// `mac` is six bytes; `mtu`, when given, lies in `mtuRange`.
    public init(endpoint: any PacketEndpoint, mac: [UInt8], mtu: UInt16? = nil, interceptor: (any FrameInterceptor)? = nil,
                receiveLimit: LimitedQueue? = nil, transmitLimit: LimitedQueue? = nil) throws {
        self.receiveLimit = try receiveLimit ?? LimitedQueue()
        self.transmitLimit = try transmitLimit ?? LimitedQueue()
        precondition(mac.count == 6, "a MAC address has six bytes")
        precondition(mtu.map { Self.mtuRange.contains(Int($0)) } ?? true, "an MTU lies in 68...65535")
        self.endpoint = endpoint
        self.interceptor = interceptor
        macAddress = mac
        self.mtu = mtu
        offeredFeatures = Feature.checksum | Feature.guestChecksum | Feature.guestTSO4 | Feature.guestTSO6
            | Feature.hostTSO4 | Feature.hostTSO6 | Feature.mac | Feature.status | (mtu == nil ? 0 : Feature.mtu)
    }

    /// A random locally administered unicast address.
    public static func randomMAC() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 6)
        bytes.withUnsafeMutableBytes { _ = HostRandom.fill($0) }
        bytes[0] = bytes[0] & 0xFC | 0x02
        return bytes
    }

    /// Parses "aa:bb:cc:dd:ee:ff".
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == 6 ? bytes : nil
    }

    /// struct virtio_net_config: mac[6], then status with VIRTIO_NET_S_LINK_UP;
    /// with an MTU also max_virtqueue_pairs (1; read only with MQ, which is
    /// not offered) and mtu at offset 10, little-endian.
    public var configurationSpace: [UInt8] {
        guard let mtu else { return macAddress + [1, 0] }
        return macAddress + [1, 0] + [1, 0] + [UInt8(mtu & 0xFF), UInt8(mtu >> 8)]
    }

    public func activate(_ context: VirtioContext) throws {
        try endpoint.acceptOffloads(guestFeatures: context.features)
        self.context.withLock { $0 = context }
        receiving.withLock { $0 = true }
        try context.watch(endpoint.fileDescriptor) { [weak self] _ throws(QueueFault) in try self?.receive() }
        try receiveLimit.activate(context) { [weak self] () throws(QueueFault) in try self?.receive() }
        try transmitLimit.activate(context) { [weak self] () throws(QueueFault) in try self?.transmit() }
    }

    public func reset() {
        context.withLock { $0 = nil }
    }

    public func process(queue: Int) throws(QueueFault) {
        switch queue {
        case Self.receiveQueue: try receive()
        case Self.transmitQueue: try transmit()
        default: break
        }
    }

    /// Frames from the endpoint into receive buffers, while both last.
    func receive() throws(QueueFault) {
        guard let context = context.withLock({ $0 }) else { return }
        let queue = context.queues[Self.receiveQueue]
        var received = 0, bytes = 0, local = 0
        defer {
            if received > 0 {
                counters.withLock { $0.receivedFrames += received; $0.receivedBytes += bytes; $0.interceptorFrames += local }
                context.notifyIfNeeded(queue)
            }
        }
        // The interceptor's frames first: they wait in it until buffers come.
        while let interceptor, let chain = try queue.nextOrEnableNotification() {
            guard let frame = interceptor.nextFrame() else { queue.undoNext(); break }
            var writer = ChainWriter(chain, memory: context.memory)
            guard writer.remaining >= Self.headerSize + frame.count else {
                throw QueueFault("virtio-net receive buffer \(chain.head) has \(writer.remaining) writable bytes, "
                    + "less than the \(Self.headerSize + frame.count) of a frame")
            }
            // flags 0 (checksums are complete), no GSO, num_buffers 1.
            _ = writer.write([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0] + frame)
            queue.complete(chain.head, written: Self.headerSize + frame.count)
            received += 1
            bytes += frame.count
            local += 1
        }
        while true {
            guard receiveLimit.mayServe() else {
                // Throttled: the tap waits until the limiter's timer serves the queue again.
                watchEndpoint(false, context)
                return
            }
            guard let chain = try queue.nextOrEnableNotification() else {
                // No buffers: stop watching the endpoint until the driver adds some.
                watchEndpoint(false, context)
                return
            }
            watchEndpoint(true, context)
            var writer = ChainWriter(chain, memory: context.memory)
            guard writer.remaining >= Self.headerSize else {
                throw QueueFault("virtio-net receive buffer \(chain.head) has \(writer.remaining) writable bytes, less than the \(Self.headerSize)-byte header")
            }
            let pieces = writer.take(writer.remaining)
            let count = withIOVectors(pieces) { readv(endpoint.fileDescriptor, $0, $1) }
            if count < Self.headerSize {
                queue.undoNext()  // nothing to read (EAGAIN) or a runt: keep the buffer
                if count < 0 { return }
                counters.withLock { $0.dropped += 1 }
                continue
            }
            // num_buffers is 1 without VIRTIO_NET_F_MRG_RXBUF; the tap leaves it alone.
            var header = ChainWriter(chain, memory: context.memory)
            header.skip(to: 10)
            header.write([1, 0])
            queue.complete(chain.head, written: count)
            received += 1
            bytes += count - Self.headerSize
            receiveLimit.limiter.consume(bytes: count - Self.headerSize)
        }
    }

    /// Watches the endpoint for frames, or stops, when that changes.
    private func watchEndpoint(_ watch: Bool, _ context: VirtioContext) {
        if receiving.withLock({ let was = $0; $0 = watch; return was }) != watch {
            context.setInterest(endpoint.fileDescriptor, watch ? .readable : [])
        }
    }

    /// Frames from transmit buffers to the endpoint.
    func transmit() throws(QueueFault) {
        guard let context = context.withLock({ $0 }) else { return }
        let queue = context.queues[Self.transmitQueue]
        var sent = 0, bytes = 0, dropped = 0, intercepted = 0
        while transmitLimit.mayServe(), let chain = try queue.nextOrEnableNotification() {
            var reader = ChainReader(chain, memory: context.memory)
            let length = reader.remaining
            if length < Self.headerSize {
                dropped += 1
            } else if let interceptor, interceptor.claims(Self.framePrefix(chain, memory: context.memory, count: interceptor.decisionLength)) {
                // No frame for the interceptor is longer than an IPv4 packet and its Ethernet header.
                if length - Self.headerSize <= 65535 + 14 {
                    reader.skip(Self.headerSize)
                    interceptor.receive(reader.readBytes(length - Self.headerSize) ?? [])
                    intercepted += 1
                } else {
                    dropped += 1
                }
            } else if withIOVectors(reader.take(length), { writev(endpoint.fileDescriptor, $0, $1) }) == length {
                sent += 1
                bytes += length - Self.headerSize
                transmitLimit.limiter.consume(bytes: length - Self.headerSize)
            } else {
                dropped += 1  // the endpoint refused it (full, or down): a lost frame, as on a wire
            }
            queue.complete(chain.head, written: 0)
        }
        counters.withLock { $0.sentFrames += sent; $0.sentBytes += bytes; $0.dropped += dropped; $0.interceptedFrames += intercepted }
        context.notifyIfNeeded(queue)
        // The interceptor's answers go out now, into whatever buffers there are.
        if intercepted > 0 { try receive() }
    }

    /// Up to `count` bytes of a transmitted frame after its virtio-net header.
    private static func framePrefix(_ chain: DescriptorChain, memory: GuestAddressSpace, count: Int) -> [UInt8] {
        var reader = ChainReader(chain, memory: memory)
        reader.skip(headerSize)
        return reader.readBytes(min(count, reader.remaining)) ?? []
    }
}
