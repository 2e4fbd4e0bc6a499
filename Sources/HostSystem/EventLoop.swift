#if canImport(Glibc)
import Glibc
#endif
import CHost
import Synchronization

/// What a file descriptor is ready for.
public struct ReadyEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let readable = ReadyEvents(rawValue: UInt32(EPOLLIN.rawValue))
    public static let writable = ReadyEvents(rawValue: UInt32(EPOLLOUT.rawValue))
    /// The peer closed (EPOLLRDHUP), or the descriptor hung up or failed.
    public static let hangUp = ReadyEvents(rawValue: UInt32(EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue))
}

/// An epoll(7) loop on a thread of its own. Device back ends run here, so a
/// vCPU thread never waits on a disk, a tap or a socket: the vCPU's notify
/// write completes in KVM (ioeventfd) and the loop picks it up.
///
/// Handlers run on the loop's thread, one at a time. Descriptors may be added
/// and removed from any thread, also from inside a handler.
public final class EventLoop: Sendable {
    public typealias Handler = @Sendable (ReadyEvents) -> Void

    private let epoll: Int32
    private let wake: EventNotifier
    private let handlers = Mutex<[Int32: Handler]>([:])
    private let thread = Mutex<POSIXThread?>(nil)
    private let stopping = Atomic<Bool>(false)
    private let parking = Parking()
    /// Run on the loop's thread before it parks.
    private let parkingHooks = Mutex<[@Sendable () -> Void]>([])
    public let name: String

    /// Calls `hook` on the loop's thread each time it is about to park for a
    /// `pause`, after the handler it was in: work a handler started (I/O in a
    /// ring, say) can be finished there, so a paused loop holds none.
    public func beforeParking(_ hook: @escaping @Sendable () -> Void) {
        parkingHooks.withLock { $0.append(hook) }
    }

    /// Whether the loop is asked to park, and whether it has: the flags of
    /// `pause` and `resume`, read and written under `lock`.
    private final class Parking: @unchecked Sendable {
        let lock = ConditionLock()
        var requested = false
        var parked = false
        /// Read without the lock on every loop turn; set under it.
        let pending = Atomic<Bool>(false)
    }

    public init(name: String) throws {
        self.name = name
        epoll = try SystemCallError.check(epoll_create1(Int32(EPOLL_CLOEXEC)), "epoll_create1")
        do {
            wake = try EventNotifier()
            try Self.control(epoll, EPOLL_CTL_ADD, wake.fileDescriptor, events: .readable)
        } catch {
            close(epoll)
            throw error
        }
    }

    deinit {
        stop()
        close(epoll)
    }

    /// Calls `handler` on the loop's thread whenever `fileDescriptor` is ready
    /// for `events` (level-triggered). One handler per descriptor; the caller
    /// keeps the descriptor open until it removes it.
    public func add(_ fileDescriptor: Int32, for events: ReadyEvents = .readable, _ handler: @escaping Handler) throws {
        try handlers.withLock { table in
            guard table[fileDescriptor] == nil else {
                throw SystemCallError(operation: "epoll_ctl(ADD, fd \(fileDescriptor))", errno: .fileExists)
            }
            try Self.control(epoll, EPOLL_CTL_ADD, fileDescriptor, events: events)
            table[fileDescriptor] = handler
        }
    }

    /// Changes the events a registered descriptor waits for.
    public func modify(_ fileDescriptor: Int32, for events: ReadyEvents) throws {
        try Self.control(epoll, EPOLL_CTL_MOD, fileDescriptor, events: events)
    }

