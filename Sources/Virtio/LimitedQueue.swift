import HostSystem

/// A device queue served under a `RateLimiter`: the limiter and the timer
/// that wakes the queue when the limiter has made it wait. Each device that
/// Firecracker gives a `rate_limiter` has one per limited direction.
public final class LimitedQueue: Sendable {
    public let limiter: RateLimiter
    let timer: TimerNotifier

    /// `bandwidth` and `operations` are Firecracker's buckets (none: no limit).
    public init(bandwidth: TokenBucket? = nil, operations: TokenBucket? = nil) throws {
        limiter = RateLimiter(bandwidth: bandwidth, operations: operations)
        timer = try TimerNotifier()
    }

    /// Watches the timer on the device's loop; `wake` serves the queue again.
    func activate(_ context: VirtioContext, wake: @escaping @Sendable () throws(QueueFault) -> Void) throws {
        try context.watch(timer.fileDescriptor) { [timer] _ throws(QueueFault) in
            timer.clear()
            try wake()
        }
    }

    /// New buckets (a PATCH); the queue is looked at again at once, in case it
    /// waits on the old ones.
    public func update(bandwidth: TokenBucket?, operations: TokenBucket?) {
        limiter.update(bandwidth: bandwidth, operations: operations)
        timer.arm(after: .microseconds(1))
    }

    /// Whether a request may be served now; if not, the timer is armed for
    /// when one may.
    func mayServe() -> Bool {
        let wait = limiter.delay()
        if wait == .zero { return true }
        timer.arm(after: wait)
        return false
    }
}
