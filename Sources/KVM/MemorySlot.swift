import CKVM

/// Flags of a memory slot (the `flags` of struct kvm_userspace_memory_region2).
public struct MemorySlotFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// KVM_MEM_LOG_DIRTY_PAGES
    public static let logDirtyPages = MemorySlotFlags(rawValue: 1 << 0)
    /// KVM_MEM_READONLY
    public static let readOnly = MemorySlotFlags(rawValue: 1 << 1)
    /// KVM_MEM_GUEST_MEMFD: the slot's private (or, for MMAP guest_memfds, all)
    /// memory comes from a guest_memfd.
    public static let guestMemfd = MemorySlotFlags(rawValue: 1 << 2)
}

/// A guest physical range backed by host memory, as given to
/// KVM_SET_USER_MEMORY_REGION(2). A size of 0 deletes the slot.
public struct MemorySlot: Hashable, Sendable {
    public var slot: UInt32
    public var flags: MemorySlotFlags
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    /// Host virtual address of the backing memory (0 for a guest_memfd-only slot).
    public var userspaceAddress: UInt64
    /// The guest_memfd fd and the offset into it, with `.guestMemfd` in flags.
    public var guestMemfd: Int32
    public var guestMemfdOffset: UInt64

    public init(slot: UInt32, flags: MemorySlotFlags = [], guestPhysicalAddress: UInt64, size: UInt64,
                userspaceAddress: UInt64, guestMemfd: Int32 = 0, guestMemfdOffset: UInt64 = 0) {
        self.slot = slot
        self.flags = flags
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userspaceAddress = userspaceAddress
        self.guestMemfd = guestMemfd
        self.guestMemfdOffset = guestMemfdOffset
    }

    var region: ckvm_userspace_memory_region {
        ckvm_userspace_memory_region(
            slot: slot, flags: flags.rawValue, guest_phys_addr: guestPhysicalAddress,
            memory_size: size, userspace_addr: userspaceAddress)
    }

    var region2: ckvm_userspace_memory_region2 {
        var value = ckvm_userspace_memory_region2()
        value.slot = slot
        value.flags = flags.rawValue
        value.guest_phys_addr = guestPhysicalAddress
        value.memory_size = size
        value.userspace_addr = userspaceAddress
        value.guest_memfd_offset = guestMemfdOffset
        value.guest_memfd = UInt32(bitPattern: guestMemfd)
        return value
    }
}

/// Memory attributes for KVM_SET_MEMORY_ATTRIBUTES.
public struct MemoryAttributes: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// KVM_MEMORY_ATTRIBUTE_PRIVATE
    public static let `private` = MemoryAttributes(rawValue: 1 << 3)
}
