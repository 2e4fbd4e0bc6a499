import Testing
@testable import Jail

@Suite struct JailArgumentsTests {
    @Test func firecrackersJailerLineIsRead() throws {
        let arguments = try JailArguments.parse([
            "--id", "vm-1", "--exec-file", "/usr/bin/firecracker", "--uid", "123", "--gid=456", "--cgroup", "cpuset.cpus=0",
            "--cgroup", "memory.max=268435456", "--chroot-base-dir", "/srv/j", "--netns", "/var/run/netns/a", "--resource-limit", "no-file=1024",
            "--daemonize", "--new-pid-ns", "--cgroup-version", "2", "--parent-cgroup", "fc/vms", "--", "--api-sock", "/run/api.sock", "--",
        ])
        #expect(arguments.id == "vm-1" && arguments.uid == 123 && arguments.gid == 456 && arguments.cgroupVersion == 2)
        #expect(arguments.cgroups.map(\.file) == ["cpuset.cpus", "memory.max"] && arguments.cgroups.map(\.value) == ["0", "268435456"])
        #expect(arguments.chrootDirectory == "/srv/j/firecracker/vm-1/root" && arguments.cgroupPath == "fc/vms/vm-1")
        #expect(arguments.resourceLimits.map(\.resource) == [.openFiles] && arguments.resourceLimits.map(\.value) == [1024])
        #expect(arguments.daemonize && arguments.newPIDNamespace && arguments.networkNamespace == "/var/run/netns/a")
        #expect(arguments.vmmArguments == ["--api-sock", "/run/api.sock", "--"])
        let plain = try JailArguments.parse(["--id", "a", "--exec-file", "/opt/kestrel", "--uid", "0", "--gid", "0"])
        #expect(plain.chrootDirectory == "/srv/jailer/kestrel/a/root" && plain.cgroupPath == "kestrel/a" && plain.cgroupVersion == 1)
        // Kata's line has the older --node.
        let kata = try JailArguments.parse(["--id", "k", "--node", "0", "--exec-file", "/opt/kata/bin/firecracker", "--uid", "1", "--gid", "1",
                                            "--chroot-base-dir", "/run/kata/firecracker", "--daemonize", "--", "--config-file", "/fc.json"])
        #expect(kata.numaNode == 0 && kata.daemonize && kata.vmmArguments == ["--config-file", "/fc.json"])
    }

    @Test func badLinesAreRefusedByName() {
        let base = ["--id", "a", "--exec-file", "/usr/bin/firecracker", "--uid", "1", "--gid", "1"]
        let cases: [([String], String)] = [
            (["--id", "a", "--uid", "1", "--gid", "1"], "--exec-file is required"),
            (base + ["--id", "b"], "--id is given more than once"),
            (["--id", "a b", "--exec-file", "/f/firecracker", "--uid", "1", "--gid", "1"], "an id is 1 to 64"),
            (["--id", "a", "--exec-file", "/usr/bin/qemu", "--uid", "1", "--gid", "1"], "must contain \"firecracker\""),
            (base + ["--cgroup", "nodot=1"], "FILE is a controller's file"),
            (base + ["--cgroup", "cpu.max"], "expected FILE=VALUE"),
            (base + ["--cgroup", "../x.y=1"], "FILE is a controller's file"),
            (base + ["--resource-limit", "cpu=1"], "expected fsize=N or no-file=N"),
            (base + ["--cgroup-version", "3"], "1 or 2"),
            (base + ["--chroot-base-dir", "relative"], "an absolute path"),
            (base + ["--parent-cgroup", "../up"], "without .."),
            (base + ["--daemonize", "--daemonize"], "given more than once"),
            (base + ["--bogus"], "unknown option --bogus"),
            (base + ["--node", "x"], "a NUMA node number"),
            (base + ["stray"], "unexpected argument"),
            (["--id"], "--id needs a value"),
            (["--uid", "x", "--id", "a", "--exec-file", "/f/firecracker", "--gid", "1"], "--uid and --gid are numbers"),
        ]
        for (line, expected) in cases {
            do {
                _ = try JailArguments.parse(line)
                Issue.record("accepted \(line)")
            } catch {
                #expect(error.description.contains(expected), "\(line): \(error)")
            }
        }
    }

    @Test func cgroupMountsAreFoundInProcMounts() {
        let text = """
            tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
            cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
            """
        let mounts = Cgroups.mounts(text)
        #expect(mounts.v1 == ["cpuset": "/sys/fs/cgroup/cpuset", "cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"])
        #expect(mounts.v2 == "/sys/fs/cgroup/unified")
    }
}
