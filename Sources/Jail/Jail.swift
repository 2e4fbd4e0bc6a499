#if canImport(Glibc)
import Glibc
#endif
import CHost
import HostSystem

/// Firecracker's jailer (docs/jailer.md), for Kestrel or Firecracker: makes
/// the chroot `<base>/<exec name>/<id>/root` with a copy of the VMM and the
/// device nodes it needs (/dev/kvm, /dev/net/tun, /dev/userfaultfd where the
/// host has them) owned by the jailed user; sets up the cgroups; joins the
/// network namespace; sets the resource limits; enters a new mount namespace
/// and chroots there; optionally a new PID namespace (the VMM is then its
/// pid 1) and a daemon (a double fork, a new session, stdio on /dev/null);
/// the VMM's pid in `<exec name>.pid` in the chroot; for Kestrel, a procfs of
/// its own (a Swift program reads /proc/self); drops to the uid and gid;
/// and executes the VMM with `--id`, the start times, and the arguments
/// after `--`. Everything that can fail is done before the first change
/// that cannot be undone where it can.
public enum Jail {
    static let cloneNewNS: Int32 = 0x0002_0000, cloneNewPID: Int32 = 0x2000_0000, cloneNewNet: Int32 = 0x4000_0000

    /// Runs the jail; returns only by throwing (the VMM replaces this process).
    public static func run(_ arguments: JailArguments) throws(JailError) -> Never {
        let startMicroseconds = HostClock.microseconds(CLOCK_MONOTONIC)
        guard getuid() == 0 else { throw JailError("the jailer must run as root (it makes device nodes, cgroups and a chroot)") }
        do { try HostFile.require(arguments.execFile, is: [.regular], what: "--exec-file") } catch {
            throw JailError("\(error)")
        }
        let root = arguments.chrootDirectory
        try makeDirectories(String(root.dropLast("/root".count)))
        let name = arguments.execFileName
        let isKestrel = try prepareRoot(root, arguments)
        let mounts = String(decoding: (try? readAll("/proc/self/mounts")) ?? [], as: UTF8.self)
        var settings = arguments
        if let node = arguments.numaNode {
            // --node N: that node's CPUs and memory, unless --cgroup names them itself.
            let cpus = String(decoding: (try? readAll("/sys/devices/system/node/node\(node)/cpulist")) ?? [], as: UTF8.self)
                .split(separator: "\n").first.map(String.init) ?? ""
            guard !cpus.isEmpty else { throw JailError("--node \(node): this host has no NUMA node \(node)") }
            if !settings.cgroups.contains(where: { $0.file == "cpuset.mems" }) { settings.cgroups.append(("cpuset.mems", String(node))) }
            if !settings.cgroups.contains(where: { $0.file == "cpuset.cpus" }) { settings.cgroups.append(("cpuset.cpus", cpus)) }
        }
        try Cgroups.apply(settings, pid: getpid(), mountsText: mounts)
        if let namespace = arguments.networkNamespace {
            let fd = open(namespace, O_RDONLY | O_CLOEXEC)
            guard fd >= 0, chost_setns(fd, cloneNewNet) == 0 else {
                throw JailError("--netns \(namespace): cannot join it: \(String(cString: strerror(errno)))")
            }
            close(fd)
        }
        try setLimits(arguments)
        // Nothing the jailer's caller had open reaches the VMM, as in Firecracker's jailer.
        closeInheritedDescriptors()
        let devNull = arguments.daemonize ? open("/dev/null", O_RDWR) : -1
        // A mount namespace of our own, its mounts slaves of the host's, as in
        // Firecracker's jailer: what the jail mounts stays in it, and what the
        // host mounts later under a shared chroot reaches it (Kata bind-mounts a
        // container's disk over a placeholder drive, then PATCHes the drive).
        guard chost_unshare(cloneNewNS) == 0, mount(nil, "/", nil, UInt(MS_REC | MS_SLAVE), nil) == 0,
              chdir(root) == 0, chroot(".") == 0, chdir("/") == 0 else {
            throw JailError("cannot enter the chroot \(root): \(String(cString: strerror(errno)))")
        }
        var parentCPU: Int64 = 0
        if arguments.daemonize {
            // The double fork: the caller's process returns at once, and the
            // daemon is in a session of its own with no controlling terminal.
            guard devNull >= 0 else { throw JailError("cannot open /dev/null: \(String(cString: strerror(errno)))") }
            let first = fork()
            guard first >= 0 else { throw JailError("fork: \(String(cString: strerror(errno)))") }
            if first > 0 { exit(0) }
            guard setsid() >= 0 else { throw JailError("setsid: \(String(cString: strerror(errno)))") }
            let second = fork()
            guard second >= 0 else { throw JailError("fork: \(String(cString: strerror(errno)))") }
            if second > 0 { exit(0) }
            guard dup2(devNull, 0) >= 0, dup2(devNull, 1) >= 0, dup2(devNull, 2) >= 0 else {
                throw JailError("cannot put standard input and output on /dev/null: \(String(cString: strerror(errno)))")
            }
            close(devNull)
        }
        if arguments.newPIDNamespace {
            guard chost_unshare(cloneNewPID) == 0 else { throw JailError("cannot make a PID namespace: \(String(cString: strerror(errno)))") }
            let child = fork()
            guard child >= 0 else { throw JailError("fork: \(String(cString: strerror(errno)))") }
            if child > 0 {
                // The jailer's part ends here: it records the VMM's pid, as seen from outside.
                try? writeText("\(child)\n", to: "/\(name).pid")
                exit(0)
            }
            parentCPU = HostClock.microseconds(CLOCK_PROCESS_CPUTIME_ID)
        } else {
            // The VMM will be this process: its pid, for orchestrators that read it (Kata does).
            try? writeText("\(getpid())\n", to: "/\(name).pid")
        }
        if isKestrel {
            // A Swift VMM reads /proc/self (its arguments, its executable): the
            // jail gets a procfs of its own that shows only the jailed user's
            // processes and nothing but them (Firecracker's jails have none).
            mkdir("/proc", 0o555)
            let flags = UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)
            guard mount("proc", "/proc", "proc", flags, "hidepid=invisible,subset=pid") == 0 || mount("proc", "/proc", "proc", flags, "hidepid=2") == 0 else {
                throw JailError("cannot mount /proc in the chroot: \(String(cString: strerror(errno)))")
            }
        }
        guard setgroups(0, nil) == 0, setgid(arguments.gid) == 0, setuid(arguments.uid) == 0 else {
            throw JailError("cannot drop to uid \(arguments.uid) and gid \(arguments.gid): \(String(cString: strerror(errno)))")
        }
        var argv = ["/" + name]
        // Kestrel takes Firecracker's line under the name `firecracker`, and run's under any other.
        if isKestrel && name != "firecracker" { argv.append("run") }
        argv += ["--id", arguments.id, "--start-time-us", String(startMicroseconds),
                 "--start-time-cpu-us", String(HostClock.microseconds(CLOCK_PROCESS_CPUTIME_ID)), "--parent-cpu-time-us", String(parentCPU)]
        argv += arguments.vmmArguments
        let cStrings = argv.map { strdup($0) } + [nil]
        // The VMM gets no environment from the jailer's caller (Firecracker's
        // jailer clears it), only this: Swift's crash backtracer would look for
        // its helper program, which the chroot does not hold.
        clearenv()
        setenv("SWIFT_BACKTRACE", "enable=no", 1)
        execv("/" + name, cStrings)
        throw JailError("cannot execute /\(name) in the chroot: \(String(cString: strerror(errno)))")
    }

    /// Closes every descriptor above standard error (those listed in /proc/self/fd).
    static func closeInheritedDescriptors() {
        guard let directory = opendir("/proc/self/fd") else { return }
        var open: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name), fd > 2 { open.append(fd) }
        }
        let own = dirfd(directory)
        closedir(directory)
        for fd in open where fd != own { close(fd) }
    }

    static func makeDirectories(_ path: String) throws(JailError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw JailError("cannot make \(current): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Fills the chroot `root`: /, /dev, /dev/net and /run, the copy of the
    /// exec file and the device nodes; returns whether the exec file is
    /// Kestrel. The root may exist already: Kata makes it and bind-mounts the
    /// kernel, drives, FIFOs and config file into it before it calls the
    /// jailer, which Firecracker's jailer allows. So every step goes through
    /// descriptors opened with O_NOFOLLOW (a link left in an existing root is
    /// refused, never followed), and the directories are root's while the
    /// nodes are made in them: only then are they given to the jailed user
    /// (mode 0700, as Firecracker's jailer leaves them; the default API
    /// socket goes in /run), so nobody can swap an entry in between.
    static func prepareRoot(_ root: String, _ arguments: JailArguments) throws(JailError) -> Bool {
        let parent = open(String(root.dropLast("/root".count)), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard parent >= 0 else { throw JailError("cannot open the chroot's parent: \(String(cString: strerror(errno)))") }
        var opened = [parent]
        defer { opened.forEach { close($0) } }
        func directory(_ name: String, in parent: Int32, path: String) throws(JailError) -> Int32 {
            let fd = try rootOwnedDirectory(name, in: parent, path: path)
            opened.append(fd)
            return fd
        }
        let rootFD = try directory("root", in: parent, path: root)
        let devFD = try directory("dev", in: rootFD, path: root + "/dev")
        let netFD = try directory("net", in: devFD, path: root + "/dev/net")
        let runFD = try directory("run", in: rootFD, path: root + "/run")
        let name = arguments.execFileName
        let isKestrel = try copyFile(arguments.execFile, into: rootFD, name: name, path: root + "/" + name)
        for (path, folder, required) in [("/dev/kvm", devFD, true), ("/dev/net/tun", netFD, false), ("/dev/urandom", devFD, false),
                                         ("/dev/userfaultfd", devFD, false)] {
            try makeDeviceNode(like: path, in: folder, path: root + path, uid: arguments.uid, gid: arguments.gid, required: required)
        }
        for (fd, path) in [(netFD, "/dev/net"), (devFD, "/dev"), (runFD, "/run"), (rootFD, "")] where fchown(fd, arguments.uid, arguments.gid) != 0 {
            throw JailError("cannot give \(root + path) to the jailed user: \(String(cString: strerror(errno)))")
        }
        return isKestrel
    }

    /// The directory `name` in `parent` (made if missing), root's with mode
    /// 0700 for now. Opened with O_NOFOLLOW: a link there is refused.
    static func rootOwnedDirectory(_ name: String, in parent: Int32, path: String) throws(JailError) -> Int32 {
        if mkdirat(parent, name, 0o700) != 0 && errno != EEXIST { throw JailError("cannot make \(path): \(String(cString: strerror(errno)))") }
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            throw JailError(errno == ELOOP || errno == ENOTDIR ? "\(path) is a link or not a directory: the jailer follows no link in the chroot"
                                                              : "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard fchown(fd, 0, 0) == 0, fchmod(fd, 0o700) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw JailError("cannot take \(path) for the set-up: \(reason)")
        }
        return fd
    }

    /// A character device node `path` in the chroot (in `directory`) with the
    /// host node's numbers, owned by the jailed user, read-write for it only.
    static func makeDeviceNode(like hostPath: String, in directory: Int32, path: String, uid: UInt32, gid: UInt32, required: Bool) throws(JailError) {
        var status = stat()
        guard stat(hostPath, &status) == 0, status.st_mode & S_IFMT == S_IFCHR else {
            if required { throw JailError("\(hostPath) is not a character device on this host") }
            return
        }
        let name = String(hostPath.split(separator: "/").last ?? "")
        unlinkat(directory, name, 0)
        guard mknodat(directory, name, S_IFCHR | 0o600, status.st_rdev) == 0, fchownat(directory, name, uid, gid, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw JailError("cannot make \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func setLimits(_ arguments: JailArguments) throws(JailError) {
        var limits: [(Int32, UInt64)] = [(Int32(RLIMIT_NOFILE.rawValue), JailArguments.defaultOpenFiles)]
        for (resource, value) in arguments.resourceLimits {
            switch resource {
            case .openFiles: limits[0].1 = value
            case .fileSize: limits.append((Int32(RLIMIT_FSIZE.rawValue), value))
            }
        }
        for (resource, value) in limits {
            var limit = rlimit(rlim_cur: rlim_t(value), rlim_max: rlim_t(value))
            guard setrlimit(__rlimit_resource_t(UInt32(resource)), &limit) == 0 else {
                throw JailError("cannot set the resource limit \(resource) to \(value): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Bytes only a Kestrel executable holds (this literal is in the jailer's
    /// own binary, longer than Swift's inline strings so it is stored whole).
    static let kestrelMarker = Array("Kestrel's jailer: this executable is Kestrel".utf8)

    /// Whether the open file `fd` of `size` bytes is Kestrel, whatever its
    /// name: Kata and others install the drop-in as `firecracker`, and
    /// Kestrel still needs its procfs. Searched in a read-only mapping.
    static func isKestrelExecutable(_ fd: Int32, size: Int) -> Bool {
        guard size > 0, let mapping = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapping != MAP_FAILED else { return false }
        defer { munmap(mapping, size) }
        // Sound: the mapping covers `size` readable bytes until the munmap above.
        return kestrelMarker.withUnsafeBytes { chost_memmem(mapping, size, $0.baseAddress, $0.count) != nil }
    }

    /// A copy of `source` as `name` in `directory`, made afresh (O_EXCL after
    /// an unlink, so neither a link nor a hard link there is written through),
    /// by the kernel (sendfile). Returns whether the file is Kestrel.
    static func copyFile(_ source: String, into directory: Int32, name: String, path: String) throws(JailError) -> Bool {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw JailError("cannot read \(source): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var status = stat()
        guard fstat(input, &status) == 0 else { throw JailError("cannot read \(source): \(String(cString: strerror(errno)))") }
        let size = Int(status.st_size)
        unlinkat(directory, name, 0)
        let fd = openat(directory, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o755)
        guard fd >= 0 else { throw JailError("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var offset = off_t(0)
        while offset < size {
            let sent = sendfile(fd, input, &offset, size - Int(offset))
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { throw JailError("cannot write \(path): \(sent < 0 ? String(cString: strerror(errno)) : "\(source) ended early")") }
        }
        fchmod(fd, 0o755)
        return isKestrelExecutable(input, size: size)
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError.current("open(\(path))") }
        defer { close(fd) }
        var bytes: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 { if errno == EINTR { continue }; throw SystemCallError.current("read(\(path))") }
            if count == 0 { return bytes }
            bytes += buffer[0..<count]
        }
    }

    /// Writes `text` to a fresh file at `path` (unlinked first, then made with
    /// O_EXCL: no link or hard link left there is written through).
    static func writeText(_ text: String, to path: String) throws {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemCallError.current("open(\(path))") }
        defer { close(fd) }
        _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}
