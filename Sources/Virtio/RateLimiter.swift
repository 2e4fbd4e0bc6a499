import Synchronization

/// Firecracker's token bucket (swagger TokenBucket): `size` tokens, refilled
/// evenly over `refillTime` from empty to full, plus a `oneTimeBurst` spent
/// first and never refilled. A size of 0 is no limit.
public struct TokenBucket: Equatable, Sendable {
    public let size: UInt64
    public let oneTimeBurst: UInt64
    public let refillTime: Duration

    public init(size: UInt64, oneTimeBurst: UInt64 = 0, refillTime: Duration) {
        self.size = size
        self.oneTimeBurst = oneTimeBurst
        self.refillTime = refillTime
    }

    /// Tokens per second.
    var rate: Double { Double(size) / refillTime.seconds }
}

/// A device's rate limiter (Firecracker's RateLimiter: a bandwidth bucket in
/// bytes and an operations bucket), thread-safe: the device consumes on its
/// thread, and `PATCH` replaces the buckets from the API's.
///
/// Requests are never cut: a request takes its tokens even when that drives
/// a budget below zero, and the device then waits (`delay`) until every
/// budget is back to zero or more. Over time the device moves no more than
/// the rates allow, plus one request and the burst.
public final class RateLimiter: Sendable {
    struct Budget {
        var bucket: TokenBucket
        var tokens: Double
        var burst: Double
        var refilled: ContinuousClock.Instant

        init(_ bucket: TokenBucket, now: ContinuousClock.Instant) {
            self.bucket = bucket
            tokens = Double(bucket.size)
            burst = Double(bucket.oneTimeBurst)
            refilled = now
        }

        mutating func refill(_ now: ContinuousClock.Instant) {
            guard now > refilled else { return }
            tokens = min(Double(bucket.size), tokens + (now - refilled).seconds * bucket.rate)
            refilled = now
        }

        mutating func take(_ count: Double) {
            let fromBurst = min(burst, count)
            burst -= fromBurst
            tokens -= count - fromBurst
        }

        /// How long until the tokens are back to zero.
        /// (At most a day: a tiny rate and a huge request would otherwise pass Duration's range.)
        var shortfall: Duration { tokens >= 0 ? .zero : .seconds(min(-tokens / bucket.rate, 86400)) }
    }

    private let state: Mutex<(bandwidth: Budget?, operations: Budget?)>
    /// How often the device waited, for the metrics (`rate_limiter_throttled_events`).
    private let throttled = Atomic<Int>(0)

    public init(bandwidth: TokenBucket?, operations: TokenBucket?, now: ContinuousClock.Instant = .now) {
        state = Mutex((bandwidth.flatMap { $0.size > 0 ? Budget($0, now: now) : nil },
                       operations.flatMap { $0.size > 0 ? Budget($0, now: now) : nil }))
    }

    /// Whether the limiter limits anything.
    public var isActive: Bool { state.withLock { $0.bandwidth != nil || $0.operations != nil } }
    public var throttledEvents: Int { throttled.load(ordering: .relaxed) }

    /// Zero when a request may go now; otherwise how long to wait.
    public func delay(now: ContinuousClock.Instant = .now) -> Duration {
        let wait = state.withLock { state -> Duration in
            state.bandwidth?.refill(now)
            state.operations?.refill(now)
            return max(state.bandwidth?.shortfall ?? .zero, state.operations?.shortfall ?? .zero)
        }
        if wait > .zero { throttled.add(1, ordering: .relaxed) }
        return wait
    }

    /// Takes one operation and `bytes` bytes.
    public func consume(bytes: Int, now: ContinuousClock.Instant = .now) {
        state.withLock { state in
            state.bandwidth?.refill(now)
            state.operations?.refill(now)
            state.bandwidth?.take(Double(bytes))
            state.operations?.take(1)
        }
    }

    /// Replaces the buckets given (Firecracker's PATCH: a bucket left out is
    /// kept; one with size 0 removes that limit). New buckets start full.
    public func update(bandwidth: TokenBucket?, operations: TokenBucket?, now: ContinuousClock.Instant = .now) {
        state.withLock { state in
            if let bandwidth { state.bandwidth = bandwidth.size > 0 ? Budget(bandwidth, now: now) : nil }
            if let operations { state.operations = operations.size > 0 ? Budget(operations, now: now) : nil }
        }
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
