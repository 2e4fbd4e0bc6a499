import Glibc
import Lab
import Testing

/// `kestrel jail` on this machine: Kestrel jailed as nobody in a chroot, in a
/// pids cgroup, serves the API on a socket inside the chroot and boots the
/// crafted ticker guest from a kernel inside it.
@Suite(.timeLimit(.minutes(5))) struct JailProcessTests {
    static func canJail() -> Bool { getuid() == 0 && APIProcessTests.requireKVM() && access("/sys/fs/cgroup/pids", W_OK) == 0 }

    @Test(.enabled(if: canJail(), "needs root, /dev/kvm and a writable cgroup v1 pids hierarchy"))
    func aJailedKestrelServesTheAPIAndBootsAGuest() throws {
        let base = "/tmp/kestrel-jail-\(getpid())", id = "jail-\(getpid())"
        let kestrel = try APIProcessTests.kestrel()
        let root = base + "/kestrel/\(id)/root", socket = root + "/api.sock"
        let log = try TemporaryDirectory(prefix: "kestrel-jail-out")
        defer {
            _ = try? HostProcess.output(["rm", "-rf", base])
            rmdir("/sys/fs/cgroup/pids/kestrel/\(id)")
        }
        let process = try HostProcess.start([kestrel, "jail", "--id", id, "--exec-file", kestrel, "--uid", "65534", "--gid", "65534",
                                             "--chroot-base-dir", base, "--cgroup", "pids.max=200", "--resource-limit", "no-file=512",
                                             "--", "--api-sock", "/api.sock"],
                                            stdout: .file(log.path + "/out"), stderr: .file(log.path + "/err"))
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(APIProcessTests.waitFor(30) { access(socket, F_OK) == 0 }, "no socket in the chroot: \((try? readText(log.path + "/err")) ?? "")")
        let described = try APIProcessTests.curl(socket, "GET", "/")
        #expect(described.0 == 200 && described.1.contains(#""id":"\#(id)""#), "\(described)")
        // The process is the jailed VMM itself: nobody, chrooted, in the cgroup, with the limit.
        let pid = process.process
        let status = (try? readText("/proc/\(pid)/status")) ?? ""
        #expect(status.contains("Uid:\t65534\t65534") && status.contains("Gid:\t65534\t65534"), "\(status)")
        #expect((try? HostProcess.output(["readlink", "/proc/\(pid)/root"]))?.output.split(separator: "\n").first.map(String.init) == root)
        #expect(((try? readText("/proc/\(pid)/cgroup")) ?? "").contains("pids:/kestrel/\(id)"))
        #expect(((try? readText("/sys/fs/cgroup/pids/kestrel/\(id)/pids.max")) ?? "").hasPrefix("200"))
        #expect(((try? readText("/proc/\(pid)/limits")) ?? "").contains("Max open files            512                  512"))
        var device = stat()
        #expect(stat(root + "/dev/kvm", &device) == 0 && device.st_uid == 65534 && device.st_mode & S_IFMT == S_IFCHR)
        var run = stat()
        #expect(stat(root + "/run", &run) == 0 && run.st_uid == 65534 && run.st_mode & 0o777 == 0o700)
        #expect(((try? readText(root + "/kestrel.pid")) ?? "") == "\(pid)\n", "the pid file names the VMM")
        // A guest from a kernel inside the chroot, named by its path there.
        try writeFileAtomically(APIProcessTests.tickerKernel(), to: root + "/ticker.elf")
        chmod(root + "/ticker.elf", 0o644)
        #expect(try APIProcessTests.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "/ticker.elf", "boot_args": "console=ttyS0"}"#).0 == 204)
        #expect(try APIProcessTests.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).0 == 204)
        #expect(try APIProcessTests.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(APIProcessTests.waitFor(20) { APIProcessTests.lines(log.path + "/out") >= 3 }, "the jailed guest printed nothing")
        process.signal(SIGTERM)
        #expect(APIProcessTests.exitStatus(process, within: 10) == 128 + SIGTERM)
    }

    /// --daemonize: the jailer's own process returns at once (a double fork),
    /// and the daemon, found through the pid file, serves the API.
    @Test(.enabled(if: canJail(), "needs root, /dev/kvm and a writable cgroup v1 pids hierarchy"))
    func aDaemonizedJailReturnsAndTheDaemonServes() throws {
        let base = "/tmp/kestrel-jaild-\(getpid())", id = "jaild-\(getpid())"
        let root = base + "/kestrel/\(id)/root"
        defer { _ = try? HostProcess.output(["rm", "-rf", base]) }
        let kestrel = try APIProcessTests.kestrel()
        let started = try HostProcess.output([kestrel, "jail", "--id", id, "--exec-file", kestrel, "--uid", "65534", "--gid", "65534",
                                              "--chroot-base-dir", base, "--daemonize", "--", "--api-sock", "/run/api.sock"])
        #expect(started.status == 0, "\(started)")
        #expect(APIProcessTests.waitFor(30) { access(root + "/run/api.sock", F_OK) == 0 }, "the daemon's socket never appeared")
        let pid = Int32(((try? readText(root + "/kestrel.pid")) ?? "").split(separator: "\n").first ?? "") ?? -1
        #expect(pid > 0 && kill(pid, 0) == 0, "the pid file names a live process")
        #expect(try APIProcessTests.curl(root + "/run/api.sock", "GET", "/").1.contains(#""id":"\#(id)""#))
        let status = (try? readText("/proc/\(pid)/status")) ?? ""
        #expect(status.contains("Uid:\t65534") && getsid(pid) != getsid(0), "in a session of its own, as nobody: \(status.prefix(200))")
        if pid > 0 { kill(pid, SIGTERM) }
        // It is init's child now: gone, or a zombie until init reaps it.
        #expect(APIProcessTests.waitFor(10) {
            let state = (try? readText("/proc/\(pid)/status")) ?? ""
            return state.isEmpty || state.contains("State:\tZ")
        }, "SIGTERM ended the daemon")
    }

    /// A chroot that exists already (Kata makes it, with its files in it) is
    /// taken; a link in it is refused with its path, and what it points to is
    /// left untouched.
    @Test(.enabled(if: getuid() == 0, "needs root"))
    func anExistingChrootIsTakenButALinkInItIsNotFollowed() throws {
        let base = try TemporaryDirectory(prefix: "kestrel-jaill"), outside = try TemporaryDirectory(prefix: "kestrel-jaill-outside")
        let kestrel = try APIProcessTests.kestrel()
        let root = base.path + "/kestrel/linked/root"
        _ = try HostProcess.output(["mkdir", "-p", root])
        try writeFileAtomically(Array("kata's file".utf8), to: root + "/placed")
        #expect(symlink(outside.path, root + "/dev") == 0)
        let refused = try HostProcess.output([kestrel, "jail", "--id", "linked", "--exec-file", kestrel, "--uid", "65534", "--gid", "65534",
                                              "--chroot-base-dir", base.path, "--", "--api-sock", "/api.sock"])
        #expect(refused.status == 2 && refused.errors.contains("\(root)/dev is a link or not a directory"), "\(refused)")
        #expect(((try? HostProcess.output(["ls", "-A", outside.path]))?.output ?? "x").isEmpty, "nothing was made through the link")
        var status = stat()
        #expect(stat(outside.path, &status) == 0 && status.st_uid == 0, "the link's target kept its owner")
        #expect((try? readText(root + "/placed")) == "kata's file")
    }

    /// Kata's hot-plug: the chroot is a shared mount, and a disk the host
    /// bind-mounts over a placeholder after the jail started reaches the
    /// jailed VMM's mount namespace (a slave of the host's, as Firecracker's
    /// jailer makes it; a private one would keep the placeholder).
    @Test(.enabled(if: getuid() == 0 && APIProcessTests.requireKVM(), "needs root and /dev/kvm"))
    func aDiskMountedIntoASharedChrootLaterReachesTheJailedVMM() throws {
        let base = "/tmp/kestrel-jailp-\(getpid())", root = base + "/kestrel/shared/root"
        let kestrel = try APIProcessTests.kestrel()
        func sh(_ command: String) throws -> Int32 { try HostProcess.output(["sh", "-c", command]).status }
        #expect(try sh("mkdir -p \(root) && : > \(root)/drive_0 && head -c 4096 /dev/zero > \(base)/disk.img") == 0)
        #expect(try sh("mount --bind \(root) \(root) && mount --make-shared \(root)") == 0)
        defer { _ = try? sh("umount \(root)/drive_0; umount \(root); rm -rf \(base)") }
        let process = try HostProcess.start([kestrel, "jail", "--id", "shared", "--exec-file", kestrel, "--uid", "65534", "--gid", "65534",
                                             "--chroot-base-dir", base, "--", "--api-sock", "/run/api.sock"], stdout: .null, stderr: .null)
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(APIProcessTests.waitFor(30) { access(root + "/run/api.sock", F_OK) == 0 }, "the jailed VMM's socket never appeared")
        let mountsBefore = (try? readText("/proc/\(process.process)/mountinfo")) ?? ""
        #expect(!mountsBefore.isEmpty && !mountsBefore.contains(" /drive_0 "), "\(mountsBefore)")
        #expect(try sh("mount --bind \(base)/disk.img \(root)/drive_0") == 0)
        let mountsAfter = (try? readText("/proc/\(process.process)/mountinfo")) ?? ""
        #expect(mountsAfter.contains(" /drive_0 "), "the disk reached the jail's namespace: \(mountsAfter)")
        process.signal(SIGTERM)
        #expect(APIProcessTests.exitStatus(process, within: 10) == 128 + SIGTERM)
    }

    /// Kestrel installed as `firecracker` (Kata's layout): the jailer knows it
    /// by its contents, gives it its procfs and Firecracker's line unchanged,
    /// and it serves the default socket /run/firecracker.socket.
    @Test(.enabled(if: getuid() == 0 && APIProcessTests.requireKVM(), "needs root and /dev/kvm"))
    func kestrelInstalledAsFirecrackerIsJailedAsFirecracker() throws {
        let base = try TemporaryDirectory(prefix: "kestrel-jailfc")
        let copy = base.path + "/bin/firecracker", root = base.path + "/firecracker/fc-1/root"
        #expect(try HostProcess.output(["sh", "-c", "mkdir -p \(base.path)/bin && cp \(try APIProcessTests.kestrel()) \(copy)"]).status == 0)
        let process = try HostProcess.start([try APIProcessTests.kestrel(), "jail", "--id", "fc-1", "--exec-file", copy, "--uid", "65534", "--gid", "65534",
                                             "--chroot-base-dir", base.path], stdout: .null, stderr: .file(base.path + "/err"))
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        let socket = root + "/run/firecracker.socket"
        #expect(APIProcessTests.waitFor(30) { access(socket, F_OK) == 0 }, "\((try? readText(base.path + "/err")) ?? "")")
        let described = try APIProcessTests.curl(socket, "GET", "/")
        #expect(described.0 == 200 && described.1.contains(#""id":"fc-1""#), "\(described)")
        #expect(try APIProcessTests.curl(socket, "GET", "/version").1 == #"{"firecracker_version":"1.16.0+kestrel.0.2.0"}"#)
        process.signal(SIGTERM)
        #expect(APIProcessTests.exitStatus(process, within: 10) == 128 + SIGTERM)
        withExtendedLifetime(base) {}
    }

    @Test func badJailLinesExitTwoWithTheReason() throws {
        let kestrel = try APIProcessTests.kestrel()
        let refused = try HostProcess.output([kestrel, "jail", "--id", "x", "--exec-file", "/bin/true", "--uid", "1", "--gid", "1"])
        #expect(refused.status == 2 && refused.errors.contains("must contain \"firecracker\""), "\(refused)")
        let help = try HostProcess.output([kestrel, "jail", "--help"])
        #expect(help.status == 0 && help.output.contains("--exec-file"), "\(help.output.prefix(300))")
    }
}
