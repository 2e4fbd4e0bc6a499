import FoundationEssentials
import Glibc

/// Writes a line to standard error.
func printError(_ message: String) {
    fputs(message + "\n", stderr)
}

/// A failure that is not a usage mistake: ArgumentParser prints "Error: <message>"
/// without the usage text and exits with status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
