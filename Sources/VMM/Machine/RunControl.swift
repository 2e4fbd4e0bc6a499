import KVM
import Synchronization

/// How a run ends, shared by the vCPU threads, the devices that can end it
/// and whoever stops it from outside (a signal): the first reason given wins,
/// and every vCPU thread is told to stop.
final class RunControl: Sendable {
    private struct State {
        var outcome: RunOutcome?
        var threads: [VCPUThread] = []
    }

    private let state = Mutex(State())

    init() {}

    /// The vCPU threads to stop; a run that already ended stops them at once.
    func attach(_ threads: [VCPUThread]) {
        let ended: Bool = state.withLock {
            $0.threads = threads
            return $0.outcome != nil
        }
        if ended { threads.forEach { $0.requestStop() } }
    }

    /// Ends the run with `reason` unless it already ended, and stops every vCPU.
    func finish(_ reason: RunOutcome) {
        let threads: [VCPUThread] = state.withLock {
            if $0.outcome == nil { $0.outcome = reason }
            return $0.threads
        }
        for thread in threads { thread.requestStop() }
    }

    var outcome: RunOutcome? { state.withLock { $0.outcome } }
}
