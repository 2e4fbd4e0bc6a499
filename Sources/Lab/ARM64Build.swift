import Glibc

/// Kestrel for arm64: a static `kestrel` cross-compiled on this x86_64
/// machine with Debian's Swift toolchain and nothing else.
///
/// - The compiler is sid's `swiftlang` (amd64), in a Debian sid root of its
///   own: its glibc is newer than Debian 12's.
/// - The target is a Swift SDK bundle assembled in that root: the Swift
///   runtime and modules of the same `swiftlang` version for arm64 (unpacked
///   from its .deb), over the root's own multiarch arm64 packages (glibc,
///   libgcc, libstdc++ and the C libraries Kestrel links). The toolchain's
///   lld links it.
/// - The dependencies come from this machine's package copies
///   (/opt/swift-packages), bound into the root.
///
/// The binary is cached under the lab cache's `arm64/` by a fingerprint of
/// the package's sources and the toolchain's version, so a source tree is
/// built once. The root keeps its `.build`, so the next build of a changed
/// tree is incremental.
public struct ARM64Build {
    /// The target triple.
    public static let triple = "aarch64-unknown-linux-gnu"
    /// The Swift SDK's name, as `swift build --swift-sdk` takes it.
    public static let sdkName = "debian-aarch64"
    /// The cached root's name under the lab cache's `roots/`.
    static let rootName = "sid-swift-arm64"
    /// Inside the root: where the SDK bundle is (`swift build --swift-sdks-path`).
    static let sdksDirectory = "/opt/swift-sdks"
    static let bundleName = "kestrel-aarch64.artifactbundle"
    /// Inside the root: the package's copy and its `.build`.
    static let packageDirectory = "/build/kestrel"
    /// The build machine's side: the compiler, git for SwiftPM, pkgconf for
    /// the system libraries, and amd64's libc6-dev, which linking
    /// Package.swift itself needs.
    static let toolchainPackages = ["swiftlang", "git", "pkgconf", "libc6-dev"]
    /// The arm64 packages beside glibc that Kestrel's C targets link
    /// (zlib, liblzma, libzstd and liburing: Package.swift's system libraries).
    static let targetPackages = ["libc6-dev", "linux-libc-dev", "zlib1g-dev", "liblzma-dev", "libzstd-dev", "liburing-dev"]
    /// Where this machine keeps its Swift package copies (the env notes'
    /// /opt/swift-packages, which git reads every github.com address from).
    public static let packageCopies = "/opt/swift-packages"

    public let cache: LabCache
    public let progress: (String) -> Void

    public init(cache: LabCache, progress: @escaping (String) -> Void) {
        self.cache = cache
        self.progress = progress
    }

    /// What `build` gives back.
    public struct Result {
        /// The static arm64 executable, in the lab cache.
        public var path: String
        /// Whether it came from the cache (nothing was compiled).
        public var cached: Bool
        /// The build's wall time, root and toolchain set-up included (0 when cached).
        public var seconds: Double
        /// The toolchain's Debian version (`swiftlang`), when known.
        public var toolchain: String?
    }

