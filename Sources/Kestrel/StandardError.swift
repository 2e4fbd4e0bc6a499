import FoundationEssentials
import Glibc

/// Writes a line to standard error (unbuffered, with write(2) on fd 2: Swift 6
/// sees glibc's `stderr` as shared mutable state).
func printError(_ message: String) {
    let bytes = Array((message + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { return }
        offset += written
    }
}

/// A failure that is not a usage mistake: ArgumentParser prints "Error: <message>"
/// without the usage text and exits with status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
