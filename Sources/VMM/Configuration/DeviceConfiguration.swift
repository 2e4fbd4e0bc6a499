import FoundationEssentials
import HostSystem
import Metadata
import Virtio

/// A virtio-blk disk, with Firecracker's `drives` fields.
public struct DriveConfiguration: Equatable, Sendable {
    /// Firecracker's `cache_type`: with `unsafe` the device offers no flush.
    public enum CacheType: String, Equatable, Sendable {
        case unsafe = "Unsafe", writeback = "Writeback"
    }

    /// `drive_id`: names the drive in errors and is what GET_ID returns (the
    /// guest's /sys/block/vdX/serial).
    public var id: String
    /// `path_on_host`: a raw image file.
    public var path: String
    /// `is_read_only`.
    public var readOnly: Bool
    /// `is_root_device`: the drive is the guest's root file system; it comes
    /// first (vda) and the command line gets `root=/dev/vda` (or the partuuid)
    /// with `ro` or `rw`.
    public var isRoot: Bool
    /// `partuuid`: the root partition, when the image is partitioned.
    public var partUUID: String?
    public var cacheType: CacheType
    /// Firecracker's `rate_limiter`.
    public var rateLimiter: RateLimiterConfiguration?
    /// Firecracker's `io_engine`: `Sync` on the device thread, or `Async` through io_uring.
    public var ioEngine: BlockDevice.IOEngine = .sync

    public init(id: String, path: String, readOnly: Bool = false, isRoot: Bool = false, partUUID: String? = nil,
                cacheType: CacheType = .unsafe) {
        self.id = id
        self.path = path
        self.readOnly = readOnly
        self.isRoot = isRoot
        self.partUUID = partUUID
        self.cacheType = cacheType
    }

    /// Reads the command-line form `PATH[,id=ID][,ro][,root][,cache=writeback|unsafe][,io=sync|async]`.
    public static func parse(_ text: String, index: Int) throws -> DriveConfiguration {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let path = parts.first, !path.isEmpty else { throw ConfigurationError("--drive \(text): expected PATH[,id=ID][,ro][,root][,cache=writeback]") }
        var drive = DriveConfiguration(id: "drive\(index)", path: path)
        for option in parts.dropFirst() {
            switch option {
            case "ro": drive.readOnly = true
            case "root": drive.isRoot = true
            case "cache=writeback": drive.cacheType = .writeback
            case "cache=unsafe": drive.cacheType = .unsafe
            case "io=async": drive.ioEngine = .async
            case "io=sync": drive.ioEngine = .sync
            case _ where option.hasPrefix("id="): drive.id = String(option.dropFirst(3))
            case _ where option.hasPrefix("partuuid="): drive.partUUID = String(option.dropFirst(9))
            default: throw ConfigurationError("--drive \(text): unknown option \"\(option)\" (known: id=, ro, root, partuuid=, cache=writeback|unsafe, io=sync|async)")
            }
        }
        return drive
    }
}

/// A virtio-net interface, with Firecracker's `network-interfaces` fields.
public struct NetworkInterfaceConfiguration: Equatable, Sendable {
    /// `iface_id`.
    public var id: String
    /// `host_dev_name`: an existing tap; nil has Kestrel create one (needs
    /// CAP_NET_ADMIN; it is named kestrelN and goes away with the VM).
    public var tapName: String?
    /// `guest_mac`; nil picks a random locally administered address.
    public var guestMAC: String?
    /// `mtu`: advertised to the guest with VIRTIO_NET_F_MTU (68 to 65535);
    /// nil advertises none. The tap's own MTU is the host's to set.
    public var mtu: Int?
    /// Firecracker's `rx_rate_limiter` and `tx_rate_limiter`.
    public var receiveLimiter: RateLimiterConfiguration?
    public var transmitLimiter: RateLimiterConfiguration?
    /// The MTUs that may be advertised (virtio-net's 68 to 65535).
    public static let mtuRange = NetDevice.mtuRange

    public init(id: String, tapName: String?, guestMAC: String? = nil, mtu: Int? = nil) {
        self.id = id
        self.tapName = tapName
        self.guestMAC = guestMAC
        self.mtu = mtu
    }

