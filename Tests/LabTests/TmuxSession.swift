import Glibc
@testable import Lab
import Testing

/// A detached tmux session running one command on a 200x50 terminal, for the
/// tests that type into `kestrel lab shell`. Its server ends with the value.
final class TmuxSession {
    let server = "kestrel-labtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    private(set) var screen = ""

    init(_ command: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard HostProcess.find("tmux") != nil else {
            Issue.record("tmux is not installed (apt-get install tmux); .ci/run installs it", sourceLocation: sourceLocation)
            throw LabError("no tmux")
        }
        _ = try tmux(["new-session", "-d", "-s", "lab", "-x", "200", "-y", "50", command])
    }

    deinit { _ = try? tmux(["kill-server"]) }

    @discardableResult
    func tmux(_ arguments: [String]) throws -> String {
        try HostProcess.output(["tmux", "-L", server] + arguments).output
    }

    /// Waits until `text` appears on the screen (its last 500 lines), and
    /// then `then` after it when given; records an issue and throws otherwise.
    func waitFor(_ text: String, then: String? = nil, seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let start = ContinuousClock.now
        while LabMachine.seconds(ContinuousClock.now - start) < seconds {
            screen = try tmux(["capture-pane", "-p", "-t", "lab", "-S", "-500"])
            if let range = screen.ranges(of: text).last, then.map({ screen[range.upperBound...].contains($0) }) ?? true {
                return
            }
            usleep(250_000)
        }
        Issue.record("\"\(text)\"\(then.map { " and then \"\($0)\"" } ?? "") did not appear within \(seconds) s; the terminal shows:\n\(screen)",
                     sourceLocation: sourceLocation)
        throw LabError("timeout")
    }

    /// Types `line` and Enter.
    func type(_ line: String) throws {
        try tmux(["send-keys", "-t", "lab", "-l", line])
        try tmux(["send-keys", "-t", "lab", "Enter"])
    }
}
