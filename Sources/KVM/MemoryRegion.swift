import GuestMemory

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

    /// Guest RAM in one call: maps `size` bytes (aligned to `alignment`) from
    /// `backing`, installs them in `slot` at `start` with `flags` (such as
    /// `logDirtyPages`), and adds the mapping to `space` for bounds-checked access.
    ///
    /// A `.guestMemfd` backing creates the file (KVM_CREATE_GUEST_MEMFD), maps
    /// it MAP_SHARED and installs the slot with KVM_SET_USER_MEMORY_REGION2,
    /// its `userspace_addr` pointing at that mapping. KVM then takes guest
    /// faults from the file, and its own accesses (emulation, the loader's
    /// writes through `space`) reach the same pages; a slot with
    /// `userspace_addr` 0 would leave KVM no host address to use.
    @discardableResult
    public func addMemory(slot: UInt32, at start: GuestAddress, size: Int, alignment: Int = 0, backing: RAMBacking = .anonymous(.private),
                          flags: MemorySlotFlags = [], to space: GuestAddressSpace) throws -> MemoryRegion {
        let mapping: MemoryMapping, file: GuestMemfd?
        switch backing {
        case .anonymous(let sharing):
            mapping = try MemoryMapping(anonymousSize: size, sharing: sharing, alignment: alignment)
            file = nil
        case .sharedMemory:
            mapping = try MemoryMapping(sharedMemorySize: size, name: "kestrel-ram-\(slot)", alignment: alignment)
            file = nil
        case .guestMemfd(let flags):
            guard flags.isSuperset(of: .mappableRAM) else {
                throw KVMUsageError("a guest_memfd that backs RAM the host maps needs MMAP|INIT_SHARED, not \(flags)")
            }
            file = try createGuestMemfd(size: UInt64(size), flags: flags)
            mapping = try MemoryMapping(fileDescriptor: file!.fileDescriptor, size: size, sharing: .shared, alignment: alignment)
        case .file(let descriptor, let offset):
            mapping = try MemoryMapping(fileDescriptor: descriptor, size: size, offset: offset, sharing: .private, alignment: alignment)
            file = nil
        }
        let region = try MemoryRegion(slot: slot, start: start, mapping: mapping, flags: flags, guestMemfd: file)
        try install(region)
        do {
            try space.add(mapping, at: start)
        } catch {
            try? removeRegion(slot: slot)  // no slot without its place in the address space
            throw error
        }
        return region
    }

    /// The guest_memfd flags for RAM the host maps (`RAMBacking.guestMemfd`):
    /// MMAP|INIT_SHARED, plus NO_DIRECT_MAP when this VM offers it. Throws,
    /// naming what is missing, when the host cannot do it.
    public func guestMemfdFlagsForRAM() throws -> GuestMemfdFlags {
        guard try checkExtension(.guestMemfd) != 0 else {
            throw KVMUsageError("this host's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0; it came in Linux 6.8)")
        }
        let offered = try supportedGuestMemfdFlags()
        guard offered.isSuperset(of: .mappableRAM) else {
            throw KVMUsageError("this host's guest_memfd cannot back all guest RAM: KVM_CAP_GUEST_MEMFD_FLAGS offers \(offered) "
                + "for this VM type, and MMAP|INIT_SHARED (Linux 6.18) are needed")
        }
        return offered.contains(.noDirectMap) ? GuestMemfdFlags.mappableRAM.union(.noDirectMap) : .mappableRAM
    }
}

/// Where `VirtualMachine.addMemory` takes guest RAM from.
public enum RAMBacking: Sendable, Equatable {
    /// Anonymous memory (mmap MAP_ANONYMOUS) with the given sharing.
    case anonymous(MemoryMapping.Sharing)
    /// A new memfd, mapped MAP_SHARED (`MemoryMapping.init(sharedMemorySize:)`):
    /// the RAM is a file that can be write-protected, read by offset and
    /// mapped again.
    case sharedMemory
    /// A guest_memfd created with these flags (MMAP and INIT_SHARED at least)
    /// and mapped MAP_SHARED.
    case guestMemfd(GuestMemfdFlags)
    /// `size` bytes of a file from `offset`, mapped MAP_PRIVATE: the guest
    /// reads the file's pages and its writes stay in this process
    /// (copy-on-write), as a snapshot's memory file is restored. The file
    /// must not change while the mapping lives; the descriptor may be
    /// closed once the memory is added.
    case file(descriptor: Int32, offset: Int)
}
