import Glibc

/// A program the lab runs on the host (apt-get, dpkg-deb, qemu-system-x86_64),
/// started with posix_spawn so that Foundation stays out of `kestrel`.
public struct HostProcess {
    /// What a child's standard stream is connected to.
    public enum Stream {
        /// The same stream as this process.
        case inherit
        /// /dev/null.
        case null
        /// A file opened for writing (created or truncated).
        case file(String)
        /// An open descriptor of this process.
        case descriptor(Int32)
    }

    public let process: pid_t
    public let executable: String

    /// Starts `arguments[0]` (looked up in PATH) with the given streams.
    /// The child gets its own process group when `ownGroup` is set, so that a
    /// terminal's Ctrl-C reaches only Kestrel, which then stops the child.
    public static func start(_ arguments: [String], stdin: Stream = .null, stdout: Stream = .inherit,
                             stderr: Stream = .inherit, ownGroup: Bool = false) throws -> HostProcess {
        guard let name = arguments.first else { throw LabError("no program to run") }
        guard let executable = Self.find(name) else { throw LabError("\(name) is not installed (not found in PATH)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .inherit: break
            case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .file(let path): posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
            }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default signal handling and nothing blocked,
        // whatever the vCPU kick and terminal handling of this process set.
        var defaults = sigset_t()
        sigfillset(&defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var flags = Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        if ownGroup {
            flags |= Int16(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        posix_spawnattr_setflags(&attributes, flags)

        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var process = pid_t()
        let status = posix_spawn(&process, executable, &actions, &attributes, &argv, environ)
        guard status == 0 else { throw LabError("cannot start \(executable): \(String(cString: strerror(status)))") }
        return HostProcess(process: process, executable: executable)
    }

    /// Waits for the process to end; returns its exit status, or 128+N when signal N ended it.
    @discardableResult
    public func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(process, &status, 0) < 0 && errno == EINTR {}
        return Self.exitCode(status)
    }

    /// The exit status if the process has ended, without blocking.
    public func poll() -> Int32? {
        var status: Int32 = 0
        let result = waitpid(process, &status, WNOHANG)
        return result == process ? Self.exitCode(status) : nil
    }

    /// Sends `signal` to the process.
    public func signal(_ signal: Int32) { kill(process, signal) }

    static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// Runs a program to completion and returns its status and standard output
    /// (standard error is kept for the error message when it fails).
    public static func output(_ arguments: [String], workingDirectory: String? = nil) throws -> (status: Int32, output: String, errors: String) {
        let directory = try TemporaryDirectory(prefix: "kestrel-run")
        let outPath = directory.path + "/out", errPath = directory.path + "/err"
        var command = arguments
        if let workingDirectory {
            // posix_spawn has no portable chdir action in this glibc's headers:
            // run through sh, quoting every argument.
            command = ["sh", "-c", "cd \(shellQuoted(workingDirectory)) && exec " + arguments.map(shellQuoted).joined(separator: " ")]
        }
        let process = try start(command, stdout: .file(outPath), stderr: .file(errPath))
        let status = process.wait()
        return (status, (try? readText(outPath)) ?? "", (try? readText(errPath)) ?? "")
    }

    /// Runs a program and throws, quoting the end of its standard error, unless it exits 0.
    @discardableResult
    public static func check(_ arguments: [String], workingDirectory: String? = nil, what: String) throws -> String {
        let result = try output(arguments, workingDirectory: workingDirectory)
        guard result.status == 0 else {
            let tail = result.errors.split(separator: "\n").suffix(6).joined(separator: "\n  ")
            throw LabError("\(what) failed (\(arguments[0]) exited with status \(result.status))" + (tail.isEmpty ? "" : ":\n  \(tail)"))
        }
        return result.output
    }

    /// The path of `name` in PATH (or `name` itself when it contains a slash).
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// `value` quoted for a POSIX shell.
public func shellQuoted(_ value: String) -> String {
    if !value.isEmpty && value.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }) { return value }
    return "'" + value.replacing("'", with: "'\\''") + "'"
}
