import Glibc
import Synchronization
import Testing
import HostSystem

@Suite(.timeLimit(.minutes(5))) struct POSIXThreadTests {
    @Test func runsTheClosureOnAnotherThreadAndJoins() throws {
        let seen = Mutex<(ran: Bool, sameThread: Bool)>((false, true))
        let caller = pthread_self()
        let thread = try POSIXThread.start(stackSize: 256 << 10) {
            seen.withLock { $0 = (true, pthread_equal(pthread_self(), caller) != 0) }
        }
        thread.join()
        #expect(seen.withLock { $0.ran })
        #expect(!seen.withLock { $0.sameThread })
    }

    /// The nice value set on one thread is that thread's alone: the thread
    /// that started it keeps its own, and the process's other threads too.
    @Test func niceBelongsToTheCallingThreadOnly() throws {
        let before = try POSIXThread.currentNice
        let seen = Mutex<(set: Int32, error: String?)>((0, nil))
        let thread = try POSIXThread.start {
            do {
                try POSIXThread.setCurrentNice(19)
                let now = try POSIXThread.currentNice
                seen.withLock { $0.set = now }
            } catch {
                seen.withLock { $0.error = "\(error)" }
            }
        }
        thread.join()
        #expect(seen.withLock { $0.error } == nil)
        #expect(seen.withLock { $0.set } == 19)
        #expect(try POSIXThread.currentNice == before)
    }

    /// Linux clamps a nice value above 19: the call succeeds and sets 19.
    @Test func aNiceAboveNineteenIsClampedToNineteen() throws {
        let seen = Mutex<Int32?>(nil)
        let thread = try POSIXThread.start {
            try? POSIXThread.setCurrentNice(40)
            seen.withLock { $0 = try? POSIXThread.currentNice }
        }
        thread.join()
        #expect(seen.withLock { $0 } == 19)
    }

    @Test func refusesAStackBelowTheMinimum() {
        #expect(throws: SystemCallError.self) { try POSIXThread.start(stackSize: 1) {} }
    }
}

@Suite(.timeLimit(.minutes(5))) struct DeadlineSchedulerTests {
    @Test func actionsRunAtTheirDeadlinesInOrderAndCancelledOnesNever() throws {
        let scheduler = DeadlineScheduler()
        let fired = Mutex<[String]>([])
        let start = ContinuousClock.now
        try scheduler.schedule(at: start + .milliseconds(150)) { fired.withLock { $0.append("late") } }
        try scheduler.schedule(at: start + .milliseconds(50)) { fired.withLock { $0.append("early") } }
        let cancelled = try scheduler.schedule(at: start + .milliseconds(100)) { fired.withLock { $0.append("cancelled") } }
        scheduler.cancel(cancelled)
        try scheduler.schedule(at: start - .seconds(1)) { fired.withLock { $0.append("past") } }
        while scheduler.pendingCount > 0 && ContinuousClock.now - start < .seconds(30) { usleep(10_000) }
        usleep(20_000)
        #expect(fired.withLock { $0 } == ["past", "early", "late"])
        #expect(ContinuousClock.now - start >= .milliseconds(150))
    }

    /// The scheduler's own thread fires deadlines even when every thread of
    /// the dispatch pool is busy.
    /// The scheduler's thread gets to run while four threads spin on two
    /// cores. The spinners give up by themselves after 30 s, so a deadline
    /// that never fires fails the test instead of hanging it.
    @Test func aDeadlineFiresWhileOtherThreadsSpin() throws {
        let scheduler = DeadlineScheduler()
        let firedAt = Mutex<ContinuousClock.Instant?>(nil)
        let start = ContinuousClock.now
        let giveUp = start + .seconds(30)
        let spinners = try (0..<4).map { _ in
            try POSIXThread.start { while firedAt.withLock({ $0 }) == nil && ContinuousClock.now < giveUp {} }
        }
        try scheduler.schedule(at: start + .milliseconds(50)) { firedAt.withLock { $0 = .now } }
        spinners.forEach { $0.join() }
        let fired = try #require(firedAt.withLock { $0 }, "the deadline did not fire within 30 s while four threads spun")
        #expect(fired >= start + .milliseconds(50), "not before its time")
        // A liveness bound, not a speed goal.
        #expect(fired - start < .seconds(20), "fired \(fired - start) after it was scheduled")
    }
}
