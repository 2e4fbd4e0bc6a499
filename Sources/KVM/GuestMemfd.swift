import CKVM
import SystemPackage

/// Flags accepted by KVM_CREATE_GUEST_MEMFD (the set a VM allows is in
/// KVM_CAP_GUEST_MEMFD_FLAGS).
public struct GuestMemfdFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// GUEST_MEMFD_FLAG_MMAP: the host may mmap the file (MAP_SHARED only).
    public static let mmap = GuestMemfdFlags(rawValue: 1 << 0)
    /// GUEST_MEMFD_FLAG_INIT_SHARED: pages start shared; without it every host
    /// access faults with SIGBUS.
    public static let initShared = GuestMemfdFlags(rawValue: 1 << 1)
    /// GUEST_MEMFD_FLAG_NO_DIRECT_MAP (in review upstream, offered through
    /// KVM_CAP_GUEST_MEMFD_FLAGS where a kernel carries it): the file's folios
    /// are removed from the host kernel's direct map.
    public static let noDirectMap = GuestMemfdFlags(rawValue: 1 << 2)

    /// The flags that let all of a VM's RAM live in a guest_memfd the host
    /// can map: MMAP and INIT_SHARED (Linux 6.18).
    public static let mappableRAM: GuestMemfdFlags = [.mmap, .initShared]

    public var description: String {
        var names: [String] = []
        if contains(.mmap) { names.append("MMAP") }
        if contains(.initShared) { names.append("INIT_SHARED") }
        if contains(.noDirectMap) { names.append("NO_DIRECT_MAP") }
        let unknown = rawValue & ~(Self.mmap.rawValue | Self.initShared.rawValue | Self.noDirectMap.rawValue)
        if unknown != 0 { names.append("0x" + String(unknown, radix: 16)) }
        return names.isEmpty ? "none" : names.joined(separator: "|")
    }
}

/// A guest_memfd: a file of guest memory owned by one VM, closed on deinit.
public final class GuestMemfd: Sendable {
    /// The guest_memfd file descriptor.
    public let fileDescriptor: Int32
    /// The size it was created with.
    public let size: UInt64
    public let flags: GuestMemfdFlags

    init(fileDescriptor: Int32, size: UInt64, flags: GuestMemfdFlags) {
        self.fileDescriptor = fileDescriptor
        self.size = size
        self.flags = flags
    }

    deinit { SystemCall.close(fileDescriptor) }
}
