import FoundationEssentials

/// Programs of the kernel's KVM selftests (tools/testing/selftests/kvm),
/// built from Debian's linux-source of a catalog kernel's version with patch
/// files applied, as static executables an L1 runs with `kestrel lab run
/// --add`. They build in a cached Debian root of the kernel's suite, whose
/// compiler and kernel headers are as new as the selftests expect (Debian 12's
/// are not), and are cached by recipe.
public struct KVMSelftests: Codable, Equatable, Sendable {
    /// The catalog series whose source is used.
    public var base: String
    /// Patches applied in order with `patch -p1` at the top of the tree.
    public var patches: [KVMRebuild.Patch]
    /// Programs by their path under tools/testing/selftests/kvm
    /// ("x86/debug_regs", "set_memory_region_test").
    public var programs: [String]

    public init(base: String, patches: [KVMRebuild.Patch] = [], programs: [String]) {
        self.base = base
        self.patches = patches
        self.programs = programs
    }

    public var fingerprint: String {
        labFingerprint([base] + patches.flatMap { [$0.name, $0.text] } + programs)
    }

    /// The built programs, by their path under tools/testing/selftests/kvm:
    /// from the cache, or built now (the source package's download and a
    /// minute of compiling the first time).
    public func build(fetcher: KernelFetcher) throws -> [String: String] {
        guard !programs.isEmpty else { throw LabError("name at least one selftest program to build") }
        for program in programs where program.isEmpty || program.hasPrefix("/") || program.split(separator: "/").contains("..") {
            throw LabError("\(program): give a path under tools/testing/selftests/kvm, such as x86/debug_regs")
        }
        guard let series = KernelFetcher.series(named: base) else { throw LabError("unknown base kernel \(base)") }
        let kernel = try fetcher.kernel(base)
        let directory = fetcher.cache.root + "/selftests/\(kernel.release)-\(fingerprint)"
        let outputs = Dictionary(uniqueKeysWithValues: programs.map { ($0, directory + "/" + $0.replacing("/", with: "_")) })
        if outputs.values.allSatisfy({ access($0, X_OK) == 0 }) { return outputs }

        let (sourceName, version) = try KVMRebuild.sourcePackage(of: kernel)
        let archive = try DebianArchive(root: fetcher.cache.aptRoot)
        try archive.update(progress: fetcher.progress)
        let downloads = try TemporaryDirectory(prefix: "kestrel-selftests-debs")
        fetcher.progress("downloading \(sourceName)=\(version)")
        let debs = try archive.download(["\(sourceName)=\(version)"], into: downloads.path)
        let suite = series.suite.hasSuffix("-backports") ? String(series.suite.dropLast("-backports".count)) : series.suite
        let root = try DebianRoot.prepare(suite: suite, packages: ["gcc", "libc6-dev"], cache: fetcher.cache, progress: fetcher.progress)
        let inside = "/tmp/kestrel-selftests-\(getpid())"
        let work = root.hostPath(inside)
        removeTree(work)
        defer { removeTree(work) }
        try makeDirectories(work)
        for deb in debs { try HostProcess.check(["dpkg-deb", "-x", deb, work], what: "unpacking \(deb)") }
        let tarball = try KVMRebuild.sourceTarball(in: work + "/usr/src", of: sourceName)
        fetcher.progress("extracting \(tarball)")
        try HostProcess.check(["tar", "-xJf", "\(work)/usr/src/\(tarball)", "-C", work], what: "extracting \(tarball)")
        let top = String(tarball.dropLast(".tar.xz".count))
        for patch in patches {
            fetcher.progress("applying \(patch.name)")
            let file = work + "/" + (patch.name.split(separator: "/").last.map(String.init) ?? "patch")
            try writeFileAtomically(Array(patch.text.utf8), to: file)
            let result = try HostProcess.output(["patch", "-p1", "--batch", "--forward", "-d", "\(work)/\(top)", "-i", file])
            guard result.status == 0 else {
                throw LabError("\(patch.name) does not apply to \(sourceName) \(version):\n"
                               + (result.output + result.errors).split(separator: "\n").suffix(8).joined(separator: "\n"))
            }
        }
        let selftests = "\(inside)/\(top)/tools/testing/selftests/kvm"
        fetcher.progress("building \(programs.joined(separator: ", ")) in the Debian \(suite) root")
        try root.run(["make", "-C", selftests, "-j\(KVMRebuild.processors)", "EXTRA_CFLAGS=-static", "LDFLAGS=-static"]
                     + programs.map { "\(selftests)/\($0)" }, what: "building the KVM selftests")
        try makeDirectories(directory)
        for (program, output) in outputs {
            try HostProcess.check(["cp", root.hostPath("\(selftests)/\(program)"), output], what: "copying \(program)")
        }
        return outputs
    }
}

/// A short digest of a recipe's parts (FNV-1a, 64-bit), for cache directory names.
func labFingerprint(_ parts: [String]) -> String {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in parts.joined(separator: "\u{0}").utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01B3
    }
    return String(hash, radix: 16)
}

import Glibc
