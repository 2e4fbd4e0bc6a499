#if canImport(Glibc)
import Glibc
#endif

/// A mutex with one condition variable (pthread_mutex_t and pthread_cond_t),
/// for threads that must sleep until another changes some state: a paused vCPU
/// waits on one until it is resumed. The pthread objects live on the heap,
/// since they must never move.
public final class ConditionLock: @unchecked Sendable {
    // @unchecked: every access to the protected state goes through the mutex.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        // Timed waits measure against CLOCK_MONOTONIC, which no clock change moves.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` holding the mutex, then wakes every waiter.
    public func withLockBroadcasting<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        return try body()
    }

    /// Runs `body` holding the mutex.
    public func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Holding the mutex, sleeps until `isDone` returns true (checked under the
    /// mutex, after every wake-up), then runs `body`.
    public func wait<Result>(until isDone: () -> Bool, then body: () throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !isDone() { pthread_cond_wait(condition, mutex) }
        return try body()
    }

    /// Holding the mutex, sleeps until `isDone` returns true or `timeout` has
    /// passed, whichever comes first; returns `isDone()` as last checked.
    public func wait(until isDone: () -> Bool, timeout: Duration) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = max(timeout, .zero).components
        var end = timespec(tv_sec: now.tv_sec + Int(clamping: seconds), tv_nsec: now.tv_nsec + Int(attoseconds / 1_000_000_000))
        if end.tv_nsec >= 1_000_000_000 {
            end.tv_sec += 1
            end.tv_nsec -= 1_000_000_000
        }
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !isDone() {
            if pthread_cond_timedwait(condition, mutex, &end) == ETIMEDOUT { return isDone() }
        }
        return true
    }
}
