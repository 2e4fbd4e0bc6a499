import Glibc
import GuestKit
import KVM
import Synchronization
import Testing

/// The one vCPU thread type on a real vCPU: a guest spinning in `jmp $` is
/// stopped by a deadline, stopped and paused from another thread, and resumed.
@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct VCPUThreadTests {
    /// A machine whose guest loops forever at 0x1000 (real mode).
    func spinningMachine() throws -> GuestMachine {
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadRealMode(code: [0xEB, 0xFE])  // jmp $
        return machine
    }

    @Test func aDeadlineEndsTheRunAndLeavesTheVCPUUsable() throws {
        let machine = try spinningMachine()
        let thread = machine.vcpuThread
        defer { thread.leaveThread() }
        guard case .deadlineExpired = try thread.run(until: .now + .milliseconds(200)) else {
            Issue.record("the spinning guest returned before its deadline"); return
        }
        #expect(!machine.vcpu.immediateExit, "immediate_exit is cleared once the deadline is answered")
        guard case .deadlineExpired = try thread.run(until: .now + .milliseconds(100)) else {
            Issue.record("a second deadline was not honoured"); return
        }
        #expect(try machine.vcpu.registers().rip == 0x1000)
    }

    @Test func aStopFromAnotherThreadEndsTheLoop() throws {
        let machine = try spinningMachine()
        let outcome = Mutex<String>("")
        let posix = try machine.vcpuThread.spawn { thread in
            do {
                switch try thread.run() {
                case .stopped: outcome.withLock { $0 = "stopped" }
                case .exit(let exit): outcome.withLock { $0 = "exit \(exit)" }
                case .deadlineExpired: outcome.withLock { $0 = "deadline" }
                }
            } catch { outcome.withLock { $0 = "error \(error)" } }
        }
        usleep(200_000)
        machine.vcpuThread.requestStop()
        posix.join()
        #expect(outcome.withLock { $0 } == "stopped")
        // Once stopped, it stays stopped and never enters KVM_RUN again.
        defer { machine.vcpuThread.leaveThread() }
        guard case .stopped = try machine.vcpuThread.run() else { Issue.record("ran after a stop"); return }
    }

    /// completeExit: the next KVM_RUN finishes the IN (AL loaded, RIP past
    /// it) and comes straight back, and the body sees that before the guest
    /// runs on to its OUT.
    @Test func completeExitRunsTheBodyOnceKVMHasFinishedTheExit() throws {
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadRealMode(code: [0xE4, 0x80, 0xE6, 0x81, 0xEB, 0xFE])  // in al, 0x80; out 0x81, al; jmp $
        let thread = machine.vcpuThread
        defer { thread.leaveThread() }
        guard case .exit(.io(let input)) = try thread.run(until: .now + .seconds(10)), input.port == 0x80 else {
            Issue.record("the guest's IN did not exit"); return
        }
        input.data[0] = 0x5A
        var seen: (al: UInt64, rip: UInt64)?
        thread.completeExit { seen = try? { let r = try machine.vcpu.registers(); return (r.rax & 0xFF, r.rip) }() }
        guard case .exit(.io(let output)) = try thread.run(until: .now + .seconds(10)), output.port == 0x81 else {
            Issue.record("the guest's OUT did not follow"); return
        }
        #expect(seen?.al == 0x5A, "the IN's data was in AL when the body ran")
        #expect(seen?.rip == 0x1002, "RIP was past the IN, before the OUT")
        #expect(output.data[0] == 0x5A)
        #expect(!machine.vcpu.immediateExit, "immediate_exit is cleared after the completion")
    }

    @Test func aStopBeforeTheFirstRunIsNotLost() throws {
        let machine = try spinningMachine()
        machine.vcpuThread.requestStop()
        defer { machine.vcpuThread.leaveThread() }
        guard case .stopped = try machine.vcpuThread.run() else { Issue.record("ran although stopped"); return }
    }

    @Test func pauseParksTheVCPUOutsideKVMRunUntilResumed() throws {
        let machine = try spinningMachine()
        let runs = Mutex(0)
        let posix = try machine.vcpuThread.spawn { thread in
            while true {
                runs.withLock { $0 += 1 }
                guard case .exit = (try? thread.run()) ?? .stopped else { return }
            }
        }
        usleep(100_000)
        machine.vcpuThread.requestPause()
        machine.vcpuThread.waitUntilPaused()
        #expect(machine.vcpuThread.isPaused)
        // While paused, another thread may read the vCPU's state.
        #expect(try machine.vcpu.registers().rip == 0x1000)
        machine.vcpuThread.resume()
        usleep(100_000)
        #expect(!machine.vcpuThread.isPaused)
        machine.vcpuThread.requestStop()
        posix.join()
        #expect(runs.withLock { $0 } == 1, "the spin loop never exits to userspace; pause and resume happen inside run()")
    }
}
