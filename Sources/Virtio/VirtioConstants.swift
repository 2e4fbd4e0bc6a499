/// Virtio device types (virtio 1.2, section 5).
public enum VirtioDeviceType: UInt32, Sendable, CustomStringConvertible {
    case network = 1
    case block = 2
    case entropy = 4
    case balloon = 5
    case socket = 19

    public var description: String {
        switch self {
        case .network: return "virtio-net"
        case .block: return "virtio-blk"
        case .entropy: return "virtio-rng"
        case .balloon: return "virtio-balloon"
        case .socket: return "virtio-vsock"
        }
    }
}

/// Feature bits every device shares (virtio 1.2, section 6), as bit masks.
public enum VirtioFeature {
    /// VIRTIO_RING_F_INDIRECT_DESC: descriptors may point at a table of descriptors.
    public static let indirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_RING_F_EVENT_IDX: used_event and avail_event suppress notifications.
    public static let eventIndex: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1: the modern interface, the only one Kestrel offers.
    public static let version1: UInt64 = 1 << 32
    /// VIRTIO_F_ACCESS_PLATFORM: the device reaches memory through the
    /// platform's rules (bounce buffers in shared memory for an SEV guest,
    /// whose Linux refuses devices without it).
    public static let accessPlatform: UInt64 = 1 << 33
}

/// The device status register's bits (virtio 1.2, section 2.1).
public struct VirtioStatus: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let acknowledge = VirtioStatus(rawValue: 1)
    public static let driver = VirtioStatus(rawValue: 2)
    public static let driverOK = VirtioStatus(rawValue: 4)
    public static let featuresOK = VirtioStatus(rawValue: 8)
    public static let needsReset = VirtioStatus(rawValue: 64)
    public static let failed = VirtioStatus(rawValue: 128)

    public var description: String {
        let names: [(VirtioStatus, String)] = [
            (.acknowledge, "ACKNOWLEDGE"), (.driver, "DRIVER"), (.featuresOK, "FEATURES_OK"), (.driverOK, "DRIVER_OK"),
            (.needsReset, "DEVICE_NEEDS_RESET"), (.failed, "FAILED"),
        ]
        let set = names.filter { contains($0.0) }.map(\.1)
        return set.isEmpty ? "0" : set.joined(separator: "|")
    }
}
