import CKVM
import Dispatch
import Foundation
import KVM

/// Stops a vCPU that runs past a deadline: sets `immediate_exit` and signals
/// the vCPU's thread, so KVM_RUN returns EINTR whether the thread is inside it
/// or about to enter it.
final class VCPUWatchdog {
    /// The signal used to kick vCPU threads; its handler does nothing.
    static let kickSignal = SIGUSR1
    private static let installHandler: Void = { _ = ckvm_install_kick_handler(kickSignal) }()

    private let lock = NSLock()
    private var generation = 0
    private var armed = false
    private var fired = false
    private weak var vcpu: VCPU?
    /// Whether the kick signal was blocked on the vCPU thread before `arm`.
    private var signalWasBlocked = false

    init(vcpu: VCPU) {
        Self.installHandler
        self.vcpu = vcpu
    }

    /// Arms the watchdog for the calling thread; it fires after `seconds`.
    func arm(seconds: Double) {
        let thread = pthread_self()
        // The thread must accept the kick while it may be inside KVM_RUN.
        signalWasBlocked = ckvm_set_signal_blocked(Self.kickSignal, 0) == 1
        lock.lock()
        generation += 1
        let current = generation
        armed = true
        fired = false
        lock.unlock()
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [weak self] in
            guard let self else { return }
            self.lock.lock()
            defer { self.lock.unlock() }
            guard self.armed, self.generation == current, let vcpu = self.vcpu else { return }
            self.fired = true
            vcpu.immediateExit = true
            pthread_kill(thread, Self.kickSignal)
        }
    }

    /// Disarms (on the vCPU thread); returns whether the watchdog fired, clears
    /// immediate_exit, and restores the thread's signal mask.
    @discardableResult
    func disarm() -> Bool {
        lock.lock()
        armed = false
        let didFire = fired
        fired = false
        lock.unlock()
        if didFire { vcpu?.immediateExit = false }
        if signalWasBlocked {
            // A kick sent just before disarming stays pending while blocked and
            // is harmless: its handler does nothing.
            _ = ckvm_set_signal_blocked(Self.kickSignal, 1)
        }
        return didFire
    }
}
