import FoundationEssentials

/// A small guest kernel compiled whole from Debian's linux-source, with
/// everything a microVM needs built in and nothing else, like the guest
/// kernels Kata Containers and Firecracker ship. Debian's cloud kernels cannot
/// play that part: they have the virtio drivers as modules, no MP table parser
/// (X86_MPPARSE) and no `virtio_mmio.device=` parameter
/// (VIRTIO_MMIO_CMDLINE_DEVICES), so with `acpi=off`, as Kata boots every
/// Firecracker guest, they find one CPU and no devices.
///
/// It is a guest kernel only (no KVM modules): `--guest NAME` in the lab, or
/// `/lab/guest/vmlinux` for `kestrel run` in an L1. Built on this machine
/// with the compiler of the source's suite, from `allnoconfig` plus
/// `options`; every option must come out set, or the build stops naming it.
public struct GuestKernelBuild: Equatable, Sendable {
    /// The lab kernel's name.
    public var name: String
    /// The catalog series whose linux-source (at that kernel's version) is compiled.
    public var base: String
    /// Config options set to y on top of allnoconfig.
    public var options: [String]
    /// What `uname -r` ends with.
    public var localVersion: String

    /// A 64-bit SMP KVM guest with ACPI (which `acpi=off` turns off) and an MP
    /// table parser; a 16550 console; initramfs, devtmpfs and /dev/mem (the
    /// exit device); virtio-mmio with command-line devices; and the drivers of
    /// Kestrel's five virtio devices: block, net, vsock, entropy and balloon.
    public static let microVM = GuestKernelBuild(
        name: "6.1-microvm", base: "6.1",
        options: [
            "64BIT", "SMP", "HYPERVISOR_GUEST", "PARAVIRT", "KVM_GUEST", "PVH", "ACPI", "X86_MPPARSE",
            "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE", "PRINTK_TIME",
            "BLK_DEV_INITRD", "DEVTMPFS", "DEVTMPFS_MOUNT", "DEVMEM", "BINFMT_ELF", "BINFMT_SCRIPT", "PROC_FS", "SYSFS", "TMPFS",
            "VIRTIO_MENU", "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES",
            "BLOCK", "BLK_DEV", "VIRTIO_BLK",
            "NET", "INET", "UNIX", "PACKET", "NETDEVICES", "NET_CORE", "VIRTIO_NET",
            "VSOCKETS", "VIRTIO_VSOCKETS", "HW_RANDOM", "HW_RANDOM_VIRTIO", "VIRTIO_BALLOON",
        ],
        localVersion: "-kestrel-microvm")

    /// The guest kernels every lab knows.
    public static let builtIn = [microVM]

    public static func recipe(named name: String) -> GuestKernelBuild? { builtIn.first { $0.name == name } }

    /// A short digest of the recipe, in the cache directory's name.
    public var fingerprint: String { labFingerprint([base, localVersion] + options) }

