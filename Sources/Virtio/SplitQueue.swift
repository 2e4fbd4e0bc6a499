import GuestMemory
import Synchronization

/// Where the driver put a split virtqueue, as the transport's registers say.
public struct QueueConfiguration: Equatable, Sendable {
    public var size: UInt16
    public var descriptorTable: GuestAddress = 0
    public var availableRing: GuestAddress = 0
    public var usedRing: GuestAddress = 0

    public init(size: UInt16, descriptorTable: GuestAddress = 0, availableRing: GuestAddress = 0, usedRing: GuestAddress = 0) {
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }
}

/// The device side of a split virtqueue (virtio 1.2, section 2.7), trusting
/// nothing the driver wrote.
///
/// - The three areas are checked once, at creation: inside guest RAM and aligned.
/// - Each descriptor is read once into a local copy, then checked: index, length,
///   direction order, range inside one guest RAM region, indirect tables (only
///   when negotiated, not nested, not with NEXT, a whole number of entries), and
///   a chain no longer than the queue size, which also ends every loop.
/// - An available index more than a queue size ahead is a fault.
///
/// A fault throws `QueueFault`; the transport then marks the device as needing
/// a reset. A queue is used from one thread at a time (the device's event loop).
public final class SplitQueue {
    public let configuration: QueueConfiguration
    public let index: Int
    private let memory: GuestAddressSpace
    private let eventIndex: Bool
    private let indirect: Bool
    /// The next available-ring slot to consume (free-running, mod 2^16).
    public private(set) var nextAvailable: UInt16 = 0
    /// The next used-ring slot to fill (free-running).
    public private(set) var nextUsed: UInt16 = 0
    /// `nextUsed` at the last `needsInterrupt` check (vhost's signalled_used).
    public private(set) var notifiedUsed: UInt16 = 0

    private static let descriptorSize: UInt64 = 16

    public init(index: Int, configuration: QueueConfiguration, memory: GuestAddressSpace, features: UInt64) throws(QueueFault) {
        let size = UInt64(configuration.size)
        guard size > 0, size <= 32768 else { throw QueueFault("queue \(index): size \(size) is outside 1...32768") }
        eventIndex = features & VirtioFeature.eventIndex != 0
        indirect = features & VirtioFeature.indirectDescriptors != 0
        let extra: UInt64 = eventIndex ? 2 : 0
        let areas: [(String, GuestAddress, UInt64, UInt64)] = [
            ("descriptor table", configuration.descriptorTable, Self.descriptorSize * size, 16),
            ("available ring", configuration.availableRing, 4 + 2 * size + extra, 2),
            ("used ring", configuration.usedRing, 4 + 8 * size + extra, 4),
        ]
        for (name, address, length, alignment) in areas {
            guard address.rawValue % alignment == 0 else {
                throw QueueFault("queue \(index): \(name) at \(address) is not \(alignment)-byte aligned")
            }
            try Self.requireSharedRAM(memory, address, length, "queue \(index): \(name) [\(address), +\(length))")
        }
        self.index = index
        self.configuration = configuration
        self.memory = memory
    }

    private var size: UInt16 { configuration.size }

    /// Puts the queue back where a snapshot found it. The positions are the
    /// device's own counters, free-running mod 2^16, so any value is one a
    /// queue can have; a driver that disagrees with them only makes `next`
    /// see a fault it would have seen anyway.
    public func restorePosition(nextAvailable: UInt16, nextUsed: UInt16, notifiedUsed: UInt16) {
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
        self.notifiedUsed = notifiedUsed
    }

    // The areas were checked at creation, so these loads and stores stay inside
    // guest RAM. They could fail only if a RAM region were removed while the
    // device runs, which Kestrel never does; a load then reads 0 and a store
    // is dropped rather than trap.
    private func load16(_ address: GuestAddress) -> UInt16 { (try? memory.load(UInt16.self, at: address)) ?? 0 }

    /// The driver's available index.
    private var availableIndex: UInt16 { load16(configuration.availableRing + 2) }

    /// Takes the next available chain, or nil when none is. Throws when the ring
    /// or the chain is malformed.
    public func next() throws(QueueFault) -> DescriptorChain? {
        let available = availableIndex
        // Read the ring entry only after the index that published it.
        atomicMemoryFence(ordering: .acquiring)
        let pending = available &- nextAvailable
        if pending == 0 { return nil }
        guard pending <= size else {
            throw QueueFault("queue \(index): available index \(available) is \(pending) entries ahead of \(nextAvailable), beyond the queue size \(size)")
        }
        let slot = configuration.availableRing + 4 + 2 * UInt64(nextAvailable % size)
        let head = load16(slot)
        nextAvailable &+= 1
        return try walk(head: head)
    }

    /// Takes the next chain, and when there is none, asks the driver to notify
    /// on the next one (avail_event with EVENT_IDX) and looks once more, so a
    /// chain made available in between is not missed.
    public func nextOrEnableNotification() throws(QueueFault) -> DescriptorChain? {
        if let chain = try next() { return chain }
        guard eventIndex else { return nil }
        let availableEvent = configuration.usedRing + 4 + 8 * UInt64(size)
        try? memory.store(nextAvailable, at: availableEvent)
        // The store must be visible before the index is read again (a store-load
        // ordering, which x86 only gives with a full fence).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try next()
    }

