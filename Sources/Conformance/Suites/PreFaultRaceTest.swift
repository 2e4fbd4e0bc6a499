import Glibc
import GuestKit
import GuestMemory
import HostSystem
import KVM
import Synchronization
import TextFormat

extension BasicsSuite {
    /// After the memslot-removal case of the kernel's pre_fault_memory_test: a
    /// KVM_PRE_FAULT_MEMORY whose slot is deleted while it runs must come back
    /// (EAGAIN, or success with part of the range left) so that the deletion,
    /// which waits for the pre-fault's SRCU read side, can finish. Before Linux
    /// 6.18 the pre-fault retried forever on the slot being deleted and the
    /// deleting thread waited for it; only a signal ended it.
    ///
    /// The test first times the pre-fault and the deletion one after the
    /// other, then deletes the slot a quarter of that pre-fault time into a
    /// new one (an eighth, a sixteenth... when the pre-fault won the race). A
    /// pre-fault or a deletion still running five times that long (and at
    /// least a second) after the deletion began is stuck; a signal to the pre-faulting
    /// thread then shows whether it was what the deletion waited for.
    static let preFaultDuringSlotDeletion = ConformanceTest(
        suite: name, name: "pre_fault_during_slot_deletion",
        summary: "a KVM_PRE_FAULT_MEMORY whose slot is deleted meanwhile returns (EAGAIN or part of the range left) and the deletion "
            + "finishes, instead of the pre-fault retrying forever while the deleting thread waits for it",
        requires: [.capability(.preFaultMemory)]
    ) { context in
        let machine = try GuestMachine(kvm: context.kvm)
        let race = SlotDeletionRace(vm: machine.vm, vcpu: machine.vcpu)
        let (prefault, deletion) = try race.unraced()
        let limit = max(1, 5 * (prefault + deletion))
        context.note("unraced: pre-fault of \(race.size >> 20) MiB \(prefault.text(places: 3)) s, deletion \((deletion * 1000).text(places: 1)) ms")
        var attempts: [String] = []
        for attempt in 0..<5 {
            let delay = prefault / Double(4 << attempt)
            let run = try race.run(deletingAfter: delay, limit: limit)
            switch run.outcome {
            case .stuck(let unfinished, let afterSignal):
                throw TestFailure("""
                    \(unfinished) in \(limit.text(places: 1)) s after the slot began to be deleted \((delay * 1000).text(places: 1)) ms \
                    into a KVM_PRE_FAULT_MEMORY of \(race.size >> 20) MiB (the deletion: KVM_SET_USER_MEMORY_REGION, size 0); \
                    \(afterSignal). Unraced, the pre-fault took \(prefault.text(places: 3)) s and the deletion \
                    \((deletion * 1000).text(places: 1)) ms
                    diagnosis: the pre-fault retries forever on the memslot being deleted (kvm_faultin_pfn() answers RET_PF_RETRY \
                    for a KVM_MEMSLOT_INVALID slot and kvm_tdp_map_page() loops on it) while it holds kvm->srcu, which the \
                    deletion waits for in synchronize_srcu(); only a signal breaks the loop. Fixed in Linux 6.18 by 3ccbf6f47098 \
                    "KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault"
                    """)
            case .deletionFailed(let error):
                throw TestFailure("deleting the slot during a pre-fault failed: \(error)")
            case .returned(let answer, let overlapped):
                attempts.append("deletion \((delay * 1000).text(places: 1)) ms in: pre-fault \(answer)")
                if overlapped {
                    context.note(attempts.joined(separator: "; "))
                    return
                }
            }
        }
        try context.skip("the deletion never overlapped the pre-fault in 5 attempts (\(attempts.joined(separator: "; ")))")
    }
}

/// A memory slot deleted while a vCPU pre-faults it, on two threads.
struct SlotDeletionRace {
    let vm: VirtualMachine
    let vcpu: VCPU
    let slot: UInt32 = 10
    let address: UInt64 = 1 << 30
    let size = 64 << 20

    enum Outcome {
        /// A call did not end in time (`unfinished` says which); what a signal
        /// to the pre-faulting thread did then.
        case stuck(unfinished: String, afterSignal: String)
        case deletionFailed(String)
        /// The pre-fault came back (`answer` says how); `overlapped` when the
        /// deletion caught it before the whole range was mapped.
        case returned(answer: String, overlapped: Bool)
    }

    struct Run {
        let outcome: Outcome
    }

    /// Installs the slot, in 4 KiB pages: with transparent huge pages the
    /// whole range is a few dozen faults, over before a deletion can start.
    func installSlot() throws {
        let region = try vm.addMemory(slot: slot, at: GuestAddress(address), size: size, to: GuestAddressSpace())
        try region.mapping?.advise(MADV_NOHUGEPAGE)
    }

