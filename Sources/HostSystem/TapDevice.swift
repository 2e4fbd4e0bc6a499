#if canImport(Glibc)
import Glibc
#endif
import CHost

/// A Linux tap interface opened for a virtio-net back end: IFF_TAP, no
/// packet information, and a 12-byte virtio-net header before every frame,
/// which the kernel fills for reads and honours for writes (checksum and
/// segmentation offloads).
public final class TapDevice: Sendable {
    public let fileDescriptor: Int32
    /// The interface's name (the kernel's choice when created from a pattern such as "kestrel%d").
    public let name: String

    /// TUN_F_* offload flags for `setOffloads`.
    public struct Offloads: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let checksum = Offloads(rawValue: 0x01)
        public static let tso4 = Offloads(rawValue: 0x02)
        public static let tso6 = Offloads(rawValue: 0x04)
        public static let tsoECN = Offloads(rawValue: 0x08)
    }

    public static let virtioHeaderSize: Int32 = 12

    /// Attaches to tap `name`, which TUNSETIFF creates when it does not exist
    /// and the process has CAP_NET_ADMIN (it then goes away with the fd).
    public init(name: String) throws {
        var actual = [CChar](repeating: 0, count: 16)
        fileDescriptor = try SystemCallError.check(chost_tap_open(name, Self.virtioHeaderSize, &actual), "TUNSETIFF(\(name))")
        self.name = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { close(fileDescriptor) }

    /// Which offloaded packets the tap may deliver (TUNSETOFFLOAD); the guest
    /// must have accepted the matching virtio-net features.
    public func setOffloads(_ offloads: Offloads) throws {
        try SystemCallError.check(chost_tap_set_offload(fileDescriptor, offloads.rawValue), "TUNSETOFFLOAD(\(name), 0x\(String(offloads.rawValue, radix: 16)))")
    }

    /// Whether an interface of that name exists in this network namespace
    /// (if_nametoindex(3), an ioctl on a socket: a jail has no /sys to look in).
    public static func interfaceExists(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && if_nametoindex(name) != 0
    }
}
