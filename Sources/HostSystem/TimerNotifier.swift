#if canImport(Glibc)
import Glibc
#endif
import CHost

/// A one-shot timer as a file descriptor (timerfd on CLOCK_MONOTONIC,
/// non-blocking): an event loop watches it, and it becomes readable when
/// the time set comes. A device's rate limiter uses one to wake its queue.
public final class TimerNotifier: Sendable {
    public let fileDescriptor: Int32

    public init() throws {
        let fd = chost_timerfd_create()
        guard fd >= 0 else { throw SystemCallError.current("timerfd_create") }
        fileDescriptor = fd
    }

    deinit { close(fileDescriptor) }

    /// Fires once, `delay` from now (at least 1 µs; a zero setting would disarm it).
    public func arm(after delay: Duration) {
        let (seconds, attoseconds) = max(delay, .microseconds(1)).components
        _ = chost_timerfd_arm(fileDescriptor, Int(seconds), Int(attoseconds / 1_000_000_000))
    }

    /// Takes the expiry count, so that the descriptor is no longer readable.
    public func clear() {
        var expirations: UInt64 = 0
        _ = read(fileDescriptor, &expirations, 8)
    }
}
