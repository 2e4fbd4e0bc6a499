import HostSystem

#if canImport(Glibc)
import Glibc
#endif

/// The thread a vCPU runs on, and the one way to stop it, pause it or limit
/// how long it runs. The VMM runs each vCPU on a thread of its own
/// (`spawn`); the conformance harness runs its vCPU on the test's thread,
/// calling `run` directly. Both get the same rules:
///
/// - Another thread stops or pauses the vCPU by setting `kvm_run.immediate_exit`
///   and sending the kick signal (`KickSignal`) to whichever thread is inside
///   `run`. KVM checks `immediate_exit` on entry, so a kick that lands before
///   KVM_RUN is not lost; the signal interrupts a KVM_RUN already under way.
/// - `run` hides the EINTR that results and answers with what was asked:
///   `.stopped`, a wait while paused, or `.deadlineExpired`. An EINTR that
///   nobody asked for (another signal) just runs the vCPU again.
/// - The calling thread must accept the kick signal while it is in `run`:
///   `run` unblocks it for the calling thread, and `leaveThread` restores the
///   thread's earlier mask (for a borrowed thread, such as a test's).
public final class VCPUThread: @unchecked Sendable {
    // @unchecked: the mutable state below is guarded by `lock`; the VCPU is
    // run by one thread at a time, and only `immediate_exit` is written from
    // others.
    public let vcpu: VCPU
    private let lock = ConditionLock()
    private var thread: POSIXThread?
    private var restoreBlockedSignal = false
    private var stopRequested = false
    private var pauseRequested = false
    private var paused = false
    private var deadlineGeneration = 0
    private var deadlineExpired = false
    /// The scheduled expiry of the current deadline (used on the vCPU's thread only).
    private var deadlineToken: UInt64?
    /// Called once KVM has completed the last exit (used on the vCPU's thread only).
    private var afterCompletion: (() -> Void)?

    /// What `run` came back with.
    public enum Outcome {
        /// KVM_RUN returned an exit for the VMM (never `.interrupted`).
        case exit(VCPUExit)
        /// `requestStop` was called: the vCPU will not run again.
        case stopped
        /// The deadline given to `run` passed first.
        case deadlineExpired
    }

    public init(_ vcpu: VCPU) throws {
        try KickSignal.install()
        self.vcpu = vcpu
    }

    /// Starts a new thread that runs `body` with this vCPU thread; `body`
    /// typically loops over `run()` until it returns `.stopped`.
    @discardableResult
    public func spawn(stackSize: Int = 1 << 20, _ body: @escaping @Sendable (VCPUThread) -> Void) throws -> POSIXThread {
        try POSIXThread.start(stackSize: stackSize) { [self] in
            body(self)
            // The thread ends here: no kick may reach its handle after it is
            // joined (kicks are sent under the lock).
            lock.withLock {
                thread = nil
                restoreBlockedSignal = false
            }
        }
    }

    // MARK: On the vCPU's thread

    /// Runs the vCPU until KVM returns an exit for the VMM, a stop is requested,
    /// or `deadline` passes. The corresponding ioctl is KVM_RUN (through
    /// `VCPU.run()`).
    ///
    /// A pause parks the vCPU inside `run`, and only after KVM_RUN has come
    /// back with EINTR: KVM completes an I/O or MMIO exit (the IN data into
    /// RAX, RIP past the instruction) on the next KVM_RUN, which `immediate_exit`
    /// makes return before any guest instruction. So while paused, the vCPU's
    /// registers are whole and can be read or saved.
    public func run(until deadline: ContinuousClock.Instant? = nil) throws -> Outcome {
        enterThread()
        let generation = deadline.map { armDeadline($0) }
        defer { if generation != nil { disarmDeadline() } }
        while true {
            if let outcome = stopOrDeadline() { return outcome }
            switch try vcpu.run() {
            case .interrupted, .notRunnable:
                // KVM completes the last exit before it looks at immediate_exit,
                // so a completion asked for has happened by this EINTR.
                if let body = afterCompletion {
                    afterCompletion = nil
                    body()
                    lock.withLock { if !stopRequested && !pauseRequested && !deadlineExpired { vcpu.immediateExit = false } }
                }
                // Asked for (stop, deadline: answered above; pause: here), or
                // someone else's signal: run again.
                if let outcome = parkWhilePauseRequested() { return outcome }
            case let exit:
                return .exit(exit)
            }
        }
    }

    /// On the vCPU's thread, between exits: makes the next KVM_RUN complete
    /// the exit just handled and return at once (immediate_exit), and calls
    /// `body` then, before any guest instruction runs. The SNP certificate
    /// responder holds its file lock until this point, when the firmware has
    /// made the report.
    public func completeExit(then body: @escaping () -> Void) {
        afterCompletion = body
        lock.withLock { vcpu.immediateExit = true }
    }

