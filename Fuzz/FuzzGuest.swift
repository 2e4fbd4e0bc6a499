// Shared by the virtio fuzz targets (compiled into each): a guest whose RAM
// is the fuzzer's input, with a split queue laid out at fixed places, and a
// context that runs a device's queues synchronously.
import GuestMemory
import HostSystem
import Virtio

enum FuzzGuest {
    static let ramSize = 64 << 10
    static let mapping = try! MemoryMapping(anonymousSize: ramSize)
    static let memory: GuestAddressSpace = {
        let memory = GuestAddressSpace()
        try! memory.add(mapping, at: 0)
        return memory
    }()

    /// Guest RAM holds `data` (from byte 0, the rest zero). The first byte
    /// picks the features (EVENT_IDX, INDIRECT_DESC), the second the queue
    /// size (1 to 16, so that the rings sit in the input's first KiBs).
    static func load(_ data: UnsafeRawBufferPointer) -> (features: UInt64, size: UInt16) {
        let ram = mapping.bytes
        ram.initializeMemory(as: UInt8.self, repeating: 0)
        ram.copyMemory(from: UnsafeRawBufferPointer(rebasing: data.prefix(ramSize)))
        let flags = data.first ?? 0
        var features = VirtioFeature.version1
        if flags & 1 != 0 { features |= VirtioFeature.eventIndex }
        if flags & 2 != 0 { features |= VirtioFeature.indirectDescriptors }
        let size = UInt16(1) << UInt16((data.count > 1 ? data[1] : 4) % 5)  // 1 ... 16
        return (features, size)
    }

    /// Queue `index` at 0x40 + 0x200 * index: 256 bytes of descriptors, then
    /// the available ring (0x100) and the used ring (0x140).
    static func queue(_ index: Int, size: UInt16, features: UInt64) -> SplitQueue? {
        let base = UInt64(0x40 + 0x200 * index)
        return try? SplitQueue(index: index, configuration: QueueConfiguration(
            size: size, descriptorTable: GuestAddress(base), availableRing: GuestAddress(base + 0x100), usedRing: GuestAddress(base + 0x140)),
            memory: memory, features: features)
    }

    /// A context for `queueCount` queues whose fd watches do nothing.
    static func context(queues queueCount: Int, features: UInt64, size: UInt16) -> VirtioContext? {
        var queues: [SplitQueue] = []
        for index in 0..<queueCount {
            guard let queue = queue(index, size: size, features: features) else { return nil }
            queues.append(queue)
        }
        return VirtioContext(queues: queues, features: features, memory: memory, interrupt: VirtioInterrupt(line: {}),
                             watch: { _, _, _ in }, interest: { _, _ in }, unwatch: { _ in })
    }
}
