#if canImport(Glibc)
import Glibc
#endif

/// A pthread_rwlock_t: any number of readers at once, or one writer. The
/// restore pager's two threads fill guest RAM as readers, side by side, and
/// a balloon's discard or the end of the prefault takes it as the writer, so
/// that no fill is half done across them. The lock lives on the heap, since
/// it must never move.
public final class ReadWriteLock: @unchecked Sendable {
    // @unchecked: the protected state is reached only through the lock.
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    public init() { pthread_rwlock_init(lock, nil) }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` as one of the readers.
    public func withReadLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` alone.
    public func withWriteLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
