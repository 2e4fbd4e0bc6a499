/// The QEMU that runs the lab's L1s (the L0): the system's qemu-system-x86_64,
/// a binary the user names, or a Debian build of another release kept in the
/// lab's cache, so that what FINDINGS.md says of an older QEMU stays
/// reproducible after the system's package moved on.
///
/// The default is the system's binary, which `scripts/prepare-host test`
/// installs from bookworm-backports (QEMU 10.0). A cached build runs with its
/// own firmware (`-L`) and modules (`QEMU_MODULE_DIR`), never the system's:
/// QEMU refuses modules from another build.
public struct LabQEMU: Sendable, Equatable {
    /// The executable.
    public var binary: String
    /// Firmware and option ROM directories, searched before QEMU's own (`-L`).
    public var dataDirectories: [String] = []
    /// Where this build's modules are (`QEMU_MODULE_DIR`), for a cached build.
    public var moduleDirectory: String?

    public init(binary: String, dataDirectories: [String] = [], moduleDirectory: String? = nil) {
        self.binary = binary
        self.dataDirectories = dataDirectories
        self.moduleDirectory = moduleDirectory
    }

    /// qemu-system-x86_64 from PATH.
    public static let system = LabQEMU(binary: "qemu-system-x86_64")

    /// A Debian release of QEMU the lab can fetch into its cache: the suite it
    /// comes from and the version prefix (`apt-cache madison` picks the newest
    /// match of that suite).
    public struct Release: Sendable, Equatable {
        public let name: String
        public let suite: String
        public let versionPrefix: String
    }

    /// Debian 12's own QEMU, the lab's L0 until QEMU 10: its TCG lets XSETBV
    /// past the L1's KVM and raises #UD for ICEBP (FINDINGS.md, sections 10
    /// and 2), and kills L1s under load (section 6).
    public static let catalog = [Release(name: "7.2", suite: "bookworm", versionPrefix: "1:7.2+")]

    /// The QEMU that `--qemu VALUE` names: "system" (the default), a release
    /// from `catalog` (fetched once into the cache), or a path to a binary.
    public static func resolve(_ value: String?, cache: LabCache, progress: (String) -> Void = { _ in }) throws -> LabQEMU {
        guard let value, value != "system" else { return .system }
        if let release = catalog.first(where: { $0.name == value }) { return try fetch(release, cache: cache, progress: progress) }
        guard value.contains("/") else {
            throw LabError("unknown QEMU \"\(value)\": give system, \(catalog.map(\.name).joined(separator: ", ")), or the path of a qemu-system-x86_64")
        }
        guard access(value, X_OK) == 0, !isDirectory(value) else { throw LabError("--qemu \(value) is not an executable file") }
        return LabQEMU(binary: value)
    }

    /// The cached build of `release`, downloaded and unpacked on first use:
    /// qemu-system-x86 (the binary), qemu-system-common (its TCG and other
    /// modules), qemu-system-data (option ROMs) and seabios (the BIOS) of that suite, through the lab's private apt
    /// configuration.
    public static func fetch(_ release: Release, cache: LabCache, progress: (String) -> Void) throws -> LabQEMU {
        let alias = cache.root + "/qemu/\(release.name)"
        if let version = try? readText(alias).split(separator: "\n").first.map(String.init),
           let qemu = unpacked(at: cache.root + "/qemu/" + version) {
            return qemu
        }
        let archive = try DebianArchive(root: cache.aptRoot)
        try archive.update(progress: progress)
        var packages: [String] = []
        let packageNames = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"]
        for (package, prefix) in packageNames.map({ ($0, release.versionPrefix) }) + [("seabios", "")] {
            guard let version = try archive.versions(of: package).first(where: { $0.suite == release.suite && $0.version.hasPrefix(prefix) })?.version else {
                throw LabError("the archive at \(archive.mirror) has no \(package) \(prefix.isEmpty ? "" : prefix + "x ")in \(release.suite)")
            }
            packages.append("\(package)=\(version)")
        }
        let version = String(packages[0].split(separator: "=")[1]).replacing(":", with: "_")
        let directory = cache.root + "/qemu/" + version
        progress("downloading \(packages.joined(separator: ", "))")
        let work = try TemporaryDirectory(prefix: "kestrel-qemu")
        try makeDirectories(work.path + "/debs")
        removeTree(directory)
        try makeDirectories(directory)
        for deb in try archive.download(packages, into: work.path + "/debs") {
            try HostProcess.check(["dpkg-deb", "-x", deb, directory], what: "unpacking \(deb)")
        }
        guard let qemu = unpacked(at: directory) else { throw LabError("the packages of QEMU \(version) hold no usr/bin/qemu-system-x86_64") }
        try writeFileAtomically(Array("\(version)\n".utf8), to: alias)
        progress("QEMU \(release.name): \(version) in \(directory)")
        return qemu
    }

    /// A build unpacked under `root`, if its binary is there.
    static func unpacked(at root: String) -> LabQEMU? {
        let binary = root + "/usr/bin/qemu-system-x86_64"
        guard access(binary, X_OK) == 0 else { return nil }
        return LabQEMU(binary: binary, dataDirectories: [root + "/usr/share/qemu", root + "/usr/share/seabios"],
                       moduleDirectory: root + "/usr/lib/x86_64-linux-gnu/qemu")
    }

    /// The start of QEMU's command line: the binary, through `env` when it
    /// needs its own module directory, and its firmware directories.
    public var commandPrefix: [String] {
        (moduleDirectory.map { ["env", "QEMU_MODULE_DIR=\($0)"] } ?? []) + [binary] + dataDirectories.flatMap { ["-L", $0] }
    }

    /// QEMU's version ("QEMU 10.0.2"), or a note that it is unknown.
    public func version() -> String {
        let command = (moduleDirectory.map { ["env", "QEMU_MODULE_DIR=\($0)"] } ?? []) + [binary, "--version"]
        guard let result = try? HostProcess.output(command), result.status == 0,
              let line = result.output.split(separator: "\n").first else { return "QEMU (version unknown)" }
        return Self.version(fromLine: String(line))
    }

    /// "QEMU 10.0.2" from QEMU's first `--version` line.
    static func version(fromLine line: String) -> String {
        let words = line.split(separator: " ")
        if let index = words.firstIndex(of: "version"), index + 1 < words.count { return "QEMU \(words[index + 1])" }
        return line
    }
}

import Glibc
