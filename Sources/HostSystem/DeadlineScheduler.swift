#if canImport(Glibc)
import Glibc
#endif

/// Runs actions at deadlines on one thread of its own. vCPU deadlines use it
/// rather than a dispatch queue: the threads of a dispatch pool may all be
/// inside KVM_RUN (two spinning guests on two cores), and then a timer that
/// needs a pool thread to fire never fires.
public final class DeadlineScheduler: @unchecked Sendable {
    // @unchecked Sendable: `entries`, `nextToken`, `changes` and `thread` are only touched
    // while holding `lock`.
    public static let shared = DeadlineScheduler()

    private let lock = ConditionLock()
    private var entries: [UInt64: (deadline: ContinuousClock.Instant, action: @Sendable () -> Void)] = [:]
    private var nextToken: UInt64 = 0
    /// Bumped by every schedule and every effective cancel: the loop sleeps
    /// until it changes or the earliest deadline comes.
    private var changes: UInt64 = 0
    private var thread: POSIXThread?

    public init() {}

    /// Runs `action` on the scheduler's thread at `deadline` (at once if it has
    /// passed), unless cancelled first. Returns the token for `cancel`.
    @discardableResult
    public func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) throws -> UInt64 {
        try lock.withLockBroadcasting {
            if thread == nil {
                thread = try POSIXThread.start(stackSize: 128 << 10) { [self] in loop() }
            }
            nextToken += 1
            changes &+= 1
            entries[nextToken] = (deadline, action)
            return nextToken
        }
    }

    /// Cancels a scheduled action; one that already ran or is running is not affected.
    public func cancel(_ token: UInt64) {
        lock.withLockBroadcasting {
            if entries.removeValue(forKey: token) != nil { changes &+= 1 }
        }
    }

    /// The number of actions waiting.
    public var pendingCount: Int { lock.withLock { entries.count } }

    private func loop() {
        while true {
            var due: [@Sendable () -> Void] = []
            // One look under the lock: what is due, the next deadline, and a
            // mark that changes whenever an entry is added or removed.
            let (next, mark): (ContinuousClock.Instant?, UInt64) = lock.withLock {
                let now = ContinuousClock.now
                for (token, entry) in entries where entry.deadline <= now {
                    due.append(entry.action)
                    entries.removeValue(forKey: token)
                }
                return (entries.values.map(\.deadline).min(), changes)
            }
            for action in due { action() }
            guard due.isEmpty else { continue }
            let timeout = next.map { $0 - .now } ?? .seconds(3600)
            _ = lock.wait(until: { changes != mark }, timeout: timeout)
        }
    }
}
