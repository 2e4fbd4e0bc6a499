import ArgumentParser
import Jail

/// `kestrel jail`: Firecracker's jailer (and Kestrel's, under the name
/// `jailer`). Its line is the jailer's own, read by `JailArguments` rather
/// than ArgumentParser, so that orchestrators' command lines work unchanged.
struct JailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jail",
        abstract: "Start a VMM (Kestrel or Firecracker) in a chroot as an unprivileged user, as Firecracker's jailer does.",
        discussion: """
            kestrel jail --id ID --exec-file PATH --uid UID --gid GID [--parent-cgroup PATH] [--cgroup-version 1|2] \
            [--cgroup FILE=VALUE]... [--chroot-base-dir DIR] [--netns PATH] [--resource-limit fsize=N|no-file=N]... \
            [--daemonize] [--new-pid-ns] [-- VMM ARGUMENTS]

            The VMM runs in DIR/<exec name>/ID/root (DIR defaults to /srv/jailer), with /dev/kvm, /dev/net/tun and \
            /dev/userfaultfd made there for the user, in the cgroups <parent>/ID (the parent defaults to the exec file's \
            name), a new mount namespace, and the limits given (no-file 2048 by default). The exec file's name must contain \
            "firecracker" or "kestrel"; Kestrel is started with `run`. Paths given to the VMM are inside the chroot. \
            Run as root. Under the name `jailer`, Kestrel takes this line directly.
            """)

    @Argument(parsing: .allUnrecognized, help: "The jailer's options, then -- and the VMM's.") var arguments: [String] = []

    func run() throws {
        do {
            try Jail.run(try JailArguments.parse(arguments))
        } catch {
            printError("kestrel jail: \(error)")
            throw ExitCode(2)
        }
    }
}
