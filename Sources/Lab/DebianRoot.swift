import Glibc

/// A Debian root of another suite, built with debootstrap from the mirror the
/// system's apt uses and kept in the lab's cache: where the lab runs tools
/// this machine's Debian 12 cannot, such as the compiler a newer kernel was
/// built with (gcc 16 for sid's 7.2), so that rebuilt KVM modules match the
/// kernel. Commands run in it with chroot, so building one needs root.
public struct DebianRoot: Sendable, Equatable {
    public let suite: String
    public let path: String

    /// The packages every root gets: what `make modules` needs for a Debian
    /// kernel's headers package (kbuild's tools link libelf and libssl).
    public static let basePackages = ["make", "libc6-dev", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "pahole", "xz-utils",
                                      "patch", "binutils", "ca-certificates"]

    /// The root of `suite` with `packages`, from the cache or made now
    /// (debootstrap's minbase variant: about a minute and 600 MB for sid).
    /// Packages missing from a cached root are installed into it.
    /// `buildTools: false` leaves out `basePackages` (a root that only runs a
    /// program, such as the lab's Bochs); a root shared with a build gets them
    /// when the build asks. `name` keeps a root apart from the suite's shared
    /// one (the arm64 toolchain's gigabytes stay out of the kernel builds'
    /// root); `foreignArchitectures` are added with `dpkg --add-architecture`
    /// each time packages are installed, before apt-get update, so that
    /// packages may name them ("zlib1g-dev:arm64").
    public static func prepare(suite: String, name: String? = nil, foreignArchitectures: [String] = [], packages: [String],
                               buildTools: Bool = true, cache: LabCache, progress: (String) -> Void) throws -> DebianRoot {
        guard getuid() == 0 else {
            throw LabError("a Debian \(suite) root needs root (debootstrap and chroot); run as root")
        }
        let root = DebianRoot(suite: suite, path: cache.root + "/roots/" + (name ?? suite))
        let wanted = Set((buildTools ? basePackages : []) + packages)
        let stamp = root.path + "/.kestrel-packages"
        var present = Set(((try? readText(stamp)) ?? "").split(separator: "\n").map(String.init))
        if isDirectory(root.path + "/usr/bin"), present.isSuperset(of: wanted) { return root }
        let archive = try DebianArchive(root: cache.aptRoot)
        if !isDirectory(root.path + "/usr/bin") || present.isEmpty {
            guard HostProcess.find("debootstrap") != nil else { throw LabError("debootstrap is not installed (apt-get install debootstrap)") }
            progress("building a Debian \(suite) root in \(root.path) with debootstrap (about a minute)")
            removeTree(root.path)
            try makeDirectories(root.path)
            // The build tools come with debootstrap; anything else through apt
            // below, whose --no-install-recommends and choice among
            // alternatives debootstrap lacks (bochs would bring a GTK display
            // whose configuration fails in a chroot).
            let included = buildTools ? Set(basePackages) : []
            try HostProcess.check(["debootstrap", "--variant=minbase"] + (included.isEmpty ? [] : ["--include=" + included.sorted().joined(separator: ",")])
                                  + [suite, root.path, archive.mirror], what: "debootstrap of \(suite) from \(archive.mirror)")
            present = included
            try writeFileAtomically(Array(present.sorted().map { $0 + "\n" }.joined().utf8), to: stamp)
        }
        let missing = wanted.subtracting(present).sorted()
        if !missing.isEmpty {
            progress("installing \(missing.joined(separator: ", ")) into the \(suite) root")
            try HostProcess.check(["cp", "/etc/resolv.conf", root.path + "/etc/resolv.conf"], what: "copying resolv.conf into the root")
            for architecture in foreignArchitectures {
                try root.run(["dpkg", "--add-architecture", architecture], what: "adding \(architecture) to the \(suite) root's architectures")
            }
            try root.run(["apt-get", "-q", "-o", "Acquire::Check-Valid-Until=false", "update"], what: "apt-get update in the \(suite) root")
            try root.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y", "install", "--no-install-recommends"] + missing,
                         what: "installing \(missing.joined(separator: ", ")) in the \(suite) root")
        }
        try writeFileAtomically(Array(wanted.union(present).sorted().map { $0 + "\n" }.joined().utf8), to: stamp)
        return root
    }

    /// Runs a command inside the root (chroot, with /proc mounted in a mount
    /// namespace of its own, so nothing stays mounted after it; objtool reads
    /// /proc); returns its standard output.
    @discardableResult
    public func run(_ arguments: [String], binding directory: String? = nil, what: String) throws -> String {
        try HostProcess.check(command(arguments, binding: directory), what: what)
    }

    /// Where `command(_:binding:)` shows the bound host directory inside the root.
    public static let boundDirectory = "/run/kestrel-host"

    /// The host command line that runs `arguments` inside the root: chroot in
    /// a mount namespace of its own with /proc mounted, and `directory` (a
    /// host directory) bound at `boundDirectory`, so that a program in the
    /// root reads and writes the host's files there. `--kill-child`: when the
    /// command is killed, so is everything it started.
    /// With `terminals`, the root also gets pseudo-terminals: a devpts
    /// instance of its own on /dev/pts, with /dev/ptmx its multiplexer.
    public func command(_ arguments: [String], binding directory: String? = nil, terminals: Bool = false,
                        terminal: String? = nil) -> [String] {
        let bind = directory.map { _ in #"mkdir -p "$0\#(Self.boundDirectory)" && mount --bind "$1" "$0\#(Self.boundDirectory)" && "# } ?? ""
        let devpts = terminals ? #"mount -t devpts -o newinstance,ptmxmode=0666 devpts "$0/dev/pts" && mount --bind "$0/dev/pts/ptmx" "$0/dev/ptmx" && "# : ""
        let device = terminal.map { _ in #"touch "$0\#(Self.boundTerminal)" && mount --bind "$2" "$0\#(Self.boundTerminal)" && "# } ?? ""
        return ["unshare", "--mount", "--fork", "--kill-child", "--", "sh", "-c",
                bind + devpts + device + #"mount -t proc proc "$0/proc" && shift 2 && exec chroot "$0" "$@""#,
                path, directory ?? "-", terminal ?? "-"] + arguments
    }

    /// Where `command(_:terminal:)` binds the host's terminal device inside
    /// the root (a file bound over a file, as `mount --bind` allows).
    public static let boundTerminal = "/run/kestrel-terminal"

    /// A host path inside the root for a path seen from inside it.
    public func hostPath(_ inside: String) -> String { path + inside }
}