    /// The static arm64 `kestrel` of the package at `package`: from the cache
    /// when its sources were built before, otherwise built now with `jobs`
    /// parallel jobs (default: the machine's processors). The first build
    /// makes the root (debootstrap, then about 5 GB of packages) and the SDK bundle.
    public func build(package: String, jobs: Int? = nil, rebuild: Bool = false) throws -> Result {
        let jobs = jobs ?? KVMRebuild.processors
        guard getuid() == 0 else { throw LabError("the arm64 build runs in a Debian root (debootstrap and chroot); run as root") }
        guard isDirectory(Self.packageCopies) else {
            throw LabError("\(Self.packageCopies) is missing: the arm64 build takes Kestrel's dependencies from this machine's Swift package copies")
        }
        let start = ContinuousClock.now
        let rootPath = cache.root + "/roots/" + Self.rootName
        // The key names the toolchain the root has now, so a root whose
        // swiftlang changed builds again.
        if !rebuild, let installed = Self.installedVersion(of: "swiftlang", dpkgStatus: rootPath + "/var/lib/dpkg/status") {
            let cached = cache.root + "/arm64/kestrel-" + (try Self.sourceFingerprint(package: package, toolchain: installed))
            if access(cached, X_OK) == 0 { return Result(path: cached, cached: true, seconds: 0, toolchain: installed) }
        }
        // One build at a time: they share the root's copy of the package and its .build.
        try makeDirectories(cache.root + "/arm64")
        let lock = open(cache.root + "/arm64/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw LabError("cannot open \(cache.root)/arm64/.lock: \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        if flock(lock, LOCK_EX | LOCK_NB) != 0 {
            progress("waiting for another arm64 build to finish")
            guard flock(lock, LOCK_EX) == 0 else { throw LabError("cannot lock \(cache.root)/arm64/.lock: \(String(cString: strerror(errno)))") }
        }

        var root = try DebianRoot.prepare(suite: "sid", name: Self.rootName, foreignArchitectures: ["arm64"],
                                          packages: Self.toolchainPackages, buildTools: false, cache: cache, progress: progress)
        // libgcc's and libstdc++'s development packages carry the compiler's
        // major version in their names: take the one swiftlang brought.
        let gcc = try root.run(["gcc", "-dumpversion"], what: "asking the \(Self.rootName) root's gcc for its version")
            .split(separator: "\n").first.map(String.init) ?? ""
        guard !gcc.isEmpty, gcc.allSatisfy(\.isNumber) else { throw LabError("the \(Self.rootName) root's gcc gave no major version (\(gcc))") }
        root = try DebianRoot.prepare(suite: "sid", name: Self.rootName, foreignArchitectures: ["arm64"],
                                      packages: Self.toolchainPackages
                                          + (Self.targetPackages + ["libgcc-\(gcc)-dev", "libstdc++-\(gcc)-dev"]).map { $0 + ":arm64" },
                                      buildTools: false, cache: cache, progress: progress)
        guard let toolchain = Self.installedVersion(of: "swiftlang", dpkgStatus: root.hostPath("/var/lib/dpkg/status")) else {
            throw LabError("swiftlang is not installed in \(root.path)")
        }
        try assembleBundle(in: root, toolchain: toolchain)

        // The sources as they are now, beside the root's last .build; the
        // key is the copy's, which is what gets built.
        let copy = root.hostPath(Self.packageDirectory)
        try makeDirectories(copy)
        for name in ["Package.swift", "Package.resolved", "Sources", "Tests"] {
            removeTree(copy + "/" + name)
            guard access(package + "/" + name, F_OK) == 0 else { continue }
            try HostProcess.check(["cp", "-a", package + "/" + name, copy + "/" + name], what: "copying \(name) into the \(Self.rootName) root")
        }
        let fingerprint = try Self.sourceFingerprint(package: copy, toolchain: toolchain)
        try writeFileAtomically(Array(Self.gitConfiguration.utf8), to: root.hostPath("/root/.gitconfig"))
        progress("building kestrel for \(Self.triple) with swiftlang \(toolchain) (\(jobs) jobs; several minutes the first time)")
        let script = "cd \(Self.packageDirectory) && HOME=/root PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig swift build -c release "
            + "--swift-sdks-path \(Self.sdksDirectory) --swift-sdk \(Self.sdkName) --static-swift-stdlib --product kestrel -j \(jobs) 2>&1"
        let built = try HostProcess.output(root.command(["sh", "-c", script], binding: Self.packageCopies))
        guard built.status == 0 else {
            // The build's own output, then anything the chroot's set-up said.
            let lines = built.output.split(separator: "\n")
            let errors = lines.filter { $0.contains("error:") }
            throw LabError("the arm64 build failed (status \(built.status)):\n  "
                           + ((errors.isEmpty ? Array(lines.suffix(12)) : Array(errors.prefix(12))) + built.errors.split(separator: "\n").suffix(4))
                               .joined(separator: "\n  "))
        }
        let binary = root.hostPath(Self.packageDirectory + "/.build/\(Self.triple)/release/kestrel")
        let bytes = try readBytes(binary)
        guard Self.isStaticARM64Executable(bytes) else { throw LabError("\(binary) is not a static arm64 executable") }
        let output = cache.root + "/arm64/kestrel-" + fingerprint
        try writeFileAtomically(bytes, to: output)
        chmod(output, 0o755)
        pruneCache(keeping: output)
        return Result(path: output, cached: false, seconds: LabMachine.seconds(ContinuousClock.now - start), toolchain: toolchain)
    }

    /// How many built binaries the cache keeps (the newest; 45 MiB each).
    static let cachedBinaries = 3

    /// Removes all but the newest `cachedBinaries` binaries, `kept` among them.
    func pruneCache(keeping kept: String) {
        let directory = cache.root + "/arm64"
        let binaries = directoryEntries(directory).filter { $0.hasPrefix("kestrel-") }.map { directory + "/" + $0 }
            .sorted { (modificationTime($0) ?? 0) > (modificationTime($1) ?? 0) }
        for old in binaries.dropFirst(Self.cachedBinaries) where old != kept { unlink(old) }
    }

    /// A package's version in a dpkg status file, when it is installed.
    static func installedVersion(of package: String, dpkgStatus path: String) -> String? {
        guard let text = try? readText(path) else { return nil }
        for stanza in text.split(separator: "\n\n") {
            let fields = stanza.split(separator: "\n")
            guard fields.contains("Package: \(package)"),
                  fields.contains(where: { $0.hasPrefix("Status: ") && $0.hasSuffix(" installed") }) else { continue }
            return fields.first { $0.hasPrefix("Version: ") }.map { String($0.dropFirst("Version: ".count)) }
        }
        return nil
    }

    /// The root's git configuration: github.com addresses read from the
    /// package copies, bound at `DebianRoot.boundDirectory`.
    static var gitConfiguration: String {
        let copies = DebianRoot.boundDirectory + "/"
        return "[url \"\(copies)\"]\n\tinsteadOf = https://github.com/\n\tinsteadOf = git@github.com:\n\tinsteadOf = ssh://git@github.com/\n"
            + "[safe]\n\tdirectory = *\n"
    }

    /// Makes the SDK bundle in the root for `toolchain` (swiftlang's Debian
    /// version) unless it is there: the arm64 swiftlang's runtime, modules
    /// and clang headers under a sysroot whose include and library
    /// directories are the root's own multiarch ones.
    func assembleBundle(in root: DebianRoot, toolchain: String) throws {
        let bundle = root.hostPath(Self.sdksDirectory + "/" + Self.bundleName)
        if (try? readText(bundle + "/toolchain")) == toolchain + "\n" { return }
        // The arm64 package of the same source version: a binNMU's "+bN"
        // is per architecture, so the two versions may differ there.
        let madison = try root.run(["apt-cache", "madison", "swiftlang:arm64"], what: "listing swiftlang:arm64's versions")
        guard let target = DebianArchive.madisonVersions(madison).map(\.version)
            .first(where: { Self.sourceVersion($0) == Self.sourceVersion(toolchain) }) else {
            throw LabError("the archive has no swiftlang:arm64 of swiftlang \(toolchain)'s source version (it lists "
                           + "\(DebianArchive.madisonVersions(madison).map(\.version).joined(separator: ", "))); sid's two "
                           + "architectures may be out of step for now, or the root's swiftlang is gone from sid: remove \(root.path) to start again")
        }
        progress("assembling the arm64 Swift SDK from swiftlang:arm64=\(target)")
        let staging = "/tmp/kestrel-swiftlang-arm64"
        removeTree(root.hostPath(staging))
        defer { removeTree(root.hostPath(staging)) }
        try makeDirectories(root.hostPath(staging))
        // Downloaded and unpacked before the old bundle goes, so a failure leaves it as it was.
        try root.run(["sh", "-c", "cd \(staging) && apt-get -q download swiftlang:arm64=\(target) && dpkg-deb -x swiftlang_*_arm64.deb unpacked"],
                     what: "downloading and unpacking swiftlang:arm64=\(target)")
        removeTree(bundle)
        let sysroot = bundle + "/aarch64/sysroot"
        try makeDirectories(sysroot + "/usr/lib")
        try makeDirectories(sysroot + "/lib")
        for part in ["swift", "swift_static", "clang"] {
            let from = root.hostPath(staging + "/unpacked/usr/libexec/swift/lib/" + part)
            guard isDirectory(from) else { throw LabError("swiftlang:arm64=\(target) has no usr/libexec/swift/lib/\(part)") }
            try HostProcess.check(["mv", from, sysroot + "/usr/lib/" + part], what: "placing the arm64 \(part) libraries")
        }
        // The target's headers and libraries: the root's arm64 packages.
        for (link, target) in [("usr/include", "/usr/include"), ("usr/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"),
                               ("lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"), ("usr/lib/gcc", "/usr/lib/gcc")] {
            guard symlink(target, sysroot + "/" + link) == 0 else { throw LabError("symlink \(sysroot)/\(link): \(String(cString: strerror(errno)))") }
        }
        for (name, text) in Self.bundleFiles() {
            try writeFileAtomically(Array(text.utf8), to: bundle + "/" + name)
        }
        try writeFileAtomically(Array((toolchain + "\n").utf8), to: bundle + "/toolchain")
    }

    /// A Debian version without its binNMU suffix ("6.2.3-1+b1" -> "6.2.3-1").
    static func sourceVersion(_ version: String) -> String {
        guard let range = version.ranges(of: "+b").last,
              !version[range.upperBound...].isEmpty, version[range.upperBound...].allSatisfy(\.isNumber) else { return version }
        return String(version[..<range.lowerBound])
    }

    /// The bundle's manifest files, by path inside it: info.json, the
    /// variant's swift-sdk.json, and a toolset that links with lld. The
    /// toolchain is Debian's x86_64 one, whose own triple says "pc".
    static func bundleFiles() -> [(String, String)] {
        [
            ("info.json", """
                {
                  "schemaVersion": "1.0",
                  "artifacts": {
                    "\(sdkName)": {
                      "type": "swiftSDK",
                      "version": "1",
                      "variants": [{ "path": "aarch64", "supportedTriples": ["x86_64-pc-linux-gnu", "x86_64-unknown-linux-gnu"] }]
                    }
                  }
                }

                """),
            ("aarch64/swift-sdk.json", """
                {
                  "schemaVersion": "4.0",
                  "targetTriples": {
                    "\(triple)": {
                      "sdkRootPath": "sysroot",
                      "swiftResourcesPath": "sysroot/usr/lib/swift",
                      "swiftStaticResourcesPath": "sysroot/usr/lib/swift_static",
                      "toolsetPaths": ["toolset.json"]
                    }
                  }
                }

                """),
            ("aarch64/toolset.json", """
                { "schemaVersion": "1.0", "swiftCompiler": { "extraCLIOptions": ["-use-ld=lld"] }, "cCompiler": { "extraCLIOptions": ["-fuse-ld=lld"] } }

                """),
        ]
    }

    /// The fingerprint of what goes into the binary: Package.swift,
    /// Package.resolved when there is one, every file under Sources, and the
    /// toolchain (swiftlang's version in the root).
    public static func sourceFingerprint(package: String, toolchain: String) throws -> String {
        guard access(package + "/Package.swift", R_OK) == 0 else { throw LabError("\(package) has no Package.swift") }
        var parts = [toolchain]
        let files = ["Package.swift", "Package.resolved"].filter { access(package + "/" + $0, R_OK) == 0 }
            + regularFiles(under: package + "/Sources").map { "Sources/" + $0 }
        for file in files {
            parts.append(file)
            parts.append(String(decoding: try readBytes(package + "/" + file), as: UTF8.self))
        }
        return labFingerprint(parts)
    }

    /// Whether `bytes` start an ELF executable for AArch64 (64-bit, little
    /// endian, ET_EXEC, EM_AARCH64) with no program interpreter, i.e. static.
    public static func isStaticARM64Executable(_ bytes: [UInt8]) -> Bool {
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func u64(_ at: Int) -> Int { u32(at) | u32(at + 4) << 32 }
        guard bytes.count >= 64, bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46, 2, 1]),
              u16(16) == 2 /* ET_EXEC */, u16(18) == 183 /* EM_AARCH64 */ else { return false }
        let table = u64(32), entrySize = u16(54), count = u16(56)
        guard entrySize >= 56, table > 0, table <= bytes.count, count <= (bytes.count - table) / entrySize else { return false }
        return !(0..<count).contains { u32(table + $0 * entrySize) == 3 /* PT_INTERP */ }
    }
}
