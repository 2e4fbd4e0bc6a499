import Dispatch
import Glibc
import KVM
import Synchronization

/// Stops a vCPU that runs past a deadline: sets `immediate_exit` and signals
/// the vCPU's thread, so KVM_RUN returns EINTR whether the thread is inside it
/// or about to enter it.
final class VCPUWatchdog {

    private let lock = Mutex(())
    private var generation = 0
    private var armed = false
    private var fired = false
    private weak var vcpu: VCPU?
    /// Whether the kick signal was blocked on the vCPU thread before `arm`.
    private var signalWasBlocked = false

    init(vcpu: VCPU) throws {
        try KickSignal.install()
        self.vcpu = vcpu
    }

    /// Arms the watchdog for the calling thread; it fires after `seconds`.
    func arm(seconds: Double) {
        let thread = pthread_self()
        // The thread must accept the kick while it may be inside KVM_RUN.
        signalWasBlocked = KickSignal.unblockOnThisThread()
        let current: Int = lock.withLock { _ in
            generation += 1
            armed = true
            fired = false
            return generation
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [weak self] in
            guard let self else { return }
            self.lock.withLock { _ in
                guard self.armed, self.generation == current, let vcpu = self.vcpu else { return }
                self.fired = true
                vcpu.immediateExit = true
                KickSignal.send(to: thread)
            }
        }
    }

    /// Disarms (on the vCPU thread); returns whether the watchdog fired, clears
    /// immediate_exit, and restores the thread's signal mask.
    @discardableResult
    func disarm() -> Bool {
        let didFire: Bool = lock.withLock { _ in
            armed = false
            defer { fired = false }
            return fired
        }
        if didFire { vcpu?.immediateExit = false }
        if signalWasBlocked {
            // A kick sent just before disarming stays pending while blocked and
            // is harmless: its handler does nothing.
            KickSignal.blockOnThisThread()
        }
        return didFire
    }
}
