import Glibc
import GuestMemory
import HostSystem
import Synchronization
@testable import Virtio

/// Plays a virtio driver against an `MMIOTransport` in a small guest memory,
/// the way rust-vmm's and Firecracker's device tests do: it lays out the split
/// queue in guest RAM, writes descriptors and the available ring, notifies
/// through the QueueNotify register and waits for the used ring.
final class TestDriver {
    static let ramBase: GuestAddress = 0x10_0000
    static let ramSize = 4 << 20
    let memory = GuestAddressSpace()
    let mapping: MemoryMapping
    let loop: EventLoop
    let transport: MMIOTransport
    let recorder = Recorder()
    var interruptCount: Int { recorder.interrupts.load(ordering: .relaxed) }
    var logLines: [String] { recorder.lines.withLock { $0 } }
    var queueSize: UInt16 = 16
    private var nextFree: UInt64 = 0x8_0000
    private var availableIndex: [Int: UInt16] = [:]
    private var usedSeen: [Int: UInt16] = [:]

    init(_ device: any VirtioDevice, platformFeatures: UInt64 = 0) throws {
        mapping = try MemoryMapping(anonymousSize: Self.ramSize)
        try memory.add(mapping, at: Self.ramBase)
        loop = try EventLoop(name: "test")
        let recorder = self.recorder
        transport = try MMIOTransport(device: device, name: "\(device.deviceType)", memory: memory, loop: loop,
                                      platformFeatures: platformFeatures, interruptLine: { recorder.interrupts.add(1, ordering: .relaxed) },
                                      log: { line in recorder.lines.withLock { $0.append(line) } })
        try loop.start()
    }

    deinit { loop.stop() }

    /// What the device did to the driver: interrupts raised and lines logged.
    final class Recorder: Sendable {
        let interrupts = Atomic<Int>(0)
        let lines = Mutex<[String]>([])
    }

    func queueAddress(_ queue: Int) -> (descriptors: GuestAddress, available: GuestAddress, used: GuestAddress) {
        let base = Self.ramBase + UInt64(queue) * 0x1_0000
        return (base, base + 0x4000, base + 0x8000)
    }

