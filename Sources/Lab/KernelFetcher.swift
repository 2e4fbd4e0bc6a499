/// Debian's cloud kernels for the lab, by short name, fetched with
/// `apt-get download` under the lab's private apt configuration and cached.
public struct KernelFetcher {
    /// A lab kernel series: the suite it comes from and the pattern of its
    /// image packages (an extended regular expression for apt-cache).
    public struct Series: Sendable, Equatable {
        public let name: String
        public let suite: String
        public let imagePattern: String
    }

    public static let catalog: [Series] = [
        Series(name: "6.1", suite: "bookworm", imagePattern: #"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"#),
        Series(name: "6.12", suite: "bookworm-backports", imagePattern: #"^linux-image-6\.12\.[0-9]+\+deb12[^-]*-cloud-amd64$"#),
        Series(name: "6.18", suite: "trixie-backports", imagePattern: #"^linux-image-6\.18\.[0-9]+\+deb13[^-]*-cloud-amd64$"#),
        Series(name: "7.2", suite: "sid", imagePattern: #"^linux-image-7\.2\.[0-9]+\+deb14[^-]*-cloud-amd64$"#),
    ]

    public let cache: LabCache
    public let progress: (String) -> Void

    public init(cache: LabCache, progress: @escaping (String) -> Void = { _ in }) {
        self.cache = cache
        self.progress = progress
    }

    public static func series(named name: String) -> Series? { catalog.first { $0.name == name } }

    /// Every name `kernel(_:)` takes: the catalog, the built-in KVM rebuilds,
    /// then the guest kernels built from source.
    /// Rebuilds recorded in a cache (`kestrel lab kernels --build`) are taken too.
    public static var names: [String] { catalog.map(\.name) + KVMRebuild.builtIn.map(\.name) + GuestKernelBuild.builtIn.map(\.name) }

    /// The kernel for `name`: from the cache when it was fetched before (no
    /// network), otherwise the newest matching package from the archive.
    /// `refresh` looks for a newer package even when one is cached.
    public func kernel(_ name: String, refresh: Bool = false) throws -> LabKernel {
        if let guestBuild = GuestKernelBuild.recipe(named: name) {
            return try guestBuild.kernel(fetcher: self, refresh: refresh)
        }
        if Self.series(named: name) == nil, let rebuild = KVMRebuild.recipe(named: name, cache: cache) {
            return try rebuild.kernel(fetcher: self, refresh: refresh)
        }
        guard let series = Self.series(named: name) else {
            let known = Self.names + KVMRebuild.recordedNames(cache: cache)
            throw LabError("unknown lab kernel \"\(name)\"; known: \(known.joined(separator: ", ")) (or give --kernel-image and --modules, "
                           + "or record a rebuild with kestrel lab kernels --build)")
        }
        if !refresh, let release = try? readText(cache.aliasPath(name)).split(separator: "\n").first.map(String.init),
           let kernel = LabKernel.load(from: cache.kernelDirectory(release)) {
            return kernel
        }
        let archive = try DebianArchive(root: cache.aptRoot)
        try archive.update(force: refresh, progress: progress)
        let images = try archive.packageNames(matching: series.imagePattern)
        guard let image = images.max(by: { Self.versionOrder($0, $1) }) else {
            throw LabError("the archive at \(archive.mirror) has no package matching \(series.imagePattern) (suite \(series.suite))")
        }
        let release = String(image.dropFirst("linux-image-".count))
        let directory = cache.kernelDirectory(release)
        if let kernel = LabKernel.load(from: directory) {
            try writeFileAtomically(Array("\(release)\n".utf8), to: cache.aliasPath(name))
            return kernel
        }
        let escaped = release.map { "+.".contains($0) ? "\\\($0)" : String($0) }.joined()
        let packages = try archive.packageNames(matching: "^linux-(image|binary|modules)-\(escaped)$")
        progress("downloading \(packages.joined(separator: ", "))")
        let work = try TemporaryDirectory(prefix: "kestrel-kernel")
        try makeDirectories(work.path + "/debs")
        let debs = try archive.download(packages, into: work.path + "/debs")
        for deb in debs {
            try HostProcess.check(["dpkg-deb", "-x", deb, work.path + "/root"], what: "unpacking \(deb)")
        }
        let root = work.path + "/root"
        guard let bzImage = ["/boot/vmlinuz-\(release)", "/usr/lib/modules/\(release)/vmlinuz", "/lib/modules/\(release)/vmlinuz"]
            .map({ root + $0 }).first(where: fileExists) else {
            throw LabError("the packages of \(release) hold no vmlinuz (looked in /boot and lib/modules)")
        }
        guard let modules = ["/lib/modules/\(release)", "/usr/lib/modules/\(release)"].map({ root + $0 }).first(where: { isDirectory($0 + "/kernel") }) else {
            throw LabError("the packages of \(release) hold no modules tree")
        }
        progress("extracting vmlinuz and the KVM modules of \(release)")
        let versions = debs.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        let kernel = try LabKernel.prepare(name: name, image: bzImage, modulesTree: modules, packages: versions, into: directory)
        try writeFileAtomically(Array("\(release)\n".utf8), to: cache.aliasPath(name))
        return kernel
    }

    /// Orders package names by the numbers in them (6.12.9 before 6.12.10).
    static func versionOrder(_ left: String, _ right: String) -> Bool {
        func numbers(_ text: String) -> [Int] { text.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) } }
        let a = numbers(left), b = numbers(right)
        return a.lexicographicallyPrecedes(b) || (a == b && left < right)
    }
}

/// Where the lab keeps what it fetched and built: $KESTREL_LAB_CACHE, else
/// $XDG_CACHE_HOME/kestrel/lab, else ~/.cache/kestrel/lab.
public struct LabCache: Sendable {
    public let root: String

    public init(root: String? = nil) {
        if let root { self.root = root; return }
        let environment = { (name: String) -> String? in
            getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        if let explicit = environment("KESTREL_LAB_CACHE") {
            self.root = explicit
        } else {
            let base = environment("XDG_CACHE_HOME") ?? ((environment("HOME") ?? "/root") + "/.cache")
            self.root = base + "/kestrel/lab"
        }
    }

    public var aptRoot: String { root + "/apt" }
    public func kernelDirectory(_ release: String) -> String { root + "/kernels/" + release }
    public func aliasPath(_ name: String) -> String {
        (try? makeDirectories(root + "/named")).map { root + "/named/\(name)" } ?? root + "/named/\(name)"
    }
}

import Glibc