    /// The kernel, from the cache or compiled (about 7 minutes on 2 cores).
    public func kernel(fetcher: KernelFetcher, refresh: Bool = false) throws -> LabKernel {
        guard let series = KernelFetcher.series(named: base) else { throw LabError("\(name): unknown base kernel \(base)") }
        let baseKernel = try fetcher.kernel(base, refresh: refresh)
        let (sourceName, version) = try KVMRebuild.sourcePackage(of: baseKernel)
        let directory = fetcher.cache.kernelDirectory("\(sourceName)-\(version)+\(name)-\(fingerprint)")
        if !refresh, let kernel = LabKernel.load(from: directory) { return kernel }
        for tool in ["make", "flex", "bison", "bc", "xz", "tar"] where HostProcess.find(tool) == nil {
            throw LabError("building the \(name) guest kernel needs \(tool) (apt-get install make flex bison bc xz-utils libelf-dev)")
        }
        guard fileExists("/usr/include/libelf.h") else {
            throw LabError("building the \(name) guest kernel needs libelf's headers for objtool (apt-get install libelf-dev)")
        }
        let archive = try DebianArchive(root: fetcher.cache.aptRoot)
        try archive.update(progress: fetcher.progress)
        let downloads = try TemporaryDirectory(prefix: "kestrel-guest-kernel-debs")
        fetcher.progress("downloading \(sourceName)=\(version)")
        let debs = try archive.download(["\(sourceName)=\(version)"], into: downloads.path)
        // The source's suite's compiler (gcc-12 for bookworm), here or in a Debian root.
        let compiler = Self.compilers[series.suite.split(separator: "-").first.map(String.init) ?? series.suite] ?? "gcc-12"
        let environment = try BuildEnvironment.for(compiler: compiler, suite: series.suite, cache: fetcher.cache, progress: fetcher.progress)
        let work = try environment.makeWorkDirectory()
        defer { removeTree(work.host) }
        for deb in debs { try HostProcess.check(["dpkg-deb", "-x", deb, work.host], what: "unpacking \(deb)") }
        let sources = work.host + "/usr/src"
        let tarball = try KVMRebuild.sourceTarball(in: sources, of: sourceName)
        fetcher.progress("extracting \(tarball)")
        try HostProcess.check(["tar", "-xJf", "\(sources)/\(tarball)", "-C", sources], what: "extracting \(tarball)")
        let top = String(tarball.dropLast(".tar.xz".count))
        let tree = "\(sources)/\(top)", inside = "\(work.inside)/usr/src/\(top)"
        let make = ["make", "-C", inside, "CC=x86_64-linux-gnu-\(compiler)", "HOSTCC=x86_64-linux-gnu-\(compiler)"]
        try environment.run(make + ["allnoconfig"], what: "make allnoconfig")
        let additions = options.map { "CONFIG_\($0)=y\n" }.joined() + "CONFIG_LOCALVERSION=\"\(localVersion)\"\n"
        let config = try readText(tree + "/.config") + additions
        try writeFileAtomically(Array(config.utf8), to: tree + "/.config")
        try environment.run(make + ["olddefconfig"], what: "make olddefconfig")
        let result = try readText(tree + "/.config")
        let missing = options.filter { !result.contains("\nCONFIG_\($0)=y\n") }
        guard missing.isEmpty else {
            throw LabError("\(name): \(sourceName) \(version) does not take \(missing.map { "CONFIG_\($0)" }.joined(separator: ", ")) "
                           + "(a dependency is missing from the recipe, or the option is gone)")
        }
        fetcher.progress("compiling \(name) from \(sourceName) \(version) with \(compiler) (about 7 minutes on 2 cores)")
        try environment.run(make + ["-j\(KVMRebuild.processors)", "bzImage"], what: "building the \(name) kernel")
        let release = try readText(tree + "/include/config/kernel.release").split(separator: "\n").first.map(String.init) ?? name
        removeTree(directory)
        try makeDirectories(directory + "/modules")
        try HostProcess.check(["cp", tree + "/arch/x86/boot/bzImage", directory + "/vmlinuz"], what: "copying the bzImage")
        try HostProcess.check(["cp", tree + "/vmlinux", directory + "/vmlinux"], what: "copying vmlinux")
        try HostProcess.check(["cp", tree + "/.config", directory + "/config"], what: "copying the config")
        let kernel = LabKernel(name: name, release: release, packages: debs.map { $0.split(separator: "/").last.map(String.init) ?? $0 },
                               directory: directory, amdModules: [], intelModules: [], hostModules: [], guestModules: [],
                               modulesLookedFor: LabKernel.wantedHostModules + LabKernel.wantedGuestModules)
        try kernel.save()
        fetcher.progress("\(name): \(release), built from \(sourceName) \(version), in \(directory)")
        return kernel
    }

    /// The compiler of each suite's kernels.
    static let compilers = ["bookworm": "gcc-12", "trixie": "gcc-14"]
}

extension LabKernel {
    /// A guest-only kernel (`GuestKernelBuild`): it has no KVM, so it cannot be an L1.
    public var isGuestOnly: Bool { amdModules.isEmpty && intelModules.isEmpty }
}