    /// The pre-fault and the deletion one after the other, in seconds.
    func unraced() throws -> (prefault: Double, deletion: Double) {
        try installSlot()
        let start = ContinuousClock.now
        try vcpu.preFaultMemory(address: address, size: UInt64(size))
        let mapped = ContinuousClock.now
        try vm.removeRegion(slot: slot)
        return ((mapped - start).inSeconds, (ContinuousClock.now - mapped).inSeconds)
    }

    /// What the two threads did, guarded by its mutex.
    final class Progress: Sendable {
        struct State {
            var prefaultStarted: ContinuousClock.Instant?
            var prefaultEnded: ContinuousClock.Instant?
            var prefaultResult: Result<(address: UInt64, size: UInt64), SystemCallError>?
            var deletionStarted: ContinuousClock.Instant?
            var deletionEnded: ContinuousClock.Instant?
            var deletionError: String?
        }
        let state = Mutex(State())
    }

    func run(deletingAfter delay: Double, limit: Double) throws -> Run {
        try installSlot()
        let progress = Progress()
        let (vcpu, vm, slot, address, size) = (self.vcpu, self.vm, self.slot, self.address, UInt64(self.size))
        let prefaulter = try POSIXThread.start {
            KickSignal.unblockOnThisThread()
            progress.state.withLock { $0.prefaultStarted = .now }
            let result = Result { try vcpu.preFaultMemoryOnce(address: address, size: size) }
                .mapError { $0 as? SystemCallError ?? SystemCallError(operation: "KVM_PRE_FAULT_MEMORY", errno: .ioError) }
            progress.state.withLock {
                $0.prefaultEnded = .now
                $0.prefaultResult = result
            }
        }
        while progress.state.withLock({ $0.prefaultStarted == nil }) { usleep(100) }
        usleep(UInt32(delay * 1e6))
        let deleter = try POSIXThread.start {
            progress.state.withLock { $0.deletionStarted = .now }
            do { try vm.removeRegion(slot: slot) } catch { progress.state.withLock { $0.deletionError = "\(error)" } }
            progress.state.withLock { $0.deletionEnded = .now }
        }
        func bothEnded() -> Bool { progress.state.withLock { $0.prefaultEnded != nil && $0.deletionEnded != nil } }
        func waitForBoth(_ seconds: Double) -> Bool {
            let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while !bothEnded() && ContinuousClock.now < end { usleep(1000) }
            return bothEnded()
        }
        while progress.state.withLock({ $0.deletionStarted == nil }) { usleep(100) }
        if !waitForBoth(limit) {
            let unfinished: String = progress.state.withLock { state in
                switch (state.prefaultEnded == nil, state.deletionEnded == nil) {
                case (true, true): return "neither the pre-fault nor the deletion returned"
                case (true, false): return "the deletion finished but the pre-fault did not return"
                default: return "the pre-fault returned but the deletion did not finish"
                }
            }
            let signalled = ContinuousClock.now
            KickSignal.send(to: prefaulter.handle)
            let ended = waitForBoth(30)
            let state = progress.state.withLock { $0 }
            guard ended else {
                // Threads stuck in the kernel cannot be joined; leave them.
                return Run(outcome: .stuck(unfinished: unfinished, afterSignal: "a signal to the pre-faulting thread did not end it within 30 s "
                    + "(pre-fault \(state.prefaultEnded == nil ? "still running" : "returned"), deletion "
                    + "\(state.deletionEnded == nil ? "still waiting" : "finished"))"))
            }
            prefaulter.join()
            deleter.join()
            let answer = Self.describe(state.prefaultResult!)
            let after = (state.deletionEnded! - signalled).inSeconds * 1000
            return Run(outcome: .stuck(unfinished: unfinished, afterSignal: "a signal to the pre-faulting thread ended its ioctl (\(answer)), and the "
                + "deletion finished \(after.text(places: 1)) ms after the signal"))
        }
        prefaulter.join()
        deleter.join()
        let state = progress.state.withLock { $0 }
        if let error = state.deletionError { return Run(outcome: .deletionFailed(error)) }
        let result = state.prefaultResult!
        let overlapped: Bool
        switch result {
        case .success(let left): overlapped = left.size > 0
        case .failure(let error): overlapped = error.errno == .resourceTemporarilyUnavailable
        }
        return Run(outcome: .returned(answer: Self.describe(result), overlapped: overlapped))
    }

    static func describe(_ result: Result<(address: UInt64, size: UInt64), SystemCallError>) -> String {
        switch result {
        case .success(let left) where left.size == 0: return "mapped the whole range"
        case .success(let left): return "returned with \(left.size >> 10) KiB at 0x\(String(left.address, radix: 16)) left"
        case .failure(let error): return "failed with \(error.errno.symbolicName)"
        }
    }
}
