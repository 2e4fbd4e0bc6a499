/// Debian's package archive as the lab reaches it: the mirror this machine's
/// apt already uses, and a private apt configuration under the lab's cache
/// (its own sources list, package lists and downloads). The system's apt
/// sources and state are never written.
public struct DebianArchive {
    /// The suites the lab's kernels come from.
    public static let suites = ["bookworm", "bookworm-backports", "trixie", "trixie-backports", "sid"]
    public static let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

    public let mirror: String
    public let root: String

    /// Uses the mirror named in the system's apt sources, with state under `root`.
    public init(root: String, sourcesFiles: [String] = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]) throws {
        var found: String?
        for file in sourcesFiles where found == nil {
            guard let text = try? readText(file) else { continue }
            found = Self.mirror(inSources: text)
        }
        guard let mirror = found else {
            throw LabError("no Debian mirror found in \(sourcesFiles.joined(separator: " or ")): the lab fetches kernels from the mirror apt already uses")
        }
        self.mirror = mirror
        self.root = root
    }

    /// The first archive URI (not the security archive) in an apt sources file,
    /// deb822 ("URIs: ...") or one-line ("deb URI suite ...") format.
    public static func mirror(inSources text: String) -> String? {
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            guard !trimmed.hasPrefix("#") else { continue }
            var candidates: [Substring] = []
            if trimmed.lowercased().hasPrefix("uris:") {
                candidates = trimmed.dropFirst(5).split(separator: " ")
            } else if trimmed.hasPrefix("deb ") {
                candidates = trimmed.split(separator: " ").dropFirst().filter { !$0.hasPrefix("[") && !$0.hasSuffix("]") && !$0.contains("=") }.prefix(1).map { $0 }
            }
            for candidate in candidates where (candidate.hasPrefix("http://") || candidate.hasPrefix("https://")) && !candidate.contains("security") {
                return String(candidate.hasSuffix("/") ? candidate.dropLast() : candidate)
            }
        }
        return nil
    }

    /// The sources list of the private configuration.
    public var sourcesList: String {
        Self.suites.map { "deb [signed-by=\(Self.keyring)] \(mirror) \($0) main\n" }.joined()
    }

    /// apt options that point every piece of state at `root`. Valid-Until is not
    /// checked: sid and backports Release files on a snapshot mirror are past it.
    public var aptOptions: [String] {
        [
            "Dir::Etc::SourceList=\(root)/sources.list", "Dir::Etc::SourceParts=\(root)/sources.list.d",
            "Dir::Etc::Preferences=\(root)/preferences", "Dir::Etc::PreferencesParts=\(root)/preferences.d",
            "Dir::State=\(root)/state", "Dir::State::Lists=\(root)/state/lists", "Dir::State::status=\(root)/state/status",
            "Dir::Cache=\(root)/cache", "Acquire::Check-Valid-Until=false", "Acquire::Languages=none",
            "APT::Architecture=amd64", "APT::Sandbox::User=root", "Debug::NoLocking=true",
        ].flatMap { ["-o", $0] }
    }

    /// Writes the private configuration and downloads the package lists when
    /// they are missing, older than `maximumAge` seconds, or `force` is set.
    public func update(maximumAge: Int = 86_400, force: Bool = false, progress: (String) -> Void) throws {
        let stamp = root + "/state/updated"
        if !force, let updated = modificationTime(stamp), currentTime() - updated < maximumAge, (try? readText(root + "/sources.list")) == sourcesList {
            return
        }
        for directory in ["sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"] {
            try makeDirectories(root + "/" + directory)
        }
        try writeFileAtomically(Array(sourcesList.utf8), to: root + "/sources.list")
        try writeFileAtomically([], to: root + "/preferences")
        try writeFileAtomically([], to: root + "/state/status")
        progress("updating package lists from \(mirror) (\(Self.suites.joined(separator: ", ")))")
        let result = try HostProcess.output(["apt-get", "-q"] + aptOptions + ["update"])
        let failures = (result.output + result.errors).split(separator: "\n").filter { $0.hasPrefix("E:") || $0.hasPrefix("Err:") }
        guard result.status == 0, failures.isEmpty else {
            throw LabError("cannot reach the Debian archive at \(mirror) (apt-get update exited with status \(result.status)):\n  "
                           + (failures.isEmpty ? result.errors.split(separator: "\n").suffix(4) : failures.prefix(4)).joined(separator: "\n  "))
        }
        try writeFileAtomically(Array("\(currentTime())\n".utf8), to: stamp)
    }

    /// Package names matching an extended regular expression (apt-cache search --names-only).
    public func packageNames(matching pattern: String) throws -> [String] {
        let output = try HostProcess.check(["apt-cache"] + aptOptions + ["search", "--names-only", pattern], what: "apt-cache search \(pattern)")
        return output.split(separator: "\n").compactMap { $0.split(separator: " ", maxSplits: 1).first.map(String.init) }
    }

    /// Every version of `package` the archive holds, with its suite, newest
    /// first (apt-cache madison).
    public func versions(of package: String) throws -> [(version: String, suite: String)] {
        let output = try HostProcess.check(["apt-cache"] + aptOptions + ["madison", package], what: "apt-cache madison \(package)")
        return Self.madisonVersions(output)
    }

    /// The version and suite of each `apt-cache madison` line
    /// ("qemu-system-x86 | 1:7.2+dfsg-7 | http://mirror/debian bookworm/main amd64 Packages").
    static func madisonVersions(_ output: String) -> [(version: String, suite: String)] {
        output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "|").map { $0.trimmingPrefix(while: { $0 == " " }) }
            guard fields.count == 3, let source = fields[2].split(separator: " ").dropFirst().first else { return nil }
            return (String(fields[1].split(separator: " ").first ?? ""), String(source.split(separator: "/").first ?? source))
        }
    }

    /// Downloads packages into `directory` (apt-get download); returns the .deb paths.
    public func download(_ packages: [String], into directory: String) throws -> [String] {
        try HostProcess.check(["apt-get", "-q"] + aptOptions + ["download"] + packages, workingDirectory: directory,
                              what: "downloading \(packages.joined(separator: ", ")) from \(mirror)")
        let debs = directoryEntries(directory).filter { $0.hasSuffix(".deb") }
        guard debs.count >= packages.count else { throw LabError("apt-get download left \(debs.count) packages for \(packages.count) requested") }
        return debs.map { directory + "/" + $0 }
    }
}
