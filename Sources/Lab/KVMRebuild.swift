import FoundationEssentials

/// A lab kernel whose KVM modules are rebuilt from Debian's linux-source of
/// the same version as a catalog kernel, with config options added and patch
/// files applied: a named lab kernel, usable wherever a kernel name is
/// (`--kernel NAME`, a matrix column). The rest of the kernel, its image and
/// every other module, stays Debian's.
///
/// Only the KVM modules change, so a recipe may set only options that add
/// code inside KVM, and patches may touch only arch/x86/kvm and virt/kvm. The
/// modules are compiled against the kernel's own headers package (its config
/// and Module.symvers) with the compiler the headers name (.kernelvariables:
/// gcc-12 for bookworm-backports' 6.12, gcc-16 for sid's 7.2): on this
/// machine when it has that compiler, otherwise in a cached Debian root of the
/// kernel's suite (`DebianRoot`). The modules are unsigned; Debian's kernels
/// load them and taint.
public struct KVMRebuild: Codable, Equatable, Sendable {
    /// A patch file, kept whole in the recipe so that a built kernel stays
    /// what it was built from.
    public struct Patch: Codable, Equatable, Sendable {
        public var name: String
        public var text: String
        public init(name: String, text: String) {
            self.name = name
            self.text = text
        }
    }

    /// The lab kernel's name.
    public var name: String
    /// The catalog series it rebuilds (`KernelFetcher.catalog`).
    public var base: String
    /// Config options set to y.
    public var options: [String]
    /// Patches applied in order with `patch -p1` at the top of the source tree.
    public var patches: [Patch]

    public init(name: String, base: String, options: [String] = [], patches: [Patch] = []) {
        self.name = name
        self.base = base
        self.options = options
        self.patches = patches
    }

    static let rebuiltModules = ["kvm", "kvm-amd", "kvm-intel"]

    /// Debian's 6.12 cloud kernel with CONFIG_KVM_SW_PROTECTED_VM (and what it
    /// selects: KVM_GENERIC_PRIVATE_MEM, KVM_GENERIC_MEMORY_ATTRIBUTES,
    /// KVM_PRIVATE_MEM) added to Debian's config. Its KVM offers
    /// KVM_X86_SW_PROTECTED_VM, guest_memfd and KVM_SET_MEMORY_ATTRIBUTES,
    /// which no Debian kernel does as shipped. XARRAY_MULTI, the one core
    /// option they select, is already on.
    public static let softwareProtected = KVMRebuild(
        name: "6.12-sw-protected", base: "6.12",
        options: ["KVM_SW_PROTECTED_VM", "KVM_GENERIC_PRIVATE_MEM", "KVM_GENERIC_MEMORY_ATTRIBUTES", "KVM_PRIVATE_MEM"])

    /// The recipes every lab knows.
    public static let builtIn = [softwareProtected]

    /// A short digest of the recipe, in the cache directory's name, so that
    /// a changed patch or option builds anew.
    public var fingerprint: String { labFingerprint([base] + options + patches.flatMap { [$0.name, $0.text] }) }

    // MARK: Recipes in the cache