    /// Reads the command-line form `TAP[,id=ID][,mac=MAC][,mtu=N]`, where TAP `auto` has Kestrel create one.
    public static func parse(_ text: String, index: Int) throws -> NetworkInterfaceConfiguration {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let tap = parts.first, !tap.isEmpty else { throw ConfigurationError("--net \(text): expected TAP|auto[,id=ID][,mac=MAC][,mtu=N]") }
        var interface = NetworkInterfaceConfiguration(id: "eth\(index)", tapName: tap == "auto" ? nil : tap)
        for option in parts.dropFirst() {
            if option.hasPrefix("id=") { interface.id = String(option.dropFirst(3)) }
            else if option.hasPrefix("mac=") { interface.guestMAC = String(option.dropFirst(4)) }
            else if option.hasPrefix("mtu=") {
                guard let mtu = Int(option.dropFirst(4)), Self.mtuRange.contains(mtu) else {
                    throw ConfigurationError("--net \(text): mtu must be a whole number from 68 to 65535")
                }
                interface.mtu = mtu
            }
            else { throw ConfigurationError("--net \(text): unknown option \"\(option)\" (known: id=, mac=, mtu=)") }
        }
        return interface
    }
}

/// The virtio-vsock device, with Firecracker's `vsock` fields.
public struct VsockConfiguration: Equatable, Sendable {
    /// `guest_cid`: 3 or more.
    public var guestCID: UInt64
    /// `uds_path`: Kestrel listens here; guest connections to port P go to `uds_path_P`.
    public var udsPath: String

    public init(guestCID: UInt64 = 3, udsPath: String) {
        self.guestCID = guestCID
        self.udsPath = udsPath
    }

    /// Reads the command-line form `PATH[,cid=N]`.
    public static func parse(_ text: String) throws -> VsockConfiguration {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let path = parts.first, !path.isEmpty else { throw ConfigurationError("--vsock \(text): expected PATH[,cid=N]") }
        var vsock = VsockConfiguration(udsPath: path)
        for option in parts.dropFirst() {
            guard option.hasPrefix("cid="), let cid = UInt64(option.dropFirst(4)) else {
                throw ConfigurationError("--vsock \(text): unknown option \"\(option)\" (known: cid=N)")
            }
            vsock.guestCID = cid
        }
        return vsock
    }
}

/// Device identifiers follow Firecracker's rule: 1 to 64 characters of ASCII
/// letters, digits and `_`.
func checkIdentifier(_ id: String, what: String) throws {
    guard (1...64).contains(id.utf8.count), id.utf8.allSatisfy({ $0 == 0x5F || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) }) else {
        throw ConfigurationError("\(what) \"\(id)\" must be 1 to 64 letters, digits or _")
    }
}

