/// The lab host with private memory: Debian's 6.12 cloud kernel with its KVM
/// modules rebuilt from Debian's linux-source-6.12 of the same version, with
/// CONFIG_KVM_SW_PROTECTED_VM (and what it selects: KVM_GENERIC_PRIVATE_MEM,
/// KVM_GENERIC_MEMORY_ATTRIBUTES, KVM_PRIVATE_MEM) added to Debian's config.
/// Its KVM offers KVM_X86_SW_PROTECTED_VM, guest_memfd and
/// KVM_SET_MEMORY_ATTRIBUTES, which no Debian kernel does as shipped.
///
/// 6.12 because bookworm-backports builds it with bookworm's gcc 12, the
/// compiler this machine has, so the rebuilt modules match the kernel's ABI
/// and module versions (Module.symvers from the headers package). Only the
/// KVM modules change: the options add code and fields inside KVM and its
/// headers, and XARRAY_MULTI, the one core option they select, is already on.
/// The modules are unsigned (the kernel does not enforce signatures; it
/// taints). The result is cached beside the other lab kernels, under
/// `<release>+sw-protected`.
public struct SoftwareProtectedKVM {
    /// The name lab commands take (`--kernel 6.12-sw-protected`).
    public static let name = "6.12-sw-protected"
    static let baseSeries = "6.12"
    /// Config options set to y, with the options they select.
    static let options = ["KVM_SW_PROTECTED_VM", "KVM_GENERIC_PRIVATE_MEM", "KVM_GENERIC_MEMORY_ATTRIBUTES", "KVM_PRIVATE_MEM"]
    static let rebuiltModules = ["kvm", "kvm-amd", "kvm-intel"]

    public let fetcher: KernelFetcher

    public init(fetcher: KernelFetcher) { self.fetcher = fetcher }