    /// Stops watching `fileDescriptor`; its handler is not called again once
    /// this returns on the loop's thread (from another thread, a call already
    /// under way may finish).
    public func remove(_ fileDescriptor: Int32) {
        handlers.withLock { table in
            guard table.removeValue(forKey: fileDescriptor) != nil else { return }
            _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fileDescriptor, nil)
        }
    }

    /// Starts the loop's thread; `setUp` runs on it first (a seccomp filter).
    public func start(setUp: @escaping @Sendable () -> Void = {}) throws {
        try thread.withLock { thread in
            guard thread == nil else { return }
            thread = try POSIXThread.start(stackSize: 256 << 10) { [self] in
                setUp()
                run()
            }
        }
    }

    /// Parks the loop's thread between handlers and returns once it is
    /// parked: no handler runs until `resume`, and events that arrive
    /// meanwhile wait (level-triggered, nothing is lost). A machine's devices
    /// quiesce this way while its vCPUs are paused. Returns at once when the
    /// loop has no thread. Not from a handler.
    public func pause() {
        guard requestPause() else { return }
        parking.lock.wait(until: { parking.parked || stopping.load(ordering: .acquiring) }) {}
    }

    /// Asks the loop to park, without waiting for it (`isPaused` tells when
    /// it has); false when there is no loop thread to park, or this is it.
    @discardableResult
    public func requestPause() -> Bool {
        guard let running = thread.withLock({ $0 }), !running.isCurrent else { return false }
        parking.lock.withLock {
            parking.requested = true
            parking.pending.store(true, ordering: .releasing)
        }
        wake.signal()
        return true
    }

    /// Lets a parked loop run handlers again.
    public func resume() {
        parking.lock.withLockBroadcasting {
            parking.requested = false
            parking.pending.store(false, ordering: .releasing)
        }
    }

    /// Whether the loop's thread is parked by `pause`.
    public var isPaused: Bool { parking.lock.withLock { parking.parked } }

    /// Whether `pause` would return now: the thread is parked, stopping, or
    /// not there.
    public var pauseSettled: Bool {
        guard let running = thread.withLock({ $0 }), !running.isCurrent else { return true }
        return parking.lock.withLock { parking.parked || !parking.requested } || stopping.load(ordering: .acquiring)
    }

    /// Parks the loop's thread while a pause is requested.
    private func parkIfRequested() {
        guard parking.pending.load(ordering: .acquiring) else { return }
        for hook in parkingHooks.withLock({ $0 }) { hook() }
        parking.lock.withLockBroadcasting { parking.parked = parking.requested }
        parking.lock.wait(until: { !parking.requested || stopping.load(ordering: .acquiring) }) { parking.parked = false }
    }

    /// Stops the loop's thread and waits for it (not from a handler).
    public func stop() {
        guard let running = thread.withLock({ thread -> POSIXThread? in defer { thread = nil }; return thread }) else { return }
        stopping.store(true, ordering: .releasing)
        parking.lock.withLockBroadcasting { parking.requested = false }
        wake.signal()
        if !running.isCurrent { running.join() }
    }

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while !stopping.load(ordering: .acquiring) {
            parkIfRequested()
            // Sound: epoll_wait writes at most `events.count` entries.
            let count = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress!, Int32($0.count), -1) }
            if count < 0 { if errno == EINTR { continue } else { break } }
            for index in 0..<Int(count) {
                let fd = Int32(truncatingIfNeeded: events[index].data.fd)
                if fd == wake.fileDescriptor { wake.drain(); continue }
                guard let handler = handlers.withLock({ $0[fd] }) else { continue }
                handler(ReadyEvents(rawValue: events[index].events))
                // A pause takes effect between handlers: the rest of this
                // batch is still pending in epoll and comes back after it.
                if parking.pending.load(ordering: .acquiring) { break }
            }
        }
    }

    private static func control(_ epoll: Int32, _ operation: Int32, _ fd: Int32, events: ReadyEvents) throws {
        var event = epoll_event()
        event.events = events.rawValue
        event.data.fd = fd
        try SystemCallError.check(epoll_ctl(epoll, operation, fd, &event), "epoll_ctl(\(operation == EPOLL_CTL_ADD ? "ADD" : "MOD"), fd \(fd))")
    }
}
