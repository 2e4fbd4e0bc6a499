#if canImport(Glibc)
import Glibc
#endif

/// A POSIX thread running a Swift closure. The VMM runs each vCPU and the
/// console reader on one; pthreads directly keep Foundation out of the process.
public struct POSIXThread {
    public let handle: pthread_t

    /// Starts `body` on a new thread with the given stack size (pthread_create).
    public static func start(stackSize: Int = 1 << 20, _ body: @escaping () -> Void) throws -> POSIXThread {
        var attributes = pthread_attr_t()
        guard pthread_attr_init(&attributes) == 0 else { throw ConfigurationError("pthread_attr_init failed") }
        defer { pthread_attr_destroy(&attributes) }
        let sizeStatus = pthread_attr_setstacksize(&attributes, stackSize)
        guard sizeStatus == 0 else { throw ConfigurationError("cannot use a \(stackSize)-byte thread stack: \(String(cString: strerror(sizeStatus)))") }
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
            throw ConfigurationError("cannot start a thread: \(String(cString: strerror(status)))")
        }
        return POSIXThread(handle: handle)
    }

    /// Waits for the thread to return (pthread_join).
    public func join() {
        _ = pthread_join(handle, nil)
    }

    private final class ThreadBody {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
}
