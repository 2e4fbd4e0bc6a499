import GuestMemory
import HostSystem
import Synchronization

/// The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
/// register block a driver finds at the device's base address.
///
/// Notifications: each queue has an `EventNotifier`. The VMM hands them to
/// KVM as ioeventfds on `QueueNotify` with the queue's index as data, so a
/// notify costs the vCPU no exit to userspace; a notify write that does reach
/// `write(offset:from:)` signals the same notifier. Either way the device runs
/// on its event loop, never on the vCPU thread.
public final class MMIOTransport: Sendable {
    /// Register offsets.
    public enum Register {
        public static let magic = 0x000, version = 0x004, deviceID = 0x008, vendorID = 0x00C
        public static let deviceFeatures = 0x010, deviceFeaturesSelect = 0x014
        public static let driverFeatures = 0x020, driverFeaturesSelect = 0x024
        public static let queueSelect = 0x030, queueSizeMax = 0x034, queueSize = 0x038, queueReady = 0x044
        public static let queueNotify = 0x050, interruptStatus = 0x060, interruptAcknowledge = 0x064, status = 0x070
        public static let queueDescriptorLow = 0x080, queueDescriptorHigh = 0x084
        public static let queueDriverLow = 0x090, queueDriverHigh = 0x094
        public static let queueDeviceLow = 0x0A0, queueDeviceHigh = 0x0A4
        public static let sharedMemorySelect = 0x0AC, sharedMemoryLengthLow = 0x0B0, sharedMemoryLengthHigh = 0x0B4
        public static let sharedMemoryBaseLow = 0x0B8, sharedMemoryBaseHigh = 0x0BC
        public static let configurationGeneration = 0x0FC, configuration = 0x100
    }

    /// "virt" in little-endian.
    public static let magic: UInt32 = 0x7472_6976
    /// The size of the register block plus configuration space to reserve.
    public static let windowSize: UInt64 = 0x1000
    /// Features the transport itself offers on top of the device's.
    public static let transportFeatures = VirtioFeature.version1 | VirtioFeature.eventIndex | VirtioFeature.indirectDescriptors
    /// "KSTL": the vendor ID.
    public static let vendorID: UInt32 = 0x4C54_534B

    public let device: any VirtioDevice
    public let interrupt: VirtioInterrupt
    /// One per queue; signalled by a notify.
    public let queueNotifiers: [EventNotifier]
    let memory: GuestAddressSpace
    private let loop: EventLoop
    private let log: @Sendable (String) -> Void
    /// How log lines name the device.
    public let name: String
    let state: Mutex<State>
    /// File descriptors the active device watches on the loop (its own lock:
    /// devices add and remove them while the state lock is held).
    private let watched = Mutex<Set<Int32>>([])

    struct State {
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [QueueConfiguration]
        var ready: [Bool]
        var status = VirtioStatus()
        var active = false
        var faultLogged = false
        /// The queues handed to the active device (for snapshots of their positions).
        var activeQueues: [SplitQueue] = []

        /// The state after a reset: every queue at its largest size, not ready.
        init(queueSizes: [UInt16]) {
            queues = queueSizes.map { QueueConfiguration(size: $0) }
            ready = queueSizes.map { _ in false }
        }
    }

    /// - Parameters:
    ///   - name: how log lines name the device ("virtio-blk rootfs").
    ///   - interruptLine: raises the device's interrupt (an edge).
    ///   - log: receives one line per fault.
    ///   - platformFeatures: transport feature bits the machine adds
    ///     (VIRTIO_F_ACCESS_PLATFORM for a confidential guest).
    public init(device: any VirtioDevice, name: String, memory: GuestAddressSpace, loop: EventLoop, platformFeatures: UInt64 = 0,
                interruptLine: @escaping @Sendable () -> Void, log: @escaping @Sendable (String) -> Void) throws {
        self.device = device
        self.platformFeatures = platformFeatures
        self.name = name
        self.memory = memory
        self.loop = loop
        self.log = log
        interrupt = VirtioInterrupt(line: interruptLine)
        queueNotifiers = try device.queueSizes.map { _ in try EventNotifier() }
        state = Mutex(State(queueSizes: device.queueSizes))
        for (index, notifier) in queueNotifiers.enumerated() {
            try loop.add(notifier.fileDescriptor) { [weak self] _ in
                notifier.drain()
                self?.process(queue: index)
            }
        }
    }

    deinit {
        for notifier in queueNotifiers { loop.remove(notifier.fileDescriptor) }
    }

    /// The device's status register, for reports and tests.
    public var status: VirtioStatus { state.withLock { $0.status } }

