#if canImport(Glibc)
import Glibc
#endif
import CHost

/// An eventfd(2): a counter the kernel can signal and wait on. KVM's irqfd and
/// ioeventfd take one, and the event loop waits on them.
public final class EventNotifier: Sendable {
    /// The eventfd; it closes with this object.
    public let fileDescriptor: Int32

    /// Creates a non-blocking, close-on-exec eventfd with a count of zero.
    public init() throws {
        fileDescriptor = try SystemCallError.check(eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)), "eventfd")
    }

    deinit { close(fileDescriptor) }

    /// Adds one to the counter, waking whoever waits on it. Cannot fail for a
    /// valid eventfd short of counter overflow, which needs 2^64 - 1 signals.
    public func signal() {
        var one: UInt64 = 1
        // Sound: write(2) reads the 8 bytes of `one`.
        while write(fileDescriptor, &one, 8) < 0 && errno == EINTR {}
    }

    /// Reads and clears the counter; 0 when nothing was signalled since the last call.
    @discardableResult
    public func drain() -> UInt64 {
        var count: UInt64 = 0
        // Sound: read(2) writes at most the 8 bytes of `count`.
        while true {
            if read(fileDescriptor, &count, 8) == 8 { return count }
            if errno != EINTR { return 0 }
        }
    }
}
