import FoundationEssentials

/// Reads a Firecracker-style JSON machine description. Supported: `boot-source`
/// (`kernel_image_path`, `initrd_path`, `boot_args`) and `machine-config`
/// (`vcpu_count`, `mem_size_mib`, `cpu_template`). Sections Kestrel does not
/// support yet (`drives`, `network-interfaces`, ...) are refused by name when
/// they are not empty.
public enum MachineConfigFile {
    static let supportedSections: Set<String> = ["boot-source", "machine-config"]
    static let knownUnsupported: Set<String> = ["drives", "network-interfaces", "vsock", "balloon", "logger", "metrics", "mmds-config", "entropy"]

    public static func load(path: String) throws -> MachineConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else { throw ConfigurationError("cannot read \(path)") }
        return try parse([UInt8](data), source: path)
    }

    /// Reads the description from JSON text; `source` names it in errors.
    public static func parse(_ text: [UInt8], source: String) throws -> MachineConfiguration {
        let document: JSONValue
        do { document = try JSONValue.parse(text) } catch DecodingError.dataCorrupted(let context) {
            throw ConfigurationError("\(source) is not valid JSON (\(context.debugDescription))")
        } catch {
            throw ConfigurationError("\(source) is not valid JSON (\(error))")
        }
        return try parse(document, source: source)
    }

    public static func parse(_ document: JSONValue, source: String) throws -> MachineConfiguration {
        guard let root = document.objectValue else { throw ConfigurationError("\(source): the top level must be an object") }
        for (key, value) in root where !supportedSections.contains(key) {
            if value == .array([]) { continue }
            if knownUnsupported.contains(key) { throw ConfigurationError("\(source): \"\(key)\" is not supported by Kestrel yet; remove it or leave it empty") }
            throw ConfigurationError("\(source): unknown section \"\(key)\"")
        }
        guard let boot = root["boot-source"]?.objectValue else { throw ConfigurationError("\(source): \"boot-source\" is required") }
        try refuseUnknownKeys(boot, allowed: ["kernel_image_path", "initrd_path", "boot_args"], section: "boot-source", source: source)
        guard let kernel = boot["kernel_image_path"]?.stringValue else { throw ConfigurationError("\(source): boot-source.kernel_image_path must be a string") }
        var configuration = MachineConfiguration(kernelPath: kernel)
        if let initrd = boot["initrd_path"] {
            guard let initrd = initrd.stringValue else { throw ConfigurationError("\(source): boot-source.initrd_path must be a string") }
            configuration.initrdPath = initrd
        }
        if let arguments = boot["boot_args"] {
            guard let arguments = arguments.stringValue else { throw ConfigurationError("\(source): boot-source.boot_args must be a string") }
            configuration.commandLine = arguments
        }
        if let machine = root["machine-config"] {
            guard let machine = machine.objectValue else { throw ConfigurationError("\(source): machine-config must be an object") }
            try refuseUnknownKeys(machine, allowed: ["vcpu_count", "mem_size_mib", "cpu_template", "smt", "track_dirty_pages"], section: "machine-config", source: source)
            if let count = machine["vcpu_count"] {
                guard let count = count.wholeNumber else { throw ConfigurationError("\(source): machine-config.vcpu_count must be a whole number") }
                configuration.vcpuCount = count
            }
            if let size = machine["mem_size_mib"] {
                guard let size = size.wholeNumber, size > 0 else { throw ConfigurationError("\(source): machine-config.mem_size_mib must be a positive whole number") }
                configuration.memorySize = UInt64(size) << 20
            }
            if let template = machine["cpu_template"] {
                guard let template = template.stringValue else { throw ConfigurationError("\(source): machine-config.cpu_template must be a string") }
                configuration.cpuTemplate = template == "None" ? CPUTemplate.defaultName : template.lowercased()
            }
            if machine["smt"]?.boolValue == true { throw ConfigurationError("\(source): machine-config.smt true is not supported") }
            if machine["track_dirty_pages"]?.boolValue == true { throw ConfigurationError("\(source): machine-config.track_dirty_pages true is not supported") }
        }
        return configuration
    }

    private static func refuseUnknownKeys(_ object: [String: JSONValue], allowed: Set<String>, section: String, source: String) throws {
        if let key = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw ConfigurationError("\(source): \(section).\(key) is not supported (known: \(allowed.sorted().joined(separator: ", ")))")
        }
    }
}
