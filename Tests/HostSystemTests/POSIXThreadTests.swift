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
