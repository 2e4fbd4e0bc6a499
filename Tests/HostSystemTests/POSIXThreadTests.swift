import Glibc
import Synchronization
import Testing
import HostSystem

@Suite struct POSIXThreadTests {
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

    @Test func refusesAStackBelowTheMinimum() {
        #expect(throws: SystemCallError.self) { try POSIXThread.start(stackSize: 1) {} }
    }
}

@Suite struct DeadlineSchedulerTests {
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
    @Test func aDeadlineFiresWhileOtherThreadsSpin() throws {
        let scheduler = DeadlineScheduler()
        let stop = Mutex(false)
        let spinners = try (0..<4).map { _ in try POSIXThread.start { while !stop.withLock({ $0 }) {} } }
        try scheduler.schedule(at: .now + .milliseconds(50)) { stop.withLock { $0 = true } }
        spinners.forEach { $0.join() }
        #expect(stop.withLock { $0 })
    }
}