    /// Restores the calling thread's signal mask as `run` found it, for a
    /// thread that goes on to other work (the test harness calls this when a
    /// guest run ends).
    public func leaveThread() {
        let restore: Bool = lock.withLock {
            defer { thread = nil; restoreBlockedSignal = false }
            return restoreBlockedSignal
        }
        if restore { KickSignal.blockOnThisThread() }
    }

    /// Becomes the vCPU's thread for kicks, unblocking the kick signal.
    private func enterThread() {
        let needsEntry = lock.withLock { !(thread?.isCurrent ?? false) }
        guard needsEntry else { return }
        let wasBlocked = KickSignal.unblockOnThisThread()
        lock.withLock {
            thread = .current
            restoreBlockedSignal = wasBlocked
            // A request made before this thread was known found no thread to
            // kick; immediate_exit was set, so KVM_RUN still returns at once.
        }
    }

    /// `.stopped` or `.deadlineExpired` when one was asked for, nil to run.
    private func stopOrDeadline() -> Outcome? {
        lock.withLock {
            if stopRequested { return .stopped }
            if deadlineExpired { return .deadlineExpired }
            return nil
        }
    }

    /// Parks the vCPU while a pause is requested; returns `.stopped` or
    /// `.deadlineExpired` if one comes in meanwhile, nil to run again.
    private func parkWhilePauseRequested() -> Outcome? {
        let pausing = lock.withLockBroadcasting { () -> Bool in
            guard pauseRequested && !stopRequested && !deadlineExpired else { return false }
            paused = true  // wakes waitUntilPaused
            return true
        }
        guard pausing else { return nil }
        return lock.wait(until: { !pauseRequested || stopRequested || deadlineExpired }) { () -> Outcome? in
            paused = false
            if stopRequested { return .stopped }
            if deadlineExpired { return .deadlineExpired }
            vcpu.immediateExit = false
            return nil
        }
    }

    private func armDeadline(_ deadline: ContinuousClock.Instant) -> Int {
        let generation: Int = lock.withLock {
            deadlineGeneration += 1
            deadlineExpired = false
            return deadlineGeneration
        }
        do {
            deadlineToken = try DeadlineScheduler.shared.schedule(at: deadline) { [weak self] in self?.expireDeadline(generation) }
        } catch {
            // No timer thread: the deadline cannot be kept, so it has passed.
            lock.withLock { deadlineExpired = true }
        }
        return generation
    }

    private func expireDeadline(_ generation: Int) {
        lock.withLockBroadcasting {  // wakes a vCPU parked by a pause
            guard generation == deadlineGeneration, !deadlineExpired else { return }
            deadlineExpired = true
            kickLocked()
        }
    }

    private func disarmDeadline() {
        if let deadlineToken { DeadlineScheduler.shared.cancel(deadlineToken) }
        deadlineToken = nil
        lock.withLock {
            deadlineGeneration += 1
            if deadlineExpired {
                deadlineExpired = false
                if !stopRequested && !pauseRequested { vcpu.immediateExit = false }
            }
        }
    }

    // MARK: From any thread

    /// Stops the vCPU for good: it leaves KVM_RUN (or does not enter it) and
    /// `run` returns `.stopped` from now on.
    public func requestStop() {
        lock.withLockBroadcasting {
            stopRequested = true
            kickLocked()
        }
    }

    /// Asks the vCPU to pause; `waitUntilPaused` waits until it is out of
    /// KVM_RUN and parked in `run`.
    public func requestPause() {
        lock.withLock {
            pauseRequested = true
            kickLocked()
        }
    }

    /// Lets a paused vCPU run again.
    public func resume() {
        lock.withLockBroadcasting {
            pauseRequested = false
            if !stopRequested && !deadlineExpired { vcpu.immediateExit = false }
        }
    }

    /// Waits until a requested pause has taken effect: the vCPU is parked in
    /// `run`. It also returns when the vCPU was stopped, when its deadline
    /// passed, or when the pause was withdrawn. The vCPU's thread must be in
    /// `run` (or enter it) for a pause to take effect.
    public func waitUntilPaused() {
        lock.wait(until: { paused || stopRequested || deadlineExpired || !pauseRequested }) {}
    }

    /// Whether the vCPU is parked by a pause.
    public var isPaused: Bool { lock.withLock { paused } }

    /// Whether `waitUntilPaused` would return now.
    public var pauseSettled: Bool { lock.withLock { paused || stopRequested || deadlineExpired || !pauseRequested } }

    /// Sets immediate_exit and signals the vCPU's thread, if one is in `run`.
    private func kickLocked() {
        vcpu.immediateExit = true
        if let thread { KickSignal.send(to: thread.handle) }
    }
}
