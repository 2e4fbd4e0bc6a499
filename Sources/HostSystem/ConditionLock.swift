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
        pthread_cond_init(condition, nil)
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
}