extension MachineConfiguration {
    /// Checks the devices before anything is created: identifiers, duplicates,
    /// one root drive, files that exist with the access the drive needs.
    public func validateDevices() throws {
        var seen: Set<String> = []
        for drive in drives {
            try checkIdentifier(drive.id, what: "drive id")
            guard seen.insert(drive.id).inserted else { throw ConfigurationError("drive id \"\(drive.id)\" is used twice") }
            guard FileManager.default.fileExists(atPath: drive.path) else { throw ConfigurationError("drive \(drive.id): \(drive.path) does not exist") }
            do { try HostFile.require(drive.path, is: [.regular], what: "drive \(drive.id):") } catch let error as HostFileError {
                throw ConfigurationError(error.description)
            }
            let writable = drive.readOnly || FileManager.default.isWritableFile(atPath: drive.path)
            guard FileManager.default.isReadableFile(atPath: drive.path), writable else {
                throw ConfigurationError("drive \(drive.id): cannot \(drive.readOnly ? "read" : "read and write") \(drive.path)")
            }
        }
        var interfaces: Set<String> = [], taps: Set<String> = []
        for interface in networkInterfaces {
            try checkIdentifier(interface.id, what: "network interface id")
            guard interfaces.insert(interface.id).inserted else { throw ConfigurationError("network interface id \"\(interface.id)\" is used twice") }
            if let mac = interface.guestMAC {
                guard let bytes = NetDevice.parseMAC(mac), bytes[0] & 1 == 0 else {
                    throw ConfigurationError("network interface \(interface.id): guest_mac \"\(mac)\" is not a unicast address like 06:00:ac:10:00:02")
                }
            }
            if let tap = interface.tapName {
                guard taps.insert(tap).inserted else { throw ConfigurationError("tap \(tap) is given to two network interfaces") }
                guard tap.utf8.count <= 15, !tap.contains("/") else { throw ConfigurationError("network interface \(interface.id): \"\(tap)\" is not an interface name (at most 15 bytes)") }
                guard TapDevice.interfaceExists(tap) else {
                    throw ConfigurationError("network interface \(interface.id): tap \(tap) does not exist (create it with `ip tuntap add dev \(tap) mode tap`, or give auto)")
                }
            }
        }
        if let vsock {
            guard vsock.guestCID >= 3, vsock.guestCID < UInt64(UInt32.max) else { throw ConfigurationError("vsock guest_cid \(vsock.guestCID) must be 3 or more (0 to 2 are reserved)") }
            guard vsock.udsPath.utf8.count <= UnixSocket.maximumPathLength else { throw ConfigurationError("vsock uds_path \(vsock.udsPath) is longer than \(UnixSocket.maximumPathLength) bytes") }
            let directory = vsock.udsPath.contains("/") ? String(vsock.udsPath[..<vsock.udsPath.lastIndex(of: "/")!]) : "."
            guard FileManager.default.fileExists(atPath: directory.isEmpty ? "/" : directory) else {
                throw ConfigurationError("vsock uds_path \(vsock.udsPath): the directory \(directory) does not exist")
            }
        }
        if let metadata {
            guard !metadata.networkInterfaces.isEmpty else { throw ConfigurationError("mmds-config.network_interfaces must name at least one interface") }
            for id in metadata.networkInterfaces where !interfaces.contains(id) {
                throw ConfigurationError("mmds-config: no network interface has the id \"\(id)\" (put the interface first)")
            }
            guard MetadataConfiguration.isUsableLinkLocal(metadata.ipv4Address) else {
                throw ConfigurationError("mmds-config.ipv4_address \(MetadataConfiguration.text(metadata.ipv4Address)) is not in 169.254.1.0 to 169.254.254.255 (RFC 3927)")
            }
        }
        if let balloon, UInt64(balloon.amountMiB) << 20 > memorySize {
            throw ConfigurationError("balloon.amount_mib \(balloon.amountMiB) is more than the guest's \(memorySize >> 20) MiB")
        }
        let roots = drives.filter(\.isRoot)
        guard roots.count <= 1 else { throw ConfigurationError("drives \(roots.map(\.id).joined(separator: " and ")) are both root devices") }
        guard virtioDeviceCount <= MachineConfiguration.maximumVirtioDevices else {
            throw ConfigurationError("\(virtioDeviceCount) virtio devices; at most \(MachineConfiguration.maximumVirtioDevices) fit the interrupt lines")
        }
    }

    /// GSIs 5 to 23 of the IOAPIC: 19 devices.
    public static let maximumVirtioDevices = 19

    var virtioDeviceCount: Int { drives.count + networkInterfaces.count + (vsock == nil ? 0 : 1) + (entropy ? 1 : 0) + (balloon == nil ? 0 : 1) }

    /// The drives in device order: the root drive first, as Firecracker does.
    var orderedDrives: [DriveConfiguration] { drives.filter(\.isRoot) + drives.filter { !$0.isRoot } }

    /// The command line with `root=` for a root drive, unless it names a root already.
    public var effectiveCommandLine: String {
        guard let root = drives.first(where: \.isRoot),
              !commandLine.split(separator: " ").contains(where: { $0.hasPrefix("root=") }) else { return commandLine }
        let device = root.partUUID.map { "PARTUUID=\($0)" } ?? "/dev/vda"
        return commandLine + " root=\(device) \(root.readOnly ? "ro" : "rw")"
    }
}
