import Glibc
import Synchronization
import Testing
import HostSystem

@Suite struct EventLoopTests {
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
}