    /// The kernel, from the cache or built (about two minutes here, most of it compiling).
    public func kernel(refresh: Bool = false) throws -> LabKernel {
        let base = try fetcher.kernel(Self.baseSeries, refresh: refresh)
        let directory = fetcher.cache.kernelDirectory(base.release + "+sw-protected")
        if !refresh, let kernel = LabKernel.load(from: directory) { return kernel }
        guard let version = base.packages.lazy.compactMap(Self.packageVersion).first else {
            throw LabError("the cached \(base.release) does not record its package version; fetch it again (kestrel lab kernels --fetch 6.12 --refresh)")
        }
        for tool in ["gcc", "make", "strip", "xz"] where !Self.onPath(tool) {
            throw LabError("building \(Self.name) needs \(tool) (apt-get install gcc make binutils xz-utils)")
        }
        let flavour = "-cloud-amd64"
        guard base.release.hasSuffix(flavour) else { throw LabError("\(base.release) is not a cloud-amd64 kernel") }
        let abi = String(base.release.dropLast(flavour.count))  // 6.12.95+deb12
        let sourceName = "linux-source-" + base.release.split(separator: ".").prefix(2).joined(separator: ".")
        let packages = ["\(sourceName)=\(version)", "linux-headers-\(base.release)=\(version)",
                        "linux-headers-\(abi)-common=\(version)", "linux-kbuild-\(abi)=\(version)"]

        let archive = try DebianArchive(root: fetcher.cache.aptRoot)
        try archive.update(progress: fetcher.progress)
        let work = try TemporaryDirectory(prefix: "kestrel-swprot")
        try makeDirectories(work.path + "/debs")
        fetcher.progress("downloading \(packages.joined(separator: ", "))")
        for deb in try archive.download(packages, into: work.path + "/debs") {
            try HostProcess.check(["dpkg-deb", "-x", deb, work.path + "/root"], what: "unpacking \(deb)")
        }
        let source = work.path + "/root/usr/src"
        let common = "\(source)/linux-headers-\(abi)-common", headers = "\(source)/linux-headers-\(base.release)"
        guard let tarball = directoryEntries(source).first(where: { $0.hasPrefix(sourceName) && $0.hasSuffix(".tar.xz") }) else {
            throw LabError("\(sourceName) holds no source tarball in /usr/src")
        }
        fetcher.progress("extracting arch/x86/kvm and virt/kvm from \(tarball)")
        let top = String(tarball.dropLast(".tar.xz".count))
        try HostProcess.check(["tar", "-xJf", "\(source)/\(tarball)", "-C", source, "\(top)/arch/x86/kvm", "\(top)/virt/kvm"],
                              what: "extracting the KVM sources")
        // The KVM sources go where the headers' srctree expects them; the
        // headers' Makefile names the common tree by its installed path.
        try HostProcess.check(["mkdir", "-p", "\(common)/virt"], what: "mkdir")
        try HostProcess.check(["cp", "-a", "\(source)/\(top)/arch/x86/kvm", "\(common)/arch/x86/kvm"], what: "copying arch/x86/kvm")
        try HostProcess.check(["cp", "-a", "\(source)/\(top)/virt/kvm", "\(common)/virt/kvm"], what: "copying virt/kvm")
        let makefile = try readText(headers + "/Makefile").replacing("/usr/src/", with: source + "/")
        try writeFileAtomically(Array(makefile.utf8), to: headers + "/Makefile")
        try Self.enable(Self.options, headers: headers)

        fetcher.progress("compiling KVM for \(base.release) with CONFIG_KVM_SW_PROTECTED_VM")
        try HostProcess.check(["make", "-C", headers, "M=\(common)/arch/x86/kvm", "modules", "-j\(Self.processors)",
                               "CONFIG_DEBUG_INFO_BTF_MODULES="], what: "building the KVM modules")
        // A modules tree: the base kernel's modules, with KVM replaced.
        let tree = "\(work.path)/tree/\(base.release)"
        try makeDirectories(tree + "/kernel")
        let all = Set(base.amdModules + base.intelModules + (base.hostModules ?? []) + (base.guestModules ?? []))
        for module in all {
            try HostProcess.check(["cp", base.modulePath(module), "\(tree)/kernel/\(module).ko"], what: "copying \(module)")
        }
        for module in Self.rebuiltModules {
            try HostProcess.check(["strip", "--strip-debug", "-o", "\(tree)/kernel/\(module.replacing("-", with: "_")).ko",
                                   "\(common)/arch/x86/kvm/\(module).ko"], what: "stripping \(module).ko")
        }
        let kernel = try LabKernel.prepare(name: Self.name, image: base.bzImage, modulesTree: tree,
                                           packages: base.packages + packages, into: directory)
        fetcher.progress("\(Self.name): \(kernel.release) with KVM rebuilt, in \(directory)")
        return kernel
    }

    /// The version in a .deb file name (`name_version_arch.deb`).
    static func packageVersion(_ fileName: String) -> String? {
        let parts = fileName.split(separator: "_")
        return parts.count == 3 ? String(parts[1]) : nil
    }

    /// Sets `options` to y in the headers' .config, auto.conf and autoconf.h.
    static func enable(_ options: [String], headers: String) throws {
        func rewrite(_ path: String, drop: (Substring) -> Bool, add: (String) -> String) throws {
            let kept = try readText(path).split(separator: "\n", omittingEmptySubsequences: false).filter { !drop($0) }
            let text = kept.joined(separator: "\n").trimmingSuffixNewlines() + "\n" + options.map(add).joined(separator: "\n") + "\n"
            try writeFileAtomically(Array(text.utf8), to: path)
        }
        func mentions(_ line: Substring) -> Bool {
            options.contains { line.contains("CONFIG_\($0)=") || line.contains("CONFIG_\($0) ") || line.hasSuffix("CONFIG_\($0)") }
        }
        for file in [".config", "include/config/auto.conf"] {
            try rewrite("\(headers)/\(file)", drop: mentions, add: { "CONFIG_\($0)=y" })
        }
        try rewrite("\(headers)/include/generated/autoconf.h", drop: mentions, add: { "#define CONFIG_\($0) 1" })
    }

    static var processors: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    static func onPath(_ tool: String) -> Bool {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        return path.split(separator: ":").contains { access("\($0)/\(tool)", X_OK) == 0 }
    }
}

extension String {
    fileprivate func trimmingSuffixNewlines() -> String {
        var text = self
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }
}

import Glibc
