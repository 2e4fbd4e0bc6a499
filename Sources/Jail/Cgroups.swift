#if canImport(Glibc)
import Glibc
#endif
import HostSystem

/// The jail's cgroups, as Firecracker's jailer makes them: under each
/// hierarchy, `<parent-cgroup>/<id>`, with the `--cgroup FILE=VALUE`
/// settings written and the jailed process added. Version 1 has a hierarchy
/// per controller (the file's prefix: `cpuset.cpus` is cpuset's); a new
/// cpuset cgroup gets its parent's cpus and mems first, as v1 requires.
/// Version 2 has one hierarchy; each controller used is enabled in every
/// ancestor's `cgroup.subtree_control`.
enum Cgroups {
    /// The mount points in `mounts` (the text of /proc/mounts): cgroup v1
    /// hierarchies by controller, and the cgroup2 mount.
    static func mounts(_ text: String) -> (v1: [String: String], v2: String?) {
        var v1: [String: String] = [:], v2: String?
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 4 else { continue }
            if fields[2] == "cgroup2" { v2 = v2 ?? fields[1] }
            if fields[2] == "cgroup" {
                for option in fields[3].split(separator: ",") where !["rw", "ro", "relatime", "nosuid", "nodev", "noexec"].contains(option) {
                    v1[String(option)] = v1[String(option)] ?? fields[1]
                }
            }
        }
        return (v1, v2)
    }

    /// Creates the cgroups and moves `pid` into them (nothing to do without settings).
    static func apply(_ arguments: JailArguments, pid: Int32, mountsText: String) throws(JailError) {
        guard !arguments.cgroups.isEmpty else { return }
        let found = mounts(mountsText)
        let controllers = arguments.cgroups.map { String($0.file.prefix { $0 != "." }) }
        if arguments.cgroupVersion == 2 {
            guard let root = found.v2 else { throw JailError("--cgroup-version 2: no cgroup2 file system is mounted (see /proc/mounts)") }
            var path = root
            for component in arguments.cgroupPath.split(separator: "/") {
                for controller in Set(controllers).sorted() { try write("+\(controller)", to: path + "/cgroup.subtree_control") }
                path += "/" + component
                try makeDirectory(path)
            }
            for (file, value) in arguments.cgroups { try write(value, to: path + "/" + file) }
            try write(String(pid), to: path + "/cgroup.procs")
        } else {
            var joined: Set<String> = []
            for ((file, value), controller) in zip(arguments.cgroups, controllers) {
                guard let root = found.v1[controller] else {
                    throw JailError("--cgroup \(file): no cgroup v1 hierarchy has the \(controller) controller (see /proc/mounts)")
                }
                var path = root
                for component in arguments.cgroupPath.split(separator: "/") {
                    let parent = path
                    path += "/" + component
                    try makeDirectory(path)
                    if controller == "cpuset" {
                        for inherited in ["cpuset.cpus", "cpuset.mems"] where read(path + "/" + inherited).isEmpty {
                            try write(read(parent + "/" + inherited), to: path + "/" + inherited)
                        }
                    }
                }
                try write(value, to: path + "/" + file)
                if joined.insert(path).inserted { try write(String(pid), to: path + "/tasks") }
            }
        }
    }

    static func makeDirectory(_ path: String) throws(JailError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw JailError("cannot make the cgroup \(path): \(String(cString: strerror(errno)))") }
    }

    static func write(_ text: String, to path: String) throws(JailError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw JailError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw JailError("cannot write \"\(text)\" to \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func read(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = Glibc.read(fd, &buffer, buffer.count)
        return String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self).trimmingCharacters(whereSpace: true)
    }
}

extension String {
    fileprivate func trimmingCharacters(whereSpace: Bool) -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
