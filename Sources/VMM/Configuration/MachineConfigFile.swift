import FoundationEssentials
import Metadata
import Virtio

/// Reads a Firecracker-style JSON machine description. Supported: `boot-source`
/// (`kernel_image_path`, `initrd_path`, `boot_args`), `machine-config`
/// (`vcpu_count`, `mem_size_mib`, `cpu_template`, and Kestrel's
/// `memory_backend` "anonymous" or "guest_memfd"), `drives` (`drive_id`,
/// `path_on_host`, `is_root_device`, `is_read_only`, `partuuid`, `cache_type`,
/// `io_engine` "Sync" or "Async"), `network-interfaces` (`iface_id`, `host_dev_name`,
/// `guest_mac`, `mtu`), `vsock` (`guest_cid`, `uds_path`, `vsock_id`), `entropy`
/// and `serial` (`serial_out_path`).
/// Sections and fields Kestrel does not support (rate limiters, `balloon`,
/// ...) are refused by name.
public enum MachineConfigFile {
    static let supportedSections: Set<String> = ["boot-source", "machine-config", "drives", "entropy", "network-interfaces", "vsock", "serial", "mmds-config", "balloon",
                                                 "cpu-config"]
    /// Sections about the process, not the machine: `kestrel run` reads them
    /// from the document itself (`--config-file`), and they are skipped here.
    public static let processSections: Set<String> = ["logger", "metrics"]
    static let knownUnsupported: Set<String> = []

    public static func load(path: String) throws -> MachineConfiguration {
        try parse(try loadDocument(path: path), source: path)
    }