    /// Gives back the chain `next` returned last, unused (a device that took
    /// a receive buffer and then found nothing to put in it).
    public func undoNext() {
        nextAvailable &-= 1
    }

    private struct RawDescriptor {
        var address: UInt64
        var length: UInt32
        var flags: UInt16
        var next: UInt16

        static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4
    }

    private func descriptor(in table: GuestAddress, at position: UInt16) -> RawDescriptor? {
        guard let bytes = try? memory.buffer(at: table + Self.descriptorSize * UInt64(position), length: Int(Self.descriptorSize), writing: false) else { return nil }
        return RawDescriptor(
            address: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
            length: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            flags: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt16.self)),
            next: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
    }

    private func walk(head: UInt16) throws(QueueFault) -> DescriptorChain {
        guard head < size else { throw QueueFault("queue \(index): head index \(head) is outside the table of \(size)") }
        var segments: [DescriptorSegment] = []
        var table = configuration.descriptorTable
        var tableSize = size
        var position = head
        var inIndirect = false
        var visited = 0
        var total: UInt64 = 0
        while true {
            visited += 1
            guard visited <= Int(size) + (inIndirect ? 1 : 0) else {
                throw QueueFault("queue \(index): chain from head \(head) is longer than the queue size \(size) (a loop?)")
            }
            guard let raw = descriptor(in: table, at: position) else {
                throw QueueFault("queue \(index): descriptor \(position) of chain \(head) is not in guest RAM")
            }
            if raw.flags & RawDescriptor.indirect != 0 {
                guard indirect else { throw QueueFault("queue \(index): indirect descriptor in chain \(head) without VIRTIO_RING_F_INDIRECT_DESC") }
                guard !inIndirect else { throw QueueFault("queue \(index): nested indirect table in chain \(head)") }
                guard raw.flags & RawDescriptor.next == 0 else {
                    throw QueueFault("queue \(index): descriptor \(position) of chain \(head) has both INDIRECT and NEXT")
                }
                let entries = UInt64(raw.length) / Self.descriptorSize
                guard raw.length > 0, UInt64(raw.length) % Self.descriptorSize == 0, entries <= UInt64(size) else {
                    throw QueueFault("queue \(index): indirect table of \(raw.length) bytes in chain \(head) is not 1...\(size) descriptors")
                }
                let address = GuestAddress(raw.address)
                try Self.requireSharedRAM(memory, address, UInt64(raw.length),
                                          "queue \(index): indirect table [\(address), +\(raw.length)) of chain \(head)")
                table = address
                tableSize = UInt16(entries)
                position = 0
                inIndirect = true
                continue
            }
            let writable = raw.flags & RawDescriptor.write != 0
            if !writable, segments.last?.isWritable == true {
                throw QueueFault("queue \(index): device-readable descriptor after a device-writable one in chain \(head)")
            }
            if raw.length > 0 {
                try Self.requireSharedRAM(memory, GuestAddress(raw.address), UInt64(raw.length),
                                          "queue \(index): buffer [\(GuestAddress(raw.address)), +\(raw.length)) of chain \(head)")
                total += UInt64(raw.length)
                guard total <= UInt64(UInt32.max) else { throw QueueFault("queue \(index): chain \(head) is longer than 4 GiB") }
                segments.append(DescriptorSegment(address: GuestAddress(raw.address), length: raw.length, isWritable: writable))
            }
            guard raw.flags & RawDescriptor.next != 0 else { break }
            guard raw.next < tableSize else {
                throw QueueFault("queue \(index): next index \(raw.next) in chain \(head) is outside its table of \(tableSize)")
            }
            position = raw.next
        }
        return DescriptorChain(head: head, segments: segments)
    }

    /// Returns a chain to the driver with the number of bytes written into it.
    public func complete(_ head: UInt16, written length: Int) {
        let entry = configuration.usedRing + 4 + 8 * UInt64(nextUsed % size)
        try? memory.store(UInt32(head), at: entry)
        try? memory.store(UInt32(truncatingIfNeeded: length), at: entry + 4)
        nextUsed &+= 1
        // The entry must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        try? memory.store(nextUsed, at: configuration.usedRing + 2)
    }

    /// Whether the driver wants an interrupt for the chains completed since the
    /// last check (used_event with EVENT_IDX, otherwise the available ring's
    /// NO_INTERRUPT flag).
    public func needsInterrupt() -> Bool {
        // The used index store must be visible before the driver's wish is read.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = notifiedUsed
        let new = nextUsed
        guard old != new else { return false }
        if eventIndex {
            let usedEvent = load16(configuration.availableRing + 4 + 2 * UInt64(size))
            notifiedUsed = new
            // vring_need_event: the driver asked to hear once used passes used_event.
            return new &- usedEvent &- 1 < new &- old
        }
        notifiedUsed = new
        return load16(configuration.availableRing) & 1 == 0
    }

    /// Refuses a range the device may not touch: outside guest RAM, or (in a
    /// confidential VM) in memory the guest made private. Devices reach shared
    /// memory only; a buffer in private memory is refused, never served.
    private static func requireSharedRAM(_ memory: GuestAddressSpace, _ address: GuestAddress, _ length: UInt64,
                                         _ what: @autoclosure () -> String) throws(QueueFault) {
        switch memory.access(address, length: length) {
        case .shared: return
        case .outside: throw QueueFault("\(what()) is not inside guest RAM")
        case .private: throw QueueFault("\(what()) lies in private memory; devices reach shared memory only")
        }
    }
}