    private let platformFeatures: UInt64
    var offeredFeatures: UInt64 { device.offeredFeatures | Self.transportFeatures | platformFeatures }

    // MARK: Register access (vCPU threads)

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset >= UInt64(Register.configuration) {
            // Bytes past the end of the configuration space read as 0.
            let space = device.configurationSpace
            let start = Int(offset) - Register.configuration
            for index in data.indices { data[index] = start + index < space.count ? space[start + index] : 0 }
            return
        }
        // Registers are 32 bits wide and read as such (4.2.2.2); anything else reads 0.
        guard data.count == 4, offset % 4 == 0 else {
            for index in data.indices { data[index] = 0 }
            return
        }
        data.storeBytes(of: readRegister(Int(offset)).littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset >= UInt64(Register.configuration) {
            // The device decides what a driver may write there (most: nothing).
            device.writeConfiguration(offset: Int(offset) - Register.configuration, bytes: Array(data))
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }
        writeRegister(Int(offset), UInt32(littleEndian: data.loadUnaligned(as: UInt32.self)))
    }

    func readRegister(_ offset: Int) -> UInt32 {
        switch offset {
        case Register.magic: return Self.magic
        case Register.version: return 2
        case Register.deviceID: return device.deviceType.rawValue
        case Register.vendorID: return Self.vendorID
        case Register.interruptStatus: return interrupt.status
        case Register.configurationGeneration: return device.configurationGeneration
        case Register.sharedMemoryLengthLow, Register.sharedMemoryLengthHigh: return ~0  // no shared memory regions
        default: break
        }
        let features = offeredFeatures
        return state.withLock { state -> UInt32 in
            let queue = Int(state.queueSelect)
            let exists = queue < state.queues.count
            switch offset {
            case Register.deviceFeatures:
                return state.deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: features >> (32 * UInt64(state.deviceFeaturesSelect))) : 0
            case Register.queueSizeMax: return exists ? UInt32(device.queueSizes[queue]) : 0
            case Register.queueSize: return exists ? UInt32(state.queues[queue].size) : 0
            case Register.queueReady: return exists && state.ready[queue] ? 1 : 0
            case Register.status: return state.status.rawValue
            case Register.queueDescriptorLow: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].descriptorTable.rawValue) : 0
            case Register.queueDescriptorHigh: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].descriptorTable.rawValue >> 32) : 0
            case Register.queueDriverLow: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].availableRing.rawValue) : 0
            case Register.queueDriverHigh: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].availableRing.rawValue >> 32) : 0
            case Register.queueDeviceLow: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].usedRing.rawValue) : 0
            case Register.queueDeviceHigh: return exists ? UInt32(truncatingIfNeeded: state.queues[queue].usedRing.rawValue >> 32) : 0
            default: return 0
            }
        }
    }

    func writeRegister(_ offset: Int, _ value: UInt32) {
        switch offset {
        case Register.queueNotify:
            // Reached only without an ioeventfd; the same path as one.
            if Int(value) < queueNotifiers.count { queueNotifiers[Int(value)].signal() }
            return
        case Register.interruptAcknowledge:
            interrupt.acknowledge(value)
            return
        case Register.status:
            writeStatus(value)
            return
        default: break
        }
        state.withLock { state in
            let queue = Int(state.queueSelect)
            // Queue registers only change while the queue is not ready, and
            // features only before FEATURES_OK (4.2.2.3).
            let writableQueue = queue < state.queues.count && !state.ready[queue] && !state.active
            func setLow(_ address: inout GuestAddress) { address = GuestAddress(address.rawValue & ~0xFFFF_FFFF | UInt64(value)) }
            func setHigh(_ address: inout GuestAddress) { address = GuestAddress(address.rawValue & 0xFFFF_FFFF | UInt64(value) << 32) }
            switch offset {
            case Register.deviceFeaturesSelect: state.deviceFeaturesSelect = value
            case Register.driverFeaturesSelect: state.driverFeaturesSelect = value
            case Register.driverFeatures where state.driverFeaturesSelect < 2 && !state.status.contains(.featuresOK):
                let shift = UInt64(32 * state.driverFeaturesSelect)
                state.driverFeatures = state.driverFeatures & ~(0xFFFF_FFFF << shift) | UInt64(value) << shift
            case Register.queueSelect: state.queueSelect = value
            case Register.queueSize where writableQueue: state.queues[queue].size = UInt16(truncatingIfNeeded: value)
            case Register.queueReady where queue < state.queues.count && !state.active: state.ready[queue] = value & 1 == 1
            case Register.queueDescriptorLow where writableQueue: setLow(&state.queues[queue].descriptorTable)
            case Register.queueDescriptorHigh where writableQueue: setHigh(&state.queues[queue].descriptorTable)
            case Register.queueDriverLow where writableQueue: setLow(&state.queues[queue].availableRing)
            case Register.queueDriverHigh where writableQueue: setHigh(&state.queues[queue].availableRing)
            case Register.queueDeviceLow where writableQueue: setLow(&state.queues[queue].usedRing)
            case Register.queueDeviceHigh where writableQueue: setHigh(&state.queues[queue].usedRing)
            default: break  // read-only or unknown: ignored
            }
        }
    }

    private func writeStatus(_ value: UInt32) {
        var fault: String?
        state.withLock { state in
            if value == 0 {
                if state.active { deactivate(&state) }
                state = State(queueSizes: device.queueSizes)
                interrupt.clear()
                return
            }
            let requested = VirtioStatus(rawValue: value)
            var status = state.status.union(requested)
            if requested.contains(.featuresOK) && !state.status.contains(.featuresOK) {
                let unknown = state.driverFeatures & ~offeredFeatures
                // Refusing: FEATURES_OK stays clear, which the driver checks (3.1.1).
                if unknown != 0 || state.driverFeatures & VirtioFeature.version1 == 0 { status.remove(.featuresOK) }
            }
            if requested.contains(.driverOK) && !state.active && !status.contains(.needsReset) {
                if !status.contains(.featuresOK) {
                    status.remove(.driverOK)
                } else {
                    do {
                        var queues: [SplitQueue] = []
                        for index in state.queues.indices where state.ready[index] {
                            // Virtio 1.2, 4.2.2.2: the driver writes no QueueNum above QueueNumMax.
                            guard state.queues[index].size <= device.queueSizes[index] else {
                                throw QueueFault("queue \(index): size \(state.queues[index].size) is over its maximum \(device.queueSizes[index])")
                            }
                            queues.append(try SplitQueue(index: index, configuration: state.queues[index], memory: memory,
                                                         features: state.driverFeatures))
                        }
                        guard queues.count == state.queues.count else {
                            throw QueueFault("driver set DRIVER_OK with \(state.queues.count - queues.count) of \(state.queues.count) queues not ready")
                        }
                        try device.activate(context(queues: queues, features: state.driverFeatures))
                        state.active = true
                        state.activeQueues = queues
                    } catch {
                        dropWatches()
                        status.insert(.needsReset)
                        fault = "\(error)"
                        state.faultLogged = true
                    }
                }
            }
            state.status = status
        }
        if let fault { report(fault) }
    }

    /// Logs a fault's one line and tells the driver (a configuration interrupt).
    private func report(_ fault: String) {
        log("\(name): needs reset: \(fault)")
        interrupt.raise(.configurationChange)
    }

    // MARK: Queue processing (the event loop's thread)

    /// Stops watching every fd the device watched.
    func dropWatches() {
        for fd in watched.withLock({ set in defer { set = [] }; return set }) { loop.remove(fd) }
    }

    private func deactivate(_ state: inout State) {
        dropWatches()
        device.reset()
        state.active = false
        state.activeQueues = []
    }

    func context(queues: [SplitQueue], features: UInt64) -> VirtioContext {
        VirtioContext(
            queues: queues, features: features, memory: memory, interrupt: interrupt,
            watch: { [weak self] fd, events, handler in
                guard let self else { return }
                try self.loop.add(fd, for: events) { [weak self] ready in
                    self?.run { () throws(QueueFault) in try handler(ready) }
                }
                self.watched.withLock { _ = $0.insert(fd) }
            },
            interest: { [weak self] fd, events in try? self?.loop.modify(fd, for: events) },
            unwatch: { [weak self] fd in
                guard let self else { return }
                self.watched.withLock { _ = $0.remove(fd) }
                self.loop.remove(fd)
            })
    }

    func process(queue: Int) {
        run { () throws(QueueFault) in try device.process(queue: queue) }
    }

    /// Runs device work on the loop's thread while the device is active, and
    /// turns a fault into DEVICE_NEEDS_RESET.
    private func run(_ work: () throws(QueueFault) -> Void) {
        var faulted = false
        state.withLock { state in
            guard state.active else { return }
            do throws(QueueFault) {
                try work()
            } catch {
                deactivate(&state)
                if !state.faultLogged {
                    state.faultLogged = true
                    faulted = true
                    // Logged before DEVICE_NEEDS_RESET can be read (reads take
                    // this lock): a driver that sees the status on a vCPU
                    // finds its reason already written.
                    log("\(name): needs reset: \(error)")
                }
                state.status.insert(.needsReset)
            }
        }
        if faulted { interrupt.raise(.configurationChange) }
    }
}
