import ArgumentParser
import ControlAPI

// `kestrel run --api-sock PATH` with only Firecracker's launch options skips
// ArgumentParser: building every subcommand's argument tree was most of the
// time from exec to the socket listening (issue 14's speed goal). Any other
// command line, help included, goes through the full parse.
if CommandLine.arguments.count > 2, CommandLine.arguments[1] == "run",
   let launch = APILaunchArguments.parse(CommandLine.arguments.dropFirst(2)) {
    do {
        try MachineRunner(launch).serveAPI(at: launch.apiSocket)
    } catch {
        Kestrel.exit(withError: error)
    }
} else {
    Kestrel.main()
}