    /// Records a recipe of the user's (`kestrel lab kernels --build`) in the
    /// cache, where `--kernel NAME` finds it.
    public func save(in cache: LabCache) throws {
        guard !Self.builtIn.contains(where: { $0.name == name }), KernelFetcher.series(named: name) == nil else {
            throw LabError("\(name) is a lab kernel already; choose another name for the rebuild")
        }
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.+".contains($0) }) else {
            throw LabError("a lab kernel name takes letters, digits and - _ . + only: \(name)")
        }
        try makeDirectories(cache.root + "/rebuilds")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(self)), to: Self.recipePath(name, cache: cache))
    }

    /// The recipe named `name`: built in, or recorded in the cache.
    public static func recipe(named name: String, cache: LabCache) -> KVMRebuild? {
        if let known = builtIn.first(where: { $0.name == name }) { return known }
        guard let bytes = try? readBytes(recipePath(name, cache: cache)) else { return nil }
        return try? JSONDecoder().decode(KVMRebuild.self, from: Data(bytes))
    }

    /// The names of the recipes recorded in the cache.
    public static func recordedNames(cache: LabCache) -> [String] {
        directoryEntries(cache.root + "/rebuilds").filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    static func recipePath(_ name: String, cache: LabCache) -> String { cache.root + "/rebuilds/\(name).json" }

    // MARK: Building

    /// The kernel, from the cache or built (a few minutes, most of them compiling).
    public func kernel(fetcher: KernelFetcher, refresh: Bool = false) throws -> LabKernel {
        guard let series = KernelFetcher.series(named: base) else { throw LabError("\(name): unknown base kernel \(base)") }
        let baseKernel = try fetcher.kernel(base, refresh: refresh)
        let directory = fetcher.cache.kernelDirectory("\(baseKernel.release)+\(name)-\(fingerprint)")
        if !refresh, let kernel = LabKernel.load(from: directory) { return kernel }
        let (sourceName, version) = try Self.sourcePackage(of: baseKernel)
        let abi = String(baseKernel.release.dropLast(Self.flavour.count))  // 7.2.13+deb14
        let packages = ["\(sourceName)=\(version)", "linux-headers-\(baseKernel.release)=\(version)",
                        "linux-headers-\(abi)-common=\(version)", "linux-kbuild-\(abi)=\(version)"]
        let archive = try DebianArchive(root: fetcher.cache.aptRoot)
        try archive.update(progress: fetcher.progress)
        let downloads = try TemporaryDirectory(prefix: "kestrel-kvm-debs")
        fetcher.progress("downloading \(packages.joined(separator: ", "))")
        let debs = try archive.download(packages, into: downloads.path)

        // Unpack the headers first: they name the compiler, which decides
        // where the build runs.
        let probe = try TemporaryDirectory(prefix: "kestrel-kvm-probe")
        guard let headerDeb = debs.first(where: { $0.contains("/linux-headers-\(baseKernel.release)_") }) else {
            throw LabError("no headers package among \(debs)")
        }
        try HostProcess.check(["dpkg-deb", "-x", headerDeb, probe.path], what: "unpacking \(headerDeb)")
        let variables = (try? readText(probe.path + "/usr/src/linux-headers-\(baseKernel.release)/.kernelvariables")) ?? ""
        let compiler = Self.compiler(inKernelVariables: variables) ?? "gcc-12"
        let environment = try BuildEnvironment.for(compiler: compiler, suite: series.suite, cache: fetcher.cache, progress: fetcher.progress)

        let work = try environment.makeWorkDirectory()
        defer { removeTree(work.host) }
        for deb in debs {
            try HostProcess.check(["dpkg-deb", "-x", deb, work.host], what: "unpacking \(deb)")
        }
        let source = work.host + "/usr/src"
        let common = "\(source)/linux-headers-\(abi)-common", headers = "\(source)/linux-headers-\(baseKernel.release)"
        let tarball = try Self.sourceTarball(in: source, of: sourceName)
        fetcher.progress("extracting arch/x86/kvm and virt/kvm from \(tarball)")
        let top = String(tarball.dropLast(".tar.xz".count))
        try HostProcess.check(["tar", "-xJf", "\(source)/\(tarball)", "-C", source, "\(top)/arch/x86/kvm", "\(top)/virt/kvm"],
                              what: "extracting the KVM sources")
        for patch in patches {
            fetcher.progress("applying \(patch.name)")
            let file = work.host + "/" + patch.name.split(separator: "/").last!
            try writeFileAtomically(Array(patch.text.utf8), to: file)
            let result = try HostProcess.output(["patch", "-p1", "--batch", "--forward", "-d", "\(source)/\(top)", "-i", file])
            guard result.status == 0 else {
                throw LabError("\(patch.name) does not apply to \(sourceName) \(version) (only arch/x86/kvm and virt/kvm are there):\n"
                               + (result.output + result.errors).split(separator: "\n").suffix(8).joined(separator: "\n"))
            }
        }
        // The KVM sources go where the headers' srctree expects them; the
        // headers' Makefile names the common tree by its installed path.
        try HostProcess.check(["mkdir", "-p", "\(common)/virt"], what: "mkdir")
        try HostProcess.check(["cp", "-a", "\(source)/\(top)/arch/x86/kvm", "\(common)/arch/x86/kvm"], what: "copying arch/x86/kvm")
        try HostProcess.check(["cp", "-a", "\(source)/\(top)/virt/kvm", "\(common)/virt/kvm"], what: "copying virt/kvm")
        let makefile = try readText(headers + "/Makefile").replacing("/usr/src/", with: work.inside + "/usr/src/")
        try writeFileAtomically(Array(makefile.utf8), to: headers + "/Makefile")
        try Self.enable(options, headers: headers)

        fetcher.progress("compiling KVM for \(baseKernel.release) with \(compiler)\(environment.root.map { " in the Debian \($0.suite) root" } ?? "")"
                         + (options.isEmpty ? "" : ", \(options.joined(separator: ", "))") + (patches.isEmpty ? "" : ", \(patches.count) patch(es)"))
        let insideSource = work.inside + "/usr/src"
        try environment.run(["make", "-C", "\(insideSource)/linux-headers-\(baseKernel.release)", "M=\(insideSource)/linux-headers-\(abi)-common/arch/x86/kvm",
                             "modules", "-j\(Self.processors)", "CONFIG_DEBUG_INFO_BTF_MODULES="], what: "building the KVM modules")
        // A modules tree: the base kernel's modules, with KVM replaced.
        let tree = "\(work.host)/tree/\(baseKernel.release)"
        try makeDirectories(tree + "/kernel")
        let all = Set(baseKernel.amdModules + baseKernel.intelModules + (baseKernel.hostModules ?? []) + (baseKernel.guestModules ?? []))
        for module in all {
            try HostProcess.check(["cp", baseKernel.modulePath(module), "\(tree)/kernel/\(module).ko"], what: "copying \(module)")
        }
        for module in Self.rebuiltModules {
            try HostProcess.check(["strip", "--strip-debug", "-o", "\(tree)/kernel/\(module.replacing("-", with: "_")).ko",
                                   "\(common)/arch/x86/kvm/\(module).ko"], what: "stripping \(module).ko")
        }
        removeTree(directory)
        let kernel = try LabKernel.prepare(name: name, image: baseKernel.bzImage, modulesTree: tree,
                                           packages: baseKernel.packages + packages, into: directory)
        // What it was built from, beside it.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(self)), to: directory + "/rebuild.json")
        fetcher.progress("\(name): \(kernel.release) with KVM rebuilt, in \(directory)")
        return kernel
    }

    /// The compiler a Debian headers package builds with: `gcc-16` from its
    /// .kernelvariables line `CC = ... $(CROSS_COMPILE)gcc-16`.
    static func compiler(inKernelVariables text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix("CC ") || line.hasPrefix("CC=") {
            if let word = line.split(separator: " ").last, let range = word.firstRange(of: "gcc-") {
                return String(word[range.lowerBound...])
            }
        }
        return nil
    }

    static let flavour = "-cloud-amd64"

    /// The linux-source package of a fetched Debian cloud kernel, with the
    /// version its image package had (the same source built it).
    static func sourcePackage(of kernel: LabKernel) throws -> (name: String, version: String) {
        guard let version = kernel.packages.lazy.compactMap(packageVersion).first else {
            throw LabError("the cached \(kernel.release) does not record its package version; fetch it again (kestrel lab kernels --fetch \(kernel.name) --refresh)")
        }
        guard kernel.release.hasSuffix(flavour) else { throw LabError("\(kernel.release) is not a cloud-amd64 kernel") }
        return ("linux-source-" + kernel.release.split(separator: ".").prefix(2).joined(separator: "."), version)
    }

    /// The name of the tarball a linux-source package unpacked into
    /// `directory` (its usr/src).
    static func sourceTarball(in directory: String, of sourceName: String) throws -> String {
        guard let tarball = directoryEntries(directory).first(where: { $0.hasPrefix(sourceName) && $0.hasSuffix(".tar.xz") }) else {
            throw LabError("\(sourceName) holds no source tarball in /usr/src")
        }
        return tarball
    }

    /// The version in a .deb file name (`name_version_arch.deb`).
    static func packageVersion(_ fileName: String) -> String? {
        let parts = fileName.split(separator: "_")
        return parts.count == 3 ? String(parts[1]) : nil
    }

    /// Sets `options` to y in the headers' .config, auto.conf and autoconf.h.
    static func enable(_ options: [String], headers: String) throws {
        guard !options.isEmpty else { return }
        func rewrite(_ path: String, drop: (Substring) -> Bool, add: (String) -> String) throws {
            let kept = try readText(path).split(separator: "\n", omittingEmptySubsequences: false).filter { !drop($0) }
            var text = kept.joined(separator: "\n")
            while text.hasSuffix("\n") { text.removeLast() }
            text += "\n" + options.map(add).joined(separator: "\n") + "\n"
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
}

/// Where a KVM rebuild compiles: on this machine, or in a Debian root.
struct BuildEnvironment {
    let root: DebianRoot?

    /// This machine when it has `compiler` (as x86_64-linux-gnu-gcc-N, the
    /// name Debian's headers call), otherwise a root of `suite` (backports
    /// suites build with their base suite's compiler) with that compiler.
    static func `for`(compiler: String, suite: String, cache: LabCache, progress: (String) -> Void) throws -> BuildEnvironment {
        for tool in ["make", "strip", "xz", "patch", "tar"] where HostProcess.find(tool) == nil {
            throw LabError("rebuilding KVM needs \(tool) (apt-get install make binutils xz-utils patch)")
        }
        if HostProcess.find("x86_64-linux-gnu-\(compiler)") != nil { return BuildEnvironment(root: nil) }
        let base = suite.hasSuffix("-backports") ? String(suite.dropLast("-backports".count)) : suite
        progress("this machine has no \(compiler); building in a Debian \(base) root that has it")
        return BuildEnvironment(root: try DebianRoot.prepare(suite: base, packages: [compiler], cache: cache, progress: progress))
    }

    /// A fresh work directory: its path on this machine, and as the build sees it.
    func makeWorkDirectory() throws -> (host: String, inside: String) {
        let inside = "/tmp/kestrel-kvm-\(getpid())"
        let host = root?.hostPath(inside) ?? inside
        removeTree(host)
        try makeDirectories(host)
        return (host, inside)
    }

    func run(_ arguments: [String], what: String) throws {
        if let root { try root.run(arguments, what: what) } else { try HostProcess.check(arguments, what: what) }
    }
}

import Glibc
