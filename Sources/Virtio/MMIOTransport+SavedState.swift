import GuestMemory

extension MMIOTransport {
    /// One queue as a snapshot keeps it: what the driver wrote to the
    /// transport, and the device's positions in the rings.
    public struct SavedQueue: Equatable, Sendable {
        public var configuration: QueueConfiguration
        public var ready: Bool
        public var nextAvailable: UInt16
        public var nextUsed: UInt16
        public var notifiedUsed: UInt16

        public init(configuration: QueueConfiguration, ready: Bool, nextAvailable: UInt16 = 0, nextUsed: UInt16 = 0, notifiedUsed: UInt16 = 0) {
            self.configuration = configuration
            self.ready = ready
            self.nextAvailable = nextAvailable
            self.nextUsed = nextUsed
            self.notifiedUsed = notifiedUsed
        }
    }

    /// The transport's registers, negotiated features, queue positions and
    /// pending interrupt bits: what a restored transport needs to go on as
    /// if nothing happened. The rings themselves are in guest memory.
    public struct SavedState: Equatable, Sendable {
        public var deviceType: UInt32
        public var deviceFeaturesSelect: UInt32
        public var driverFeaturesSelect: UInt32
        public var driverFeatures: UInt64
        public var queueSelect: UInt32
        public var status: UInt32
        public var active: Bool
        public var interruptStatus: UInt32
        public var queues: [SavedQueue]

        public init(deviceType: UInt32, deviceFeaturesSelect: UInt32, driverFeaturesSelect: UInt32, driverFeatures: UInt64,
                    queueSelect: UInt32, status: UInt32, active: Bool, interruptStatus: UInt32, queues: [SavedQueue]) {
            self.deviceType = deviceType
            self.deviceFeaturesSelect = deviceFeaturesSelect
            self.driverFeaturesSelect = driverFeaturesSelect
            self.driverFeatures = driverFeatures
            self.queueSelect = queueSelect
            self.status = status
            self.active = active
            self.interruptStatus = interruptStatus
            self.queues = queues
        }
    }

    /// The transport's state now. Take it with the device's event loop
    /// quiesced and the vCPUs paused, so that no queue moves meanwhile.
    public func savedState() -> SavedState {
        let interruptStatus = interrupt.status
        return state.withLock { state in
            var queues: [SavedQueue] = state.queues.indices.map { SavedQueue(configuration: state.queues[$0], ready: state.ready[$0]) }
            for queue in state.activeQueues where queue.index < queues.count {
                queues[queue.index].nextAvailable = queue.nextAvailable
                queues[queue.index].nextUsed = queue.nextUsed
                queues[queue.index].notifiedUsed = queue.notifiedUsed
            }
            return SavedState(
                deviceType: device.deviceType.rawValue, deviceFeaturesSelect: state.deviceFeaturesSelect,
                driverFeaturesSelect: state.driverFeaturesSelect, driverFeatures: state.driverFeatures,
                queueSelect: state.queueSelect, status: state.status.rawValue, active: state.active,
                interruptStatus: interruptStatus, queues: queues)
        }
    }

    /// Puts a freshly made transport (nothing negotiated yet) into `saved`'s
    /// state. An active device is activated again with its queues at the
    /// saved positions, then told it was restored (`VirtioDevice.restored`).
    /// Throws, changing nothing, when `saved` is for another device type or
    /// queue count, or names features or queues this device cannot have.
    public func restore(_ saved: SavedState) throws {
        guard saved.deviceType == device.deviceType.rawValue else {
            throw QueueFault("\(name): the snapshot holds a device of type \(saved.deviceType) here, not \(device.deviceType.rawValue)")
        }
        guard saved.queues.count == device.queueSizes.count else {
            throw QueueFault("\(name): the snapshot holds \(saved.queues.count) queues; the device has \(device.queueSizes.count)")
        }
        let unknown = saved.driverFeatures & ~offeredFeatures
        guard unknown == 0 else { throw QueueFault("\(name): the snapshot's features 0x\(String(unknown, radix: 16)) are not offered here") }
        for (index, queue) in saved.queues.enumerated() where queue.configuration.size > device.queueSizes[index] {
            throw QueueFault("\(name): queue \(index) of size \(queue.configuration.size) in the snapshot; at most \(device.queueSizes[index]) here")
        }
        try state.withLock { state in
            // The queues are made here, under the lock, as writeStatus makes them.
            var queues: [SplitQueue] = []
            if saved.active {
                for (index, queue) in saved.queues.enumerated() {
                    guard queue.ready else { throw QueueFault("\(name): an active device in the snapshot with queue \(index) not ready") }
                    let split = try SplitQueue(index: index, configuration: queue.configuration, memory: memory, features: saved.driverFeatures)
                    split.restorePosition(nextAvailable: queue.nextAvailable, nextUsed: queue.nextUsed, notifiedUsed: queue.notifiedUsed)
                    queues.append(split)
                }
            }
            state.deviceFeaturesSelect = saved.deviceFeaturesSelect
            state.driverFeaturesSelect = saved.driverFeaturesSelect
            state.driverFeatures = saved.driverFeatures
            state.queueSelect = saved.queueSelect
            state.queues = saved.queues.map(\.configuration)
            state.ready = saved.queues.map(\.ready)
            state.status = VirtioStatus(rawValue: saved.status)
            if saved.active {
                do {
                    try device.activate(context(queues: queues, features: saved.driverFeatures))
                } catch {
                    dropWatches()
                    throw QueueFault("\(name): cannot activate the restored device: \(error)")
                }
                state.active = true
                state.activeQueues = queues
            }
        }
        if saved.interruptStatus != 0 { interrupt.restore(saved.interruptStatus) }
        if saved.active { device.restored() }
    }
}