    func readRegister(_ offset: Int) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { transport.read(offset: UInt64(offset), into: $0) }
        return UInt32(littleEndian: value)
    }

    func writeRegister(_ offset: Int, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: UInt64(offset), from: $0) }
    }

    var offeredFeatures: UInt64 {
        writeRegister(MMIOTransport.Register.deviceFeaturesSelect, 0)
        let low = UInt64(readRegister(MMIOTransport.Register.deviceFeatures))
        writeRegister(MMIOTransport.Register.deviceFeaturesSelect, 1)
        return low | UInt64(readRegister(MMIOTransport.Register.deviceFeatures)) << 32
    }

    /// The driver's side of initialisation (3.1.1), accepting `features`; returns the status read back.
    @discardableResult
    func initialise(features: UInt64? = nil, queues: Int = 1, place: ((Int) -> (GuestAddress, GuestAddress, GuestAddress))? = nil) -> VirtioStatus {
        typealias R = MMIOTransport.Register
        writeRegister(R.status, 0)
        writeRegister(R.status, VirtioStatus([.acknowledge, .driver]).rawValue)
        let accepted = features ?? offeredFeatures
        writeRegister(R.driverFeaturesSelect, 0)
        writeRegister(R.driverFeatures, UInt32(truncatingIfNeeded: accepted))
        writeRegister(R.driverFeaturesSelect, 1)
        writeRegister(R.driverFeatures, UInt32(truncatingIfNeeded: accepted >> 32))
        writeRegister(R.status, VirtioStatus([.acknowledge, .driver, .featuresOK]).rawValue)
        guard VirtioStatus(rawValue: readRegister(R.status)).contains(.featuresOK) else { return VirtioStatus(rawValue: readRegister(R.status)) }
        for queue in 0..<queues {
            let (descriptors, available, used) = place?(queue) ?? queueAddress(queue)
            writeRegister(R.queueSelect, UInt32(queue))
            writeRegister(R.queueSize, UInt32(queueSize))
            for (low, address) in [(R.queueDescriptorLow, descriptors), (R.queueDriverLow, available), (R.queueDeviceLow, used)] {
                writeRegister(low, UInt32(truncatingIfNeeded: address.rawValue))
                writeRegister(low + 4, UInt32(truncatingIfNeeded: address.rawValue >> 32))
            }
            writeRegister(R.queueReady, 1)
        }
        writeRegister(R.status, VirtioStatus([.acknowledge, .driver, .featuresOK, .driverOK]).rawValue)
        return VirtioStatus(rawValue: readRegister(R.status))
    }

    /// Guest memory for a buffer.
    func allocate(_ length: Int, filledWith bytes: [UInt8] = []) -> GuestAddress {
        let address = Self.ramBase + nextFree
        nextFree += UInt64((length + 15) & ~15)
        try! memory.write(bytes, at: address)
        return address
    }

    struct Buffer {
        var address: GuestAddress
        var length: UInt32
        var writable: Bool
        var flags: UInt16 = 0
    }

    /// Writes descriptor `index` of queue `queue` as given.
    func writeDescriptor(_ queue: Int = 0, _ index: UInt16, address: GuestAddress, length: UInt32, flags: UInt16, next: UInt16) {
        let entry = queueAddress(queue).descriptors + UInt64(index) * 16
        try! memory.store(address.rawValue, at: entry)
        try! memory.store(length, at: entry + 8)
        try! memory.store(flags, at: entry + 12)
        try! memory.store(next, at: entry + 14)
    }

    /// Puts a chain of `buffers` into descriptors starting at `first` and makes it available.
    func submit(_ buffers: [Buffer], queue: Int = 0, first: UInt16 = 0) {
        for (offset, buffer) in buffers.enumerated() {
            let index = first + UInt16(offset)
            let more = offset < buffers.count - 1
            writeDescriptor(queue, index, address: buffer.address, length: buffer.length,
                            flags: (more ? 1 : 0) | (buffer.writable ? 2 : 0) | buffer.flags, next: index + 1)
        }
        publish(head: first, queue: queue)
    }

    /// Adds `head` to the available ring and publishes the new index.
    func publish(head: UInt16, queue: Int = 0) {
        let available = queueAddress(queue).available
        let index = availableIndex[queue, default: 0]
        try! memory.store(head, at: available + 4 + 2 * UInt64(index % queueSize))
        availableIndex[queue] = index &+ 1
        try! memory.store(index &+ 1, at: available + 2)
    }

    /// Sets the available ring's index directly (for malformed rings).
    func setAvailableIndex(_ index: UInt16, queue: Int = 0) {
        availableIndex[queue] = index
        try! memory.store(index, at: queueAddress(queue).available + 2)
    }

    func notify(_ queue: Int = 0) { writeRegister(MMIOTransport.Register.queueNotify, UInt32(queue)) }

    var usedIndex: UInt16 { try! memory.load(UInt16.self, at: queueAddress(0).used + 2) }

    /// Waits up to `seconds` for the next used entry; returns (head, length).
    func waitForUsed(queue: Int = 0, seconds: Int = 5) -> (head: UInt32, length: UInt32)? {
        let used = queueAddress(queue).used
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let index = try! memory.load(UInt16.self, at: used + 2)
            let seen = usedSeen[queue, default: 0]
            if index != seen {
                let entry = used + 4 + 8 * UInt64(seen % queueSize)
                usedSeen[queue] = seen &+ 1
                return (try! memory.load(UInt32.self, at: entry), try! memory.load(UInt32.self, at: entry + 4))
            }
            usleep(1000)
        }
        return nil
    }

    /// Waits up to 5 s for the status to contain `bits`. For
    /// DEVICE_NEEDS_RESET it also waits for the fault's line: the transport
    /// logs it just after the status changes, outside its lock.
    func waitForStatus(_ bits: VirtioStatus) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if transport.status.contains(bits) && (!bits.contains(.needsReset) || !logLines.isEmpty) { return true }
            usleep(1000)
        }
        return false
    }

    func read(_ address: GuestAddress, _ length: Int) -> [UInt8] { try! memory.read(at: address, length: length) }
}
