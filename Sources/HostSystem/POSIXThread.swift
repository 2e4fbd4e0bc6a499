#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A POSIX thread running a Swift closure. vCPU threads and the VMM's console
/// reader are these; pthreads directly keep Foundation out of the process.
public struct POSIXThread: @unchecked Sendable {
    // @unchecked: pthread_t is an integer handle, valid on any thread.
    public let handle: pthread_t

    /// Starts `body` on a new thread with the given stack size (pthread_create).
    public static func start(stackSize: Int = 1 << 20, _ body: @escaping @Sendable () -> Void) throws -> POSIXThread {
        var attributes = pthread_attr_t()
        let initStatus = pthread_attr_init(&attributes)
        guard initStatus == 0 else { throw SystemCallError(operation: "pthread_attr_init", errno: Errno(rawValue: initStatus)) }
        defer { pthread_attr_destroy(&attributes) }
        let sizeStatus = pthread_attr_setstacksize(&attributes, stackSize)
        guard sizeStatus == 0 else { throw SystemCallError(operation: "pthread_attr_setstacksize(\(stackSize))", errno: Errno(rawValue: sizeStatus)) }
        // The closure travels to the new thread as a retained box; the thread
        // takes that reference over, so the box lives exactly as long as it runs.
        let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var handle = pthread_t()
        let status = pthread_create(&handle, &attributes, { context in
            Unmanaged<ThreadBody>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<ThreadBody>.fromOpaque(context).release()  // the thread never started
            throw SystemCallError(operation: "pthread_create", errno: Errno(rawValue: status))
        }
        return POSIXThread(handle: handle)
    }

    /// Waits for the thread to return (pthread_join).
    public func join() {
        _ = pthread_join(handle, nil)
    }

    /// Whether this is the calling thread (pthread_equal).
    public var isCurrent: Bool { pthread_equal(handle, pthread_self()) != 0 }

    /// The calling thread.
    public static var current: POSIXThread { POSIXThread(handle: pthread_self()) }

    /// The calling thread's nice value, -20 (most favoured) to 19
    /// (getpriority(PRIO_PROCESS, 0)). On Linux the nice value belongs to a
    /// thread, not to its process, and `who` 0 names the calling thread
    /// (kernel/sys.c takes `current`), as its TID would.
    public static var currentNice: Int32 {
        get throws {
            // getpriority may return -1 as a value: errno tells it from a failure.
            errno = 0
            let value = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
            if value == -1, errno != 0 { throw SystemCallError(operation: "getpriority(PRIO_PROCESS, 0)", errno: Errno(rawValue: errno)) }
            return value
        }
    }

    /// Sets the calling thread's nice value (setpriority(PRIO_PROCESS, 0,
    /// nice)); other threads of the process keep theirs. Raising it
    /// needs no privilege; lowering it below the current value needs
    /// CAP_SYS_NICE or RLIMIT_NICE.
    public static func setCurrentNice(_ nice: Int32) throws {
        guard setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) == 0 else {
            throw SystemCallError(operation: "setpriority(PRIO_PROCESS, 0, \(nice))", errno: Errno(rawValue: errno))
        }
    }

    private final class ThreadBody: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}
