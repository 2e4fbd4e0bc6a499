/// The jailer's command line, as Firecracker's jailer takes it
/// (docs/jailer.md):
///
///     jailer --id ID --exec-file PATH --uid UID --gid GID
///            [--parent-cgroup PATH] [--cgroup-version 1|2] [--cgroup FILE=VALUE]...
///            [--chroot-base-dir DIR] [--netns PATH] [--resource-limit NAME=VALUE]...
///            [--daemonize] [--new-pid-ns] [--node N] [-- VMM ARGUMENTS...]
///
/// Each option is `--name value` or `--name=value`; `--cgroup` and
/// `--resource-limit` may repeat, nothing else may. Everything after `--`
/// goes to the VMM unread.
public struct JailArguments: Equatable, Sendable {
    public var id: String
    public var execFile: String
    public var uid: UInt32
    public var gid: UInt32
    public var parentCgroup: String?
    public var cgroupVersion = 1
    /// `file=value` settings, in order ("cpuset.cpus" = "0").
    public var cgroups: [(file: String, value: String)] = []
    public var chrootBaseDirectory = "/srv/jailer"
    public var networkNamespace: String?
    public var resourceLimits: [(resource: ResourceLimit, value: UInt64)] = []
    public var daemonize = false
    public var newPIDNamespace = false
    /// The older jailer's `--node N` (which Kata Containers still passes):
    /// the VMM's cpuset is that NUMA node's CPUs and memory.
    public var numaNode: Int?
    public var vmmArguments: [String] = []

    /// The limits the jailer sets (`--resource-limit`): file size and open files.
    public enum ResourceLimit: String, Sendable, CaseIterable {
        case fileSize = "fsize"
        case openFiles = "no-file"
    }

    /// Firecracker's default `no-file` limit.
    public static let defaultOpenFiles: UInt64 = 2048

    public static func == (lhs: JailArguments, rhs: JailArguments) -> Bool {
        lhs.id == rhs.id && lhs.execFile == rhs.execFile && lhs.uid == rhs.uid && lhs.gid == rhs.gid && lhs.parentCgroup == rhs.parentCgroup
            && lhs.cgroupVersion == rhs.cgroupVersion && lhs.cgroups.map(\.file) == rhs.cgroups.map(\.file)
            && lhs.cgroups.map(\.value) == rhs.cgroups.map(\.value) && lhs.chrootBaseDirectory == rhs.chrootBaseDirectory
            && lhs.networkNamespace == rhs.networkNamespace && lhs.resourceLimits.map(\.resource) == rhs.resourceLimits.map(\.resource)
            && lhs.resourceLimits.map(\.value) == rhs.resourceLimits.map(\.value) && lhs.daemonize == rhs.daemonize
            && lhs.newPIDNamespace == rhs.newPIDNamespace && lhs.vmmArguments == rhs.vmmArguments && lhs.numaNode == rhs.numaNode
    }

