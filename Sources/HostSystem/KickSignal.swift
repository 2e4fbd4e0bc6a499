#if canImport(Glibc)
import Glibc
#endif
import CHost

/// The signal that pulls a vCPU thread out of KVM_RUN. Its handler does
/// nothing and is installed without SA_RESTART, so a `pthread_kill` makes a
/// blocked KVM_RUN return EINTR; with `immediate_exit` set first, KVM returns
/// at once even when the signal lands before the call.
public enum KickSignal {
    /// SIGUSR1.
    public static let number: Int32 = SIGUSR1

    /// Installs the do-nothing handler, once per process. The corresponding
    /// call is sigaction(2).
    public static func install() throws {
        try installation.get()
    }

    private static let installation: Result<Void, SystemCallError> = {
        chost_install_kick_handler(number) == 0 ? .success(()) : .failure(.current("sigaction(SIGUSR1)"))
    }()

    /// Unblocks the signal on the calling thread and returns whether it was
    /// blocked before. libdispatch worker threads, on which Swift concurrency
    /// runs, block most signals, so a thread must unblock the kick signal while
    /// it may be kicked. The corresponding call is pthread_sigmask(2).
    @discardableResult
    public static func unblockOnThisThread() -> Bool {
        chost_set_signal_blocked(number, 0) == 1
    }

    /// Blocks the signal on the calling thread again.
    public static func blockOnThisThread() {
        _ = chost_set_signal_blocked(number, 1)
    }

    /// Sends the signal to `thread` (pthread_kill).
    public static func send(to thread: pthread_t) {
        _ = pthread_kill(thread, number)
    }
}
