/// The command line of a microVM configured through the API alone, as
/// Firecracker's users start it (`kestrel run --api-sock PATH --id ID`),
/// read without building the whole command tree: that is most of the time
/// from exec to the socket listening.
///
/// It takes only `--api-sock`, `--id`, `--no-seccomp`, `--seccomp-log`,
/// `--seccomp-probe` and `--verbose`, each at most once, as `--name value` or
/// `--name=value`. Anything else (another option, a repeated one, a value
/// that looks like an option, help) is nil, and the caller parses the line
/// the usual way, so that every message and every refusal stays the usual one.
public struct APILaunchArguments: Equatable, Sendable {
    public var apiSocket: String
    public var id: String
    public var noSeccomp = false
    public var seccompLog = false
    public var seccompProbe: String?
    public var verbose = false

    /// Firecracker's default instance id, and Kestrel's.
    public static let defaultID = "anonymous-instance"

    public init(apiSocket: String, id: String = defaultID) {
        self.apiSocket = apiSocket
        self.id = id
    }

    /// The options after `run` (not the program name or the subcommand).
    public static func parse(_ arguments: some Collection<String>) -> APILaunchArguments? {
        var socket: String?, id: String?, probe: String?
        var flags: Set<String> = []
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            let (name, attached) = split(argument)
            switch name {
            case "--api-sock", "--id", "--seccomp-probe":
                guard let value = attached ?? iterator.next(), !value.isEmpty, !value.hasPrefix("-") else { return nil }
                switch name {
                case "--api-sock": guard socket == nil else { return nil }; socket = value
                case "--id": guard id == nil else { return nil }; id = value
                default: guard probe == nil else { return nil }; probe = value
                }
            case "--no-seccomp", "--seccomp-log", "--verbose":
                guard attached == nil, flags.insert(name).inserted else { return nil }
            default:
                return nil
            }
        }
        guard let socket, id.map(isValidInstanceID) ?? true else { return nil }
        var parsed = APILaunchArguments(apiSocket: socket, id: id ?? defaultID)
        parsed.noSeccomp = flags.contains("--no-seccomp")
        parsed.seccompLog = flags.contains("--seccomp-log")
        parsed.verbose = flags.contains("--verbose")
        parsed.seccompProbe = probe
        return parsed
    }

    /// Firecracker's rule for `--id`: 1 to 64 characters, each an ASCII
    /// letter, digit or '-'.
    public static func isValidInstanceID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2D }
    }

    /// The first option given twice in `arguments` (`--name value` or
    /// `--name=value`), other than the `repeatable` ones; nil when there is
    /// none. Arguments after `--` are not options.
    public static func repeatedOption(in arguments: some Collection<String>, repeatable: Set<String>) -> String? {
        var seen: Set<String> = []
        for argument in arguments {
            if argument == "--" { break }
            guard argument.hasPrefix("--") else { continue }
            let name = split(argument).0
            if repeatable.contains(name) { continue }
            if !seen.insert(name).inserted { return name }
        }
        return nil
    }

    /// "--name=value" as ("--name", "value"); other arguments whole.
    private static func split(_ argument: String) -> (String, String?) {
        guard argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") else { return (argument, nil) }
        return (String(argument[..<equals]), String(argument[argument.index(after: equals)...]))
    }
}