    /// Reads the arguments after the program name; throws with the message
    /// a user needs for anything missing, unknown, repeated or malformed.
    public static func parse(_ arguments: [String]) throws(JailError) -> JailArguments {
        var values: [String: String] = [:]
        var cgroups: [(String, String)] = [], limits: [(ResourceLimit, UInt64)] = []
        var flags: Set<String> = []
        var vmm: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                vmm = Array(arguments[index...])
                break
            }
            guard argument.hasPrefix("--") else { throw JailError("unexpected argument \"\(argument)\" (VMM arguments go after --)") }
            var name = String(argument.dropFirst(2)), attached: String?
            if let equals = name.firstIndex(of: "=") {
                attached = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            switch name {
            case "daemonize", "new-pid-ns":
                guard attached == nil else { throw JailError("--\(name) takes no value") }
                guard flags.insert(name).inserted else { throw JailError("--\(name) is given more than once") }
            case "id", "exec-file", "uid", "gid", "parent-cgroup", "cgroup-version", "chroot-base-dir", "netns", "cgroup", "resource-limit", "node":
                let value: String
                if let attached { value = attached } else {
                    guard index < arguments.count, !arguments[index].hasPrefix("--") else { throw JailError("--\(name) needs a value") }
                    value = arguments[index]
                    index += 1
                }
                guard !value.isEmpty, !value.utf8.contains(0) else { throw JailError("--\(name) needs a value") }
                switch name {
                case "cgroup":
                    guard let equals = value.firstIndex(of: "="), equals != value.startIndex else {
                        throw JailError("--cgroup \(value): expected FILE=VALUE, such as cpuset.cpus=0")
                    }
                    let file = String(value[..<equals]), setting = String(value[value.index(after: equals)...])
                    guard file.contains("."), !file.contains("/"), !file.hasPrefix("."), !setting.isEmpty else {
                        throw JailError("--cgroup \(value): FILE is a controller's file, such as cpuset.cpus or memory.max, and VALUE is not empty")
                    }
                    cgroups.append((file, setting))
                case "resource-limit":
                    let parts = value.split(separator: "=", maxSplits: 1).map(String.init)
                    guard parts.count == 2, let resource = ResourceLimit(rawValue: parts[0]), let limit = UInt64(parts[1]) else {
                        throw JailError("--resource-limit \(value): expected fsize=N or no-file=N")
                    }
                    limits.append((resource, limit))
                default:
                    guard values[name] == nil else { throw JailError("--\(name) is given more than once") }
                    values[name] = value
                }
            default:
                throw JailError("unknown option --\(name)")
            }
        }
        for required in ["id", "exec-file", "uid", "gid"] where values[required] == nil {
            throw JailError("--\(required) is required")
        }
        let id = values["id"]!
        guard (1...64).contains(id.utf8.count), id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D }) else {
            throw JailError("--id \(id): an id is 1 to 64 letters, digits and '-'")
        }
        guard let uid = UInt32(values["uid"]!), let gid = UInt32(values["gid"]!) else { throw JailError("--uid and --gid are numbers") }
        var parsed = JailArguments(id: id, execFile: values["exec-file"]!, uid: uid, gid: gid)
        parsed.parentCgroup = values["parent-cgroup"]
        if let parent = parsed.parentCgroup, parent.hasPrefix("/") || parent.split(separator: "/").contains("..") {
            throw JailError("--parent-cgroup \(parent): a path relative to the cgroup root, without ..")
        }
        if let version = values["cgroup-version"] {
            guard version == "1" || version == "2" else { throw JailError("--cgroup-version \(version): 1 or 2") }
            parsed.cgroupVersion = Int(version)!
        }
        parsed.cgroups = cgroups
        if let base = values["chroot-base-dir"] {
            guard base.hasPrefix("/") else { throw JailError("--chroot-base-dir \(base): an absolute path") }
            parsed.chrootBaseDirectory = base
        }
        parsed.networkNamespace = values["netns"]
        parsed.resourceLimits = limits
        parsed.daemonize = flags.contains("daemonize")
        parsed.newPIDNamespace = flags.contains("new-pid-ns")
        parsed.vmmArguments = vmm
        if let node = values["node"] {
            guard let number = Int(node), (0...1023).contains(number) else { throw JailError("--node \(node): a NUMA node number") }
            parsed.numaNode = number
        }
        let name = parsed.execFileName
        guard name.contains("firecracker") || name.contains("kestrel") else {
            throw JailError("--exec-file \(parsed.execFile): the file's name must contain \"firecracker\" (Firecracker's rule) or \"kestrel\"")
        }
        return parsed
    }

    public init(id: String, execFile: String, uid: UInt32, gid: UInt32) {
        self.id = id
        self.execFile = execFile
        self.uid = uid
        self.gid = gid
    }

    /// The exec file's name, which names the chroot's middle directory and the cgroup parent.
    public var execFileName: String { execFile.split(separator: "/").last.map(String.init) ?? execFile }

    /// `<chroot-base-dir>/<exec-file name>/<id>/root`.
    public var chrootDirectory: String {
        (chrootBaseDirectory == "/" ? "" : chrootBaseDirectory) + "/\(execFileName)/\(id)/root"
    }

    /// The cgroup path under each hierarchy: `<parent-cgroup or exec name>/<id>`.
    public var cgroupPath: String { (parentCgroup ?? execFileName) + "/" + id }
}

/// A jailer refusal or failure; its text is the whole message.
public struct JailError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
