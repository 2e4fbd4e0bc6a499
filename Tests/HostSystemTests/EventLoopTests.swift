import Glibc
import Synchronization
import Testing
import HostSystem

@Suite(.timeLimit(.minutes(5))) struct EventLoopTests {
    @Test func handlersRunOnTheLoopForSignalledNotifiersUntilRemoved() throws {
        let loop = try EventLoop(name: "test")
        let notifier = try EventNotifier()
        let seen = Mutex<[UInt64]>([])
        try loop.add(notifier.fileDescriptor) { _ in
            let count = notifier.drain()
            seen.withLock { $0.append(count) }
        }
        #expect(throws: SystemCallError.self, "one handler per fd") { try loop.add(notifier.fileDescriptor) { _ in } }
        try loop.start()
        notifier.signal(); notifier.signal()
        var waited = 0
        while seen.withLock({ $0.reduce(0, +) }) < 2 && waited < 500 { usleep(10_000); waited += 1 }
        #expect(seen.withLock { $0.reduce(0, +) } == 2)
        loop.remove(notifier.fileDescriptor)
        notifier.signal()
        usleep(100_000)
        #expect(seen.withLock { $0.reduce(0, +) } == 2, "a removed fd's handler is not called")
        #expect(notifier.drain() == 1)
        loop.stop()
        #expect(notifier.drain() == 0)
    }

    /// A paused loop runs no handler; what arrived meanwhile is handled after
    /// the resume, nothing lost.
    @Test func aPausedLoopRunsNoHandlerUntilResumed() throws {
        let loop = try EventLoop(name: "pause")
        let notifier = try EventNotifier()
        let seen = Atomic<UInt64>(0)
        try loop.add(notifier.fileDescriptor) { _ in seen.add(notifier.drain(), ordering: .relaxed) }
        loop.pause()
        #expect(!loop.isPaused, "a loop without a thread has nothing to park")
        try loop.start()
        notifier.signal()
        var waited = 0
        while seen.load(ordering: .relaxed) < 1 && waited < 500 { usleep(10_000); waited += 1 }
        loop.pause()
        #expect(loop.isPaused)
        notifier.signal(); notifier.signal()
        usleep(200_000)
        #expect(seen.load(ordering: .relaxed) == 1, "no handler runs while paused")
        loop.resume()
        waited = 0
        while seen.load(ordering: .relaxed) < 3 && waited < 500 { usleep(10_000); waited += 1 }
        #expect(seen.load(ordering: .relaxed) == 3, "the events that came while paused are handled after the resume")
        #expect(!loop.isPaused)
        loop.pause()
        loop.stop()  // a stop ends a paused loop too
        #expect(!loop.isPaused)
    }
}
