import ArgumentParser
import ControlAPI
import Glibc
import HostSystem
import Jail

// Run under the name `firecracker` (a symlink or a copy, as orchestrators
// install their VMM), Kestrel takes Firecracker's command line: the
// arguments are `kestrel run`'s, and `--version` answers in Firecracker's
// shape ("Firecracker v1.16.0+kestrel.0.2.0", then a blank line), which is
// what Kata Containers parses.
LaunchLine.startMicroseconds = HostClock.microseconds(CLOCK_MONOTONIC)
if LaunchLine.isFirecracker, LaunchLine.arguments == ["run", "--version"] {
    print("Firecracker v\(Kestrel.firecrackerVersion)\n")
    Kestrel.exit()
}
let arguments = LaunchLine.arguments
if arguments.first == "jail", !arguments.prefix { $0 != "--" }.contains(where: { $0 == "--help" || $0 == "-h" }) {
    // The jailer's own line, not ArgumentParser's (its options look like none of ours).
    do {
        try Jail.run(try JailArguments.parse(Array(arguments.dropFirst())))
    } catch {
        printError("kestrel jail: \(error)")
        Kestrel.exit(withError: ExitCode(2))
    }
}

// `kestrel run --api-sock PATH` with only Firecracker's launch options skips
// ArgumentParser: building every subcommand's argument tree was most of the
// time from exec to the socket listening (issue 14's speed goal). Any other
// command line, help included, goes through the full parse.
if arguments.count > 1, arguments[0] == "run", let launch = APILaunchArguments.parse(arguments.dropFirst()) {
    do {
        try MachineRunner(launch).serveAPI(at: launch.apiSocket)
    } catch {
        Kestrel.exit(withError: error)
    }
} else {
    Kestrel.main(arguments)
}
