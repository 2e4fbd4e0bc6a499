import CHost

/// Host accesses to memory that may raise SIGBUS (guest_memfd pages that are
/// private or beyond the file size). A fault ends the access and is reported
/// as the offset where it struck, instead of killing the process.
public enum GuardedAccess {
    /// Result of a guarded access.
    public enum Outcome: Equatable, Sendable {
        case completed
        case sigbus(offset: Int)
    }

    /// Writes `value` to every byte of the buffer.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, with value: UInt8) -> Outcome {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return .completed }
        // Sound: the C side touches exactly [base, base + count).
        let result = chost_guarded_fill(base, value, buffer.count)
        return result < 0 ? .completed : .sigbus(offset: result)
    }

    /// Copies the buffer's bytes out; on SIGBUS, returns the bytes read before it.
    public static func read(_ buffer: UnsafeRawBufferPointer) -> (bytes: [UInt8], outcome: Outcome) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return ([], .completed) }
        var bytes = [UInt8](repeating: 0, count: buffer.count)
        // Sound: `bytes` has `count` bytes; the C side reads [base, base + count).
        let result = bytes.withUnsafeMutableBytes { chost_guarded_read(base, $0.baseAddress, buffer.count) }
        if result < 0 { return (bytes, .completed) }
        return (Array(bytes.prefix(result)), .sigbus(offset: result))
    }
}
