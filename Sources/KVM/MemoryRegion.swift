import GuestMemory
import Synchronization

/// Guest memory as a VM sees it: a guest-physical range, the host mapping
/// behind it, an optional guest_memfd with its offset, and the slot it is
/// installed in. After vm-memory's `GuestRegionMmap` plus the slot, as the
/// selftests' `vm_mem_add()` keeps them together.
///
/// The region owns its backing: it holds the mapping and the `GuestMemfd`
/// (whose descriptor stays open as long as the object lives, so no `dup` is
/// needed). `VirtualMachine.install` keeps every installed region until the slot
/// is removed or the VM goes away, so a slot never points at freed memory.
public final class MemoryRegion: Sendable {
    public let slot: UInt32
    public let start: GuestAddress
    public let size: UInt64
    public let flags: MemorySlotFlags
    /// The host memory behind the range: guest RAM, or a guest_memfd slot's
    /// shared memory. Nil for a slot whose memory is all in the guest_memfd.
    public let mapping: MemoryMapping?
    /// The guest_memfd backing private memory (or all memory, for MMAP ones).
    public let guestMemfd: GuestMemfd?
    public let guestMemfdOffset: UInt64
    /// What KVM_SET_MEMORY_ATTRIBUTES last set for ranges of this region, as
    /// the VMM recorded it. Private/shared conversion (issue 13) keeps this.
    public let attributes = MemoryAttributeMap()

    /// A region of `mapping` at `start`, optionally bound to `guestMemfd` at
    /// `guestMemfdOffset`. The size is the mapping's, or (without a mapping) `size`.
    public init(slot: UInt32, start: GuestAddress, mapping: MemoryMapping?, size: UInt64? = nil, flags: MemorySlotFlags = [],
                guestMemfd: GuestMemfd? = nil, guestMemfdOffset: UInt64 = 0) throws {
        guard let size = mapping.map({ UInt64($0.size) }) ?? size, size > 0 else {
            throw KVMUsageError("a memory region needs a mapping or a size")
        }
        guard start.adding(size) != nil else { throw KVMUsageError("region at \(start) of 0x\(String(size, radix: 16)) bytes wraps past 2^64") }
        if let mapping, UInt64(mapping.size) != size { throw KVMUsageError("mapping of \(mapping.size) bytes for a \(size)-byte region") }
        var flags = flags
        if guestMemfd != nil { flags.insert(.guestMemfd) }
        self.slot = slot
        self.start = start
        self.size = size
        self.flags = flags
        self.mapping = mapping
        self.guestMemfd = guestMemfd
        self.guestMemfdOffset = guestMemfdOffset
    }

    /// The slot as KVM_SET_USER_MEMORY_REGION(2) takes it.
    public var memorySlot: MemorySlot {
        MemorySlot(slot: slot, flags: flags, guestPhysicalAddress: start.rawValue, size: size,
                   userspaceAddress: mapping?.address ?? 0, guestMemfd: guestMemfd?.fileDescriptor ?? 0,
                   guestMemfdOffset: guestMemfdOffset)
    }

    /// Whether `[address, address + length)` lies inside the region.
    public func contains(_ address: GuestAddress, length: UInt64 = 1) -> Bool {
        address >= start && length <= size && address - start <= size - length
    }
}

/// Memory attributes by guest-physical range, as last set with
/// KVM_SET_MEMORY_ATTRIBUTES. Later settings replace earlier ones where they
/// overlap.
public final class MemoryAttributeMap: Sendable {
    private let ranges = Mutex<[(range: Range<UInt64>, attributes: MemoryAttributes)]>([])

    public init() {}

    /// Records `attributes` for `range`.
    public func set(_ attributes: MemoryAttributes, for range: Range<UInt64>) {
        ranges.withLock { list in
            var kept: [(range: Range<UInt64>, attributes: MemoryAttributes)] = []
            for entry in list {
                if entry.range.lowerBound < range.lowerBound {
                    kept.append((entry.range.lowerBound..<min(entry.range.upperBound, range.lowerBound), entry.attributes))
                }
                if entry.range.upperBound > range.upperBound {
                    kept.append((max(entry.range.lowerBound, range.upperBound)..<entry.range.upperBound, entry.attributes))
                }
            }
            if !attributes.isEmpty { kept.append((range, attributes)) }
            list = kept.filter { !$0.range.isEmpty }.sorted { $0.range.lowerBound < $1.range.lowerBound }
        }
    }

    /// The attributes recorded at `address` (empty: shared).
    public func attributes(at address: UInt64) -> MemoryAttributes {
        ranges.withLock { list in list.first { $0.range.contains(address) }?.attributes ?? [] }
    }
}

extension VirtualMachine {
    /// Installs `region` in its slot and keeps it alive until the slot is
    /// removed or the VM goes away. Regions with a guest_memfd use
    /// KVM_SET_USER_MEMORY_REGION2, others KVM_SET_USER_MEMORY_REGION.
    public func install(_ region: MemoryRegion) throws {
        if region.guestMemfd != nil {
            try setUserMemoryRegion2(region.memorySlot)
        } else {
            try setUserMemoryRegion(region.memorySlot)
        }
        installedRegions.withLock { $0[region.slot] = region }
    }

    /// Deletes a slot installed with `install` (a size-0
    /// KVM_SET_USER_MEMORY_REGION), then lets its region go.
    public func removeRegion(slot: UInt32) throws {
        guard let region = installedRegions.withLock({ $0[slot] }) else { throw KVMUsageError("no region is installed in slot \(slot)") }
        var empty = region.memorySlot
        empty.size = 0
        if region.guestMemfd != nil { try setUserMemoryRegion2(empty) } else { try setUserMemoryRegion(empty) }
        installedRegions.withLock { _ = $0.removeValue(forKey: slot) }
    }

    /// The regions installed with `install`, by address.
    public var regions: [MemoryRegion] {
        installedRegions.withLock { Array($0.values) }.sorted { $0.start < $1.start }
    }

    /// Guest RAM in one call: maps `size` bytes of anonymous memory (aligned to
    /// `alignment`), installs it in `slot` at `start`, and adds the mapping to
    /// `space` for bounds-checked access.
    @discardableResult
    public func addMemory(slot: UInt32, at start: GuestAddress, size: Int, alignment: Int = 0, sharing: MemoryMapping.Sharing = .private,
                          to space: GuestAddressSpace) throws -> MemoryRegion {
        let mapping = try MemoryMapping(anonymousSize: size, sharing: sharing, alignment: alignment)
        let region = try MemoryRegion(slot: slot, start: start, mapping: mapping)
        try install(region)
        do {
            try space.add(mapping, at: start)
        } catch {
            try? removeRegion(slot: slot)  // no slot without its place in the address space
            throw error
        }
        return region
    }
}