    /// The file's JSON document, unchecked beyond being JSON.
    public static func loadDocument(path: String) throws -> JSONValue {
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigurationError("cannot read \(path)") }
        return try document([UInt8](data), source: path)
    }

    /// Reads the description from JSON text; `source` names it in errors.
    public static func parse(_ text: [UInt8], source: String) throws -> MachineConfiguration {
        try parse(try document(text, source: source), source: source)
    }

    static func document(_ text: [UInt8], source: String) throws -> JSONValue {
        do { return try JSONValue.parse(text) } catch DecodingError.dataCorrupted(let context) {
            throw ConfigurationError("\(source) is not valid JSON (\(context.debugDescription))")
        } catch {
            throw ConfigurationError("\(source) is not valid JSON (\(error))")
        }
    }

    /// Reads a parsed description. `requireBootSource` false checks a
    /// description still being assembled (the API's pre-boot resources): a
    /// missing `boot-source` then leaves `kernelPath` empty.
    public static func parse(_ document: JSONValue, source: String, requireBootSource: Bool = true) throws -> MachineConfiguration {
        guard let root = document.objectValue else { throw ConfigurationError("\(source): the top level must be an object") }
        for (key, value) in root where !supportedSections.contains(key) && !processSections.contains(key) {
            if value == .array([]) { continue }
            if knownUnsupported.contains(key) { throw ConfigurationError("\(source): \"\(key)\" is not supported by Kestrel yet; remove it or leave it empty") }
            throw ConfigurationError("\(source): unknown section \"\(key)\"")
        }
        var configuration = MachineConfiguration(kernelPath: "")
        if let boot = root["boot-source"]?.objectValue {
            try bootSource(boot, into: &configuration, source: source)
        } else if requireBootSource || root["boot-source"] != nil {
            throw ConfigurationError("\(source): \"boot-source\" is required" + (root["boot-source"] != nil ? " to be an object" : ""))
        }
        if let machine = root["machine-config"] {
            try machineConfig(machine, into: &configuration, source: source)
        }
        if let template = root["cpu-config"], template != .null {
            configuration.customCPUTemplate = try customCPUTemplate(template, source: source)
        }
        if let drives = root["drives"] {
            guard case .array(let items) = drives else { throw ConfigurationError("\(source): drives must be an array") }
            for (index, item) in items.enumerated() {
                configuration.drives.append(try drive(item, at: "drives[\(index)]", source: source))
            }
        }
        if let interfaces = root["network-interfaces"] {
            guard case .array(let items) = interfaces else { throw ConfigurationError("\(source): network-interfaces must be an array") }
            for (index, item) in items.enumerated() {
                let place = "network-interfaces[\(index)]"
                guard let object = item.objectValue else { throw ConfigurationError("\(source): \(place) must be an object") }
                try refuseUnknownKeys(object, allowed: ["iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"],
                                      section: place, source: source)
                let fields = Fields(object: object, place: place, source: source)
                guard let id = try fields.string("iface_id") else { throw ConfigurationError("\(source): \(place).iface_id is required") }
                guard let tap = try fields.string("host_dev_name") else { throw ConfigurationError("\(source): \(place) (\(id)): host_dev_name is required") }
                var mtu: Int?
                if let value = object["mtu"], value != .null {
                    guard let number = value.wholeNumber, NetworkInterfaceConfiguration.mtuRange.contains(number) else {
                        throw ConfigurationError("\(source): \(place) (\(id)): mtu must be a whole number from 68 to 65535")
                    }
                    mtu = number
                }
                var interface = NetworkInterfaceConfiguration(id: id, tapName: tap, guestMAC: try fields.string("guest_mac"), mtu: mtu)
                interface.receiveLimiter = try RateLimiterConfiguration.parse(object["rx_rate_limiter"], place: place + ".rx_rate_limiter", source: source)
                interface.transmitLimiter = try RateLimiterConfiguration.parse(object["tx_rate_limiter"], place: place + ".tx_rate_limiter", source: source)
                configuration.networkInterfaces.append(interface)
            }
        }
        if let vsock = root["vsock"], vsock != .null {
            guard let object = vsock.objectValue else { throw ConfigurationError("\(source): vsock must be an object") }
            try refuseUnknownKeys(object, allowed: ["vsock_id", "guest_cid", "uds_path"], section: "vsock", source: source)
            let fields = Fields(object: object, place: "vsock", source: source)
            guard let cid = object["guest_cid"]?.wholeNumber, cid >= 0 else { throw ConfigurationError("\(source): vsock.guest_cid must be a whole number") }
            guard let path = try fields.string("uds_path") else { throw ConfigurationError("\(source): vsock.uds_path is required") }
            _ = try fields.string("vsock_id")
            configuration.vsock = VsockConfiguration(guestCID: UInt64(cid), udsPath: path)
        }
        if let serial = root["serial"], serial != .null {
            guard let object = serial.objectValue else { throw ConfigurationError("\(source): serial must be an object") }
            try refuseUnknownKeys(object, allowed: ["serial_out_path", "rate_limiter"], section: "serial", source: source)
            if let limiter = object["rate_limiter"], limiter != .null {
                throw ConfigurationError("\(source): serial.rate_limiter is not supported (Kestrel has no rate limiters yet)")
            }
            configuration.serialOutputPath = try Fields(object: object, place: "serial", source: source).string("serial_out_path")
        }
        if let balloon = root["balloon"], balloon != .null {
            configuration.balloon = try BalloonConfiguration.parse(balloon, source: source)
        }
        if let metadata = root["mmds-config"], metadata != .null {
            configuration.metadata = try metadataConfig(metadata, source: source)
        }
        if let entropy = root["entropy"] {
            guard let object = entropy.objectValue else { throw ConfigurationError("\(source): entropy must be an object") }
            try refuseUnknownKeys(object, allowed: ["rate_limiter"], section: "entropy", source: source)
            configuration.entropy = true
            configuration.entropyLimiter = try RateLimiterConfiguration.parse(object["rate_limiter"], place: "entropy.rate_limiter", source: source)
        }
        return configuration
    }

    /// Firecracker's MmdsConfig: `network_interfaces` (required), `version`
    /// V1 or V2 (V1 when missing), `ipv4_address`, `imds_compat`.
    static func metadataConfig(_ value: JSONValue, source: String) throws -> MetadataConfiguration {
        guard let object = value.objectValue else { throw ConfigurationError("\(source): mmds-config must be an object") }
        try refuseUnknownKeys(object, allowed: ["version", "network_interfaces", "ipv4_address", "imds_compat"], section: "mmds-config", source: source)
        let fields = Fields(object: object, place: "mmds-config", source: source)
        guard case .array(let items)? = object["network_interfaces"] else {
            throw ConfigurationError("\(source): mmds-config.network_interfaces is required, an array of interface ids")
        }
        let ids = items.compactMap(\.stringValue)
        guard ids.count == items.count else { throw ConfigurationError("\(source): mmds-config.network_interfaces must hold strings") }
        var configuration = MetadataConfiguration(networkInterfaces: ids)
        if let version = try fields.string("version") {
            guard let known = MetadataConfiguration.Version(rawValue: version) else {
                throw ConfigurationError("\(source): mmds-config.version \"\(version)\" is not V1 or V2")
            }
            configuration.version = known
        }
        if let text = try fields.string("ipv4_address") {
            guard let address = MetadataConfiguration.parseIPv4(text) else {
                throw ConfigurationError("\(source): mmds-config.ipv4_address \"\(text)\" is not an IPv4 address")
            }
            configuration.ipv4Address = address
        }
        configuration.imdsCompatible = try fields.bool("imds_compat") ?? false
        return configuration
    }

    private static func bootSource(_ boot: [String: JSONValue], into configuration: inout MachineConfiguration, source: String) throws {
        try refuseUnknownKeys(boot, allowed: ["kernel_image_path", "initrd_path", "boot_args"], section: "boot-source", source: source)
        guard let kernel = boot["kernel_image_path"]?.stringValue else { throw ConfigurationError("\(source): boot-source.kernel_image_path must be a string") }
        configuration.kernelPath = kernel
        if let initrd = boot["initrd_path"], initrd != .null {
            guard let initrd = initrd.stringValue else { throw ConfigurationError("\(source): boot-source.initrd_path must be a string") }
            configuration.initrdPath = initrd
        }
        if let arguments = boot["boot_args"], arguments != .null {
            guard let arguments = arguments.stringValue else { throw ConfigurationError("\(source): boot-source.boot_args must be a string") }
            configuration.commandLine = arguments
        }
    }

    /// Firecracker's static CPU template names (its swagger's CpuTemplate enum, x86 and Arm).
    static let firecrackerTemplates: Set<String> = ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1"]

    /// The largest `vcpu_count` the swagger allows.
    public static let maximumVCPUCount = 32
    /// The largest `mem_size_mib`: `MachineConfiguration.validate()`'s 1 TiB.
    public static let maximumMemoryMiB = Int(MachineConfiguration.maximumMemorySize >> 20)

    private static func machineConfig(_ machine: JSONValue, into configuration: inout MachineConfiguration, source: String) throws {
        guard let machine = machine.objectValue else { throw ConfigurationError("\(source): machine-config must be an object") }
        try refuseUnknownKeys(machine, allowed: ["vcpu_count", "mem_size_mib", "cpu_template", "smt", "track_dirty_pages", "dirty_log", "huge_pages", "memory_backend"],
                              section: "machine-config", source: source)
        if let count = machine["vcpu_count"] {
            guard let count = count.wholeNumber else { throw ConfigurationError("\(source): machine-config.vcpu_count must be a whole number") }
            // Firecracker's swagger: minimum 1, maximum 32.
            guard (1...Self.maximumVCPUCount).contains(count) else {
                throw ConfigurationError("\(source): machine-config.vcpu_count must be between 1 and \(Self.maximumVCPUCount), not \(count)")
            }
            configuration.vcpuCount = count
        }
        if let size = machine["mem_size_mib"] {
            guard let size = size.wholeNumber, size > 0 else { throw ConfigurationError("\(source): machine-config.mem_size_mib must be a positive whole number") }
            // Checked before the shift: 2^44 MiB and more would wrap to a small size.
            guard size <= Self.maximumMemoryMiB else {
                throw ConfigurationError("\(source): machine-config.mem_size_mib \(size) is more than Kestrel's maximum of \(Self.maximumMemoryMiB) (1 TiB)")
            }
            configuration.memorySize = UInt64(size) << 20
        }
        if let template = machine["cpu_template"], template != .null {
            guard let template = template.stringValue else { throw ConfigurationError("\(source): machine-config.cpu_template must be a string") }
            let name = template == "None" ? CPUTemplate.defaultName : template.lowercased()
            // Refused when put, not at InstanceStart.
            guard CPUTemplate.named(name) != nil else {
                let known = CPUTemplate.all.map(\.name).joined(separator: ", ")
                if Self.firecrackerTemplates.contains(template) {
                    throw ConfigurationError("\(source): machine-config.cpu_template \"\(template)\" is one of Firecracker's static templates, "
                        + "which Kestrel does not serve; give \"None\" or one of Kestrel's: \(known)")
                }
                throw ConfigurationError("\(source): machine-config.cpu_template \"\(template)\" is unknown; give \"None\" or one of: \(known)")
            }
            configuration.cpuTemplate = name
        }
        if let backend = machine["memory_backend"] {
            guard let name = backend.stringValue else { throw ConfigurationError("\(source): machine-config.memory_backend must be a string") }
            do { configuration.memoryBackend = try MemoryBackend.named(name) } catch let error as ConfigurationError {
                throw ConfigurationError("\(source): machine-config.memory_backend: \(error.description)")
            }
        }
        if let smt = machine["smt"], smt != .null {
            guard let smt = smt.boolValue else { throw ConfigurationError("\(source): machine-config.smt must be true or false") }
            configuration.smt = smt
        }
        do { try MachineConfiguration.checkSMT(configuration.smt, vcpuCount: configuration.vcpuCount) } catch let error as ConfigurationError {
            throw ConfigurationError("\(source): machine-config: \(error.description)")
        }
        if let track = machine["track_dirty_pages"], track != .null {
            guard let track = track.boolValue else { throw ConfigurationError("\(source): machine-config.track_dirty_pages must be true or false") }
            configuration.trackDirtyPages = track
        }
        if let mode = machine["dirty_log"], mode != .null {
            guard let name = mode.stringValue, let value = DirtyLogMode(rawValue: name) else {
                throw ConfigurationError("\(source): machine-config.dirty_log must be one of "
                    + DirtyLogMode.allCases.map(\.rawValue).joined(separator: ", ") + ", not \(mode.rendered)")
            }
            configuration.dirtyLog = value
        }
        do { try configuration.checkDirtyTracking() } catch let error as ConfigurationError {
            throw ConfigurationError("\(source): machine-config: \(error.description)")
        }
        if let pages = machine["huge_pages"], pages != .null, pages != .string("None") {
            throw ConfigurationError("\(source): machine-config.huge_pages \(pages.rendered) is not supported (anonymous guest RAM is advised for transparent huge pages already); give \"None\"")
        }
    }

    /// A config file's `cpu-config`: the template itself, or (as Firecracker
    /// allows) the path of a JSON file holding it.
    static func customCPUTemplate(_ value: JSONValue, source: String) throws -> CustomCPUTemplate {
        guard let path = value.stringValue else { return try CustomCPUTemplate.parse(value, source: "\(source): cpu-config") }
        let document: JSONValue
        do { document = try loadDocument(path: path) } catch {
            throw ConfigurationError("\(source): cpu-config \(path): \(error)")
        }
        return try CustomCPUTemplate.parse(document, source: "\(path): cpu-config")
    }

    /// The effective `machine-config` of `configuration`, in Firecracker's
    /// shape (`GET /machine-config`): every field with its value, defaults
    /// included; `cpu_template` only when one is set, and Kestrel's
    /// `memory_backend` only when it is not anonymous memory.
    public static func machineConfigSection(for configuration: MachineConfiguration) -> JSONValue {
        var machine: [String: JSONValue] = [
            "vcpu_count": .number(Double(configuration.vcpuCount)), "mem_size_mib": .number(Double(configuration.memorySize >> 20)),
            "smt": .bool(configuration.smt), "track_dirty_pages": .bool(configuration.trackDirtyPages), "huge_pages": .string("None"),
        ]
        if configuration.cpuTemplate != CPUTemplate.defaultName { machine["cpu_template"] = .string(configuration.cpuTemplate) }
        if configuration.memoryBackend != .anonymous { machine["memory_backend"] = .string(configuration.memoryBackend.rawValue) }
        if configuration.dirtyLog != .bitmap { machine["dirty_log"] = .string(configuration.dirtyLog.rawValue) }
        return .object(machine)
    }

    /// `configuration` as a Firecracker-style description: what `GET
    /// /vm/config` shows for a machine started from flags or a file. Reading
    /// it back with `parse` gives the same configuration.
    public static func document(for configuration: MachineConfiguration) -> JSONValue {
        var boot: [String: JSONValue] = ["kernel_image_path": .string(configuration.kernelPath), "boot_args": .string(configuration.commandLine)]
        if let initrd = configuration.initrdPath { boot["initrd_path"] = .string(initrd) }
        var root: [String: JSONValue] = ["boot-source": .object(boot), "machine-config": machineConfigSection(for: configuration)]
        root["drives"] = .array(configuration.drives.map { drive in
            var object: [String: JSONValue] = [
                "drive_id": .string(drive.id), "path_on_host": .string(drive.path), "is_root_device": .bool(drive.isRoot),
                "is_read_only": .bool(drive.readOnly), "cache_type": .string(drive.cacheType.rawValue), "io_engine": .string(drive.ioEngine.rawValue),
            ]
            if let uuid = drive.partUUID { object["partuuid"] = .string(uuid) }
            if let limiter = drive.rateLimiter { object["rate_limiter"] = limiter.document }
            return .object(object)
        })
        root["network-interfaces"] = .array(configuration.networkInterfaces.map { interface in
            var object: [String: JSONValue] = ["iface_id": .string(interface.id)]
            if let tap = interface.tapName { object["host_dev_name"] = .string(tap) }
            if let mac = interface.guestMAC { object["guest_mac"] = .string(mac) }
            if let mtu = interface.mtu { object["mtu"] = .number(Double(mtu)) }
            if let limiter = interface.receiveLimiter { object["rx_rate_limiter"] = limiter.document }
            if let limiter = interface.transmitLimiter { object["tx_rate_limiter"] = limiter.document }
            return .object(object)
        })
        if let vsock = configuration.vsock {
            root["vsock"] = .object(["guest_cid": .number(Double(vsock.guestCID)), "uds_path": .string(vsock.udsPath)])
        }
        if configuration.entropy {
            root["entropy"] = .object(configuration.entropyLimiter.map { ["rate_limiter": $0.document] } ?? [:])
        }
        if let path = configuration.serialOutputPath { root["serial"] = .object(["serial_out_path": .string(path)]) }
        if let balloon = configuration.balloon { root["balloon"] = balloon.document }
        if let metadata = configuration.metadata {
            root["mmds-config"] = .object([
                "version": .string(metadata.version.rawValue), "network_interfaces": .array(metadata.networkInterfaces.map { .string($0) }),
                "ipv4_address": .string(MetadataConfiguration.text(metadata.ipv4Address)), "imds_compat": .bool(metadata.imdsCompatible),
            ])
        }
        return .object(root)
    }

    /// Typed optional fields of one object, with errors naming the place.
    public struct Fields {
        let object: [String: JSONValue]
        let place: String
        let source: String

        public init(object: [String: JSONValue], place: String, source: String) {
            self.object = object
            self.place = place
            self.source = source
        }

        public func string(_ key: String) throws -> String? {
            guard let value = object[key], value != .null else { return nil }
            guard let text = value.stringValue else { throw ConfigurationError("\(source): \(place).\(key) must be a string") }
            return text
        }

        public func bool(_ key: String) throws -> Bool? {
            guard let value = object[key], value != .null else { return nil }
            guard let flag = value.boolValue else { throw ConfigurationError("\(source): \(place).\(key) must be true or false") }
            return flag
        }
    }

    private static func drive(_ value: JSONValue, at place: String, source: String) throws -> DriveConfiguration {
        guard let object = value.objectValue else { throw ConfigurationError("\(source): \(place) must be an object") }
        try refuseUnknownKeys(object, allowed: ["drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid", "cache_type", "io_engine",
                                                "rate_limiter"], section: place, source: source)
        let fields = Fields(object: object, place: place, source: source)
        let string = fields.string, bool = fields.bool
        guard let id = try string("drive_id") else { throw ConfigurationError("\(source): \(place).drive_id is required") }
        guard let path = try string("path_on_host") else { throw ConfigurationError("\(source): \(place) (\(id)): path_on_host is required") }
        var drive = DriveConfiguration(id: id, path: path, readOnly: try bool("is_read_only") ?? false,
                                       isRoot: try bool("is_root_device") ?? false, partUUID: try string("partuuid"))
        if let cache = try string("cache_type") {
            guard let type = DriveConfiguration.CacheType(rawValue: cache) else {
                throw ConfigurationError("\(source): \(place).cache_type \"\(cache)\" is not Unsafe or Writeback")
            }
            drive.cacheType = type
        }
        drive.rateLimiter = try RateLimiterConfiguration.parse(object["rate_limiter"], place: place + ".rate_limiter", source: source)
        if let engine = try string("io_engine") {
            guard let known = BlockDevice.IOEngine(rawValue: engine) else {
                throw ConfigurationError("\(source): \(place).io_engine \"\(engine)\" is not Sync or Async")
            }
            drive.ioEngine = known
        }
        return drive
    }

    public static func refuseUnknownKeys(_ object: [String: JSONValue], allowed: Set<String>, section: String, source: String) throws {
        if let key = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw ConfigurationError("\(source): \(section).\(key) is not supported (known: \(allowed.sorted().joined(separator: ", ")))")
        }
    }
}
