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

    private final class ThreadBody: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}
