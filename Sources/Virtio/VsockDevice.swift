import Glibc
import HostSystem
import Synchronization

/// virtio-vsock (virtio 1.2, section 5.10) in Firecracker's hybrid model: the
/// host side is Unix sockets.
///
/// - A host program connects to `udsPath` and writes `CONNECT <port>\n`; the
///   guest is asked for a connection to that port, and on its answer the
///   program reads `OK <host port>\n`. Then bytes flow both ways.
/// - A guest connection to the host (CID 2), port P, is a connection to the
///   Unix socket `<udsPath>_P`; when nobody listens there, the guest gets a reset.
///
/// Stream sockets only, with the protocol's credit flow control both ways: the
/// device never sends the guest more than its receive buffer has room for, and
/// tells it its own buffer size (256 KiB per connection). A full shutdown from
/// either side ends the connection with a reset, as Firecracker does.
public final class VsockDevice: VirtioDevice {
    public static let hostCID: UInt64 = 2
    public static let bufferAllocation: UInt32 = 256 << 10
    static let receiveQueue = 0, transmitQueue = 1, eventQueue = 2

    public let deviceType = VirtioDeviceType.socket
    public let offeredFeatures: UInt64 = 0
    public let queueSizes: [UInt16] = [256, 256, 16]
    public let guestCID: UInt64
    public let udsPath: String
    private let listener: Int32
    private let engine = Mutex<VsockEngine?>(nil)

    /// Listens on `udsPath` now, so that a bad path is refused before the VM
    /// exists. `guestCID` must be 3 or more (0-2 are reserved).
    public init(guestCID: UInt64, udsPath: String) throws {
        guard guestCID >= 3, guestCID < UInt64(UInt32.max) else {
            throw SystemCallError(operation: "vsock guest CID \(guestCID) (3 to 2^32 - 2)", errno: .invalidArgument)
        }
        self.guestCID = guestCID
        self.udsPath = udsPath
        listener = try UnixSocket.listen(at: udsPath)
    }

    deinit {
        close(listener)
        unlink(udsPath)
    }

    /// struct virtio_vsock_config: guest_cid.
    public var configurationSpace: [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendLittleEndian(guestCID)
        return bytes
    }

    public func activate(_ context: VirtioContext) throws {
        self.engine.withLock { $0 = VsockEngine(context: context, guestCID: guestCID, udsPath: udsPath, device: self) }
        let listener = listener
        try context.watch(listener) { [weak self] _ throws(QueueFault) in
            try self?.onEngine { engine throws(QueueFault) in try engine.acceptHostConnections(listener) }
        }
    }

    /// Runs `body` with the active engine (nothing when the device is reset).
    func onEngine(_ body: (VsockEngine) throws(QueueFault) -> Void) throws(QueueFault) {
        try engine.withLock { engine throws(QueueFault) in
            if let engine { try body(engine) }
        }
    }

    public func reset() {
        engine.withLock { engine in
            engine?.closeAll()
            engine = nil
        }
    }

    /// After a restore the host side of every connection is gone (they were
    /// sockets of another process): the driver hears
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, as Firecracker
    /// sends it, and drops its connections; new ones work as before.
    public func restored() {
        engine.withLock { engine in engine?.announceTransportReset() }
    }

    public func process(queue: Int) throws(QueueFault) {
        try engine.withLock { engine throws(QueueFault) in
            guard let engine else { return }
            switch queue {
            case Self.transmitQueue: try engine.transmit()
            case Self.receiveQueue: try engine.fillReceive()
            default: break  // the event queue: buffers wait for a transport reset (after a restore)
            }
        }
    }

    /// Connections open now, for tests and reports.
    public var connectionCount: Int { engine.withLock { $0?.connectionCount ?? 0 } }
}

/// The connection state of an active vsock device; used only on the device's
/// event loop, under its lock.
final class VsockEngine {
    struct Key: Hashable {
        let localPort: UInt32
        let peerPort: UInt32
    }

    final class Connection {
        enum State { case awaitingGuest, established }
        let fd: Int32
        let key: Key
        var state: State
        var peerBufferAllocation: UInt32 = 0
        var peerForwardCount: UInt32 = 0
        var sent: UInt32 = 0             // payload bytes sent to the guest
        var forwarded: UInt32 = 0        // guest bytes written to the socket
        var advertised: UInt32 = 0       // `forwarded` when the guest last heard it
        var toHost: [UInt8] = []         // guest bytes the socket has not taken yet
        var hostReadable = false         // data (or EOF) waits on the socket
        var watchingRead = true
        var watchingWrite = false
        var hostClosed = false           // EOF seen; SHUTDOWN sent to the guest
        var guestStoppedSending = false

        init(fd: Int32, key: Key, state: State) {
            self.fd = fd
            self.key = key
            self.state = state
        }

        /// Bytes the guest can take now.
        var credit: UInt32 { peerBufferAllocation &- (sent &- peerForwardCount) }
    }

    let context: VirtioContext
    let guestCID: UInt64
    let udsPath: String
    private var connections: [Key: Connection] = [:]
    private var handshakes: [Int32: [UInt8]] = [:]
    private var control: [VsockHeader] = []
    private var nextLocalPort: UInt32 = 1 << 30

    private weak var device: VsockDevice?

    init(context: VirtioContext, guestCID: UInt64, udsPath: String, device: VsockDevice) {
        self.device = device
        self.context = context
        self.guestCID = guestCID
        self.udsPath = udsPath
    }

    var connectionCount: Int { connections.count }

    /// Puts one struct virtio_vsock_event { le32 id = TRANSPORT_RESET (0) }
    /// into the event queue's next buffer; without a buffer the event is
    /// lost, as it would be on hardware (the driver keeps the queue filled).
    func announceTransportReset() {
        guard let queue = context.queues.last, queue.index == VsockDevice.eventQueue,
              let chain = try? queue.next() else { return }
        var writer = ChainWriter(chain, memory: context.memory)
        let written = writer.write([0, 0, 0, 0])
        queue.complete(chain.head, written: written)
        context.notifyIfNeeded(queue)
    }

    func closeAll() {
        for fd in handshakes.keys { context.unwatch(fd); close(fd) }
        handshakes = [:]
        for connection in connections.values { context.unwatch(connection.fd); close(connection.fd) }
        connections = [:]
    }

    // MARK: Host programs connecting (CONNECT <port>)

    func acceptHostConnections(_ listener: Int32) throws(QueueFault) {
        while let fd = UnixSocket.accept(listener) {
            handshakes[fd] = []
            do {
                try context.watch(fd) { [weak device] _ throws(QueueFault) in try device?.onEngine { engine throws(QueueFault) in try engine.readHandshake(fd) } }
            } catch {
                handshakes[fd] = nil
                close(fd)
            }
        }
    }

    func readHandshake(_ fd: Int32) throws(QueueFault) {
        guard var line = handshakes[fd] else { return }
        var byte: UInt8 = 0
        // One byte at a time, so nothing after the newline is taken from the stream.
        while true {
            let count = read(fd, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN { handshakes[fd] = line; return }
            guard count == 1, byte != 0x0A else { break }
            line.append(byte)
            guard line.count < VsockHandshake.maximumLength else { break }
        }
        handshakes[fd] = nil
        context.unwatch(fd)
        guard byte == 0x0A, let port = VsockHandshake.port(fromLine: line) else {
            close(fd)  // EOF, an error, or not a CONNECT line: Firecracker closes too
            return
        }
        let key = Key(localPort: allocateLocalPort(), peerPort: port)
        let connection = Connection(fd: fd, key: key, state: .awaitingGuest)
        connection.watchingRead = false
        connections[key] = connection
        enqueue(.request, for: connection)
        try fillReceive()
    }

    private func allocateLocalPort() -> UInt32 {
        repeat { nextLocalPort = nextLocalPort == UInt32.max ? 1 << 30 : nextLocalPort + 1 }
        while connections.keys.contains { $0.localPort == nextLocalPort }
        return nextLocalPort
    }

    private func watch(_ connection: Connection) {
        let fd = connection.fd
        let key = connection.key
        do {
            try context.watch(fd, for: []) { [weak device] events throws(QueueFault) in
                try device?.onEngine { engine throws(QueueFault) in try engine.hostEvent(key, events) }
            }
        } catch {
            remove(connection, reset: true)
            return
        }
        updateInterest(connection)
    }

    private func updateInterest(_ connection: Connection) {
        var events: ReadyEvents = []
        if connection.watchingRead { events.insert(.readable) }
        if connection.watchingWrite { events.insert(.writable) }
        context.setInterest(connection.fd, events)
    }

    func hostEvent(_ key: Key, _ events: ReadyEvents) throws(QueueFault) {
        guard let connection = connections[key] else { return }
        if events.contains(.writable) || events.contains(.hangUp) { flushToHost(connection) }
        guard connections[key] != nil else { return }
        if events.contains(.readable) || events.contains(.hangUp) {
            connection.hostReadable = true
            connection.watchingRead = false  // until the data is passed on
            updateInterest(connection)
            try fillReceive()
        }
    }

    // MARK: Guest to host (the transmit queue)

    func transmit() throws(QueueFault) {
        let queue = context.queues[VsockDevice.transmitQueue]
        while let chain = try queue.nextOrEnableNotification() {
            var reader = ChainReader(chain, memory: context.memory)
            if let bytes = reader.readBytes(VsockHeader.size), let header = VsockHeader(bytes) {
                handle(header, &reader)
            }
            queue.complete(chain.head, written: 0)
        }
        context.notifyIfNeeded(queue)
        try fillReceive()
    }

    private func handle(_ header: VsockHeader, _ payload: inout ChainReader) {
        // Only stream packets from the guest's own CID to the host are served;
        // anything else gets a reset (a reset itself gets nothing).
        guard header.sourceCID == guestCID, header.destinationCID == VsockDevice.hostCID, header.type == VsockHeader.streamType,
              let operation = header.knownOperation else {
            if header.operation != VsockHeader.Operation.reset.rawValue { replyReset(to: header) }
            return
        }
        let key = Key(localPort: header.destinationPort, peerPort: header.sourcePort)
        let connection = connections[key]
        connection?.peerBufferAllocation = header.bufferAllocation
        connection?.peerForwardCount = header.forwardCount
        switch operation {
        case .request:
            guard connection == nil else { replyReset(to: header); return }
            guard let fd = try? UnixSocket.connect(to: "\(udsPath)_\(header.destinationPort)") else { replyReset(to: header); return }
            let created = Connection(fd: fd, key: key, state: .established)
            created.peerBufferAllocation = header.bufferAllocation
            created.peerForwardCount = header.forwardCount
            connections[key] = created
            watch(created)
            enqueue(.response, for: created)
        case .response:
            guard let connection, connection.state == .awaitingGuest else { replyReset(to: header); return }
            connection.state = .established
            let answer = Array("OK \(key.localPort)\n".utf8)
            guard answer.withUnsafeBytes({ write(connection.fd, $0.baseAddress, $0.count) }) == answer.count else {
                remove(connection, reset: true)
                return
            }
            connection.watchingRead = true
            watch(connection)
        case .readWrite:
            guard let connection, connection.state == .established, !connection.guestStoppedSending else { replyReset(to: header); return }
            let length = min(Int(header.length), payload.remaining)
            guard connection.toHost.count + length <= Int(VsockDevice.bufferAllocation) else {
                remove(connection, reset: true)  // the guest ignored our credit
                return
            }
            if let bytes = payload.readBytes(length) { connection.toHost += bytes }
            flushToHost(connection)
        case .creditUpdate:
            break  // the credit fields were taken above; fillReceive follows
        case .creditRequest:
            if let connection { enqueue(.creditUpdate, for: connection) } else { replyReset(to: header) }
        case .shutdown:
            guard let connection else { replyReset(to: header); return }
            if header.flags & VsockHeader.shutdownSend != 0 { connection.guestStoppedSending = true }
            if header.flags & (VsockHeader.shutdownSend | VsockHeader.shutdownReceive) == VsockHeader.shutdownSend | VsockHeader.shutdownReceive {
                flushToHost(connection)
                remove(connection, reset: true)
            } else if connection.guestStoppedSending && connection.toHost.isEmpty {
                shutdown(connection.fd, Int32(SHUT_WR))
            }
        case .reset:
            if let connection { remove(connection, reset: false) }
        }
    }

    /// Writes what the guest sent to the host socket, as far as it takes it.
    private func flushToHost(_ connection: Connection) {
        while !connection.toHost.isEmpty {
            let count = connection.toHost.withUnsafeBytes { send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            guard count > 0 else { remove(connection, reset: true); return }
            connection.toHost.removeFirst(count)
            connection.forwarded &+= UInt32(count)
        }
        let waiting = !connection.toHost.isEmpty
        if waiting != connection.watchingWrite {
            connection.watchingWrite = waiting
            updateInterest(connection)
        }
        if !waiting && connection.guestStoppedSending { shutdown(connection.fd, Int32(SHUT_WR)) }
        // Tell the guest about freed buffer space once a quarter of it is free.
        if connection.forwarded &- connection.advertised >= VsockDevice.bufferAllocation / 4 {
            enqueue(.creditUpdate, for: connection)
        }
    }

    private func remove(_ connection: Connection, reset: Bool) {
        guard connections.removeValue(forKey: connection.key) != nil else { return }
        context.unwatch(connection.fd)
        close(connection.fd)
        control.removeAll { $0.sourcePort == connection.key.localPort && $0.destinationPort == connection.key.peerPort }
        if reset { enqueue(.reset, for: connection) }
    }

    private func header(_ operation: VsockHeader.Operation, _ connection: Connection, length: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader {
        connection.advertised = connection.forwarded
        return VsockHeader(sourceCID: VsockDevice.hostCID, destinationCID: guestCID, sourcePort: connection.key.localPort,
                           destinationPort: connection.key.peerPort, length: length, operation: operation, flags: flags,
                           bufferAllocation: VsockDevice.bufferAllocation, forwardCount: connection.forwarded)
    }

    private func enqueue(_ operation: VsockHeader.Operation, for connection: Connection, flags: UInt32 = 0) {
        control.append(header(operation, connection, flags: flags))
    }

    private func replyReset(to packet: VsockHeader) {
        control.append(VsockHeader(sourceCID: VsockDevice.hostCID, destinationCID: guestCID, sourcePort: packet.destinationPort,
                                   destinationPort: packet.sourcePort, operation: .reset))
    }

    // MARK: Host to guest (the receive queue)

    /// Fills receive buffers: control packets first, then data from host
    /// sockets that have some, within each connection's credit.
    func fillReceive() throws(QueueFault) {
        let queue = context.queues[VsockDevice.receiveQueue]
        var delivered = false
        defer { if delivered { context.notifyIfNeeded(queue) } }
        while !control.isEmpty {
            guard let chain = try queue.nextOrEnableNotification() else { return }
            var writer = ChainWriter(chain, memory: context.memory)
            guard writer.remaining >= VsockHeader.size else {
                throw QueueFault("virtio-vsock receive buffer \(chain.head) has \(writer.remaining) writable bytes, less than a header")
            }
            writer.write(control.removeFirst().bytes)
            queue.complete(chain.head, written: writer.written)
            delivered = true
        }
        for connection in connections.values where connection.hostReadable && connection.state == .established {
            while connection.hostReadable, connections[connection.key] != nil {
                if connection.hostClosed { connection.hostReadable = false; break }
                let credit = connection.credit
                guard credit > 0 else { break }  // the guest's credit update brings us back
                guard let chain = try queue.nextOrEnableNotification() else { return }
                var writer = ChainWriter(chain, memory: context.memory)
                guard writer.remaining >= VsockHeader.size else {
                    throw QueueFault("virtio-vsock receive buffer \(chain.head) has \(writer.remaining) writable bytes, less than a header")
                }
                writer.skip(to: VsockHeader.size)
                let room = min(writer.remaining, Int(credit), 64 << 10)
                let pieces = writer.take(room)
                let count = withIOVectors(pieces) { readv(connection.fd, $0, $1) }
                if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    queue.undoNext()
                    connection.hostReadable = false
                    connection.watchingRead = true
                    updateInterest(connection)
                    break
                }
                var packet: VsockHeader
                if count > 0 {
                    packet = header(.readWrite, connection, length: UInt32(count))
                    connection.sent &+= UInt32(count)
                } else {
                    // EOF: the host side will send no more (a half close; the
                    // guest may still send, and a closed socket then resets).
                    connection.hostClosed = true
                    connection.hostReadable = false
                    packet = header(.shutdown, connection, flags: VsockHeader.shutdownSend)
                }
                var headerWriter = ChainWriter(chain, memory: context.memory)
                headerWriter.write(packet.bytes)
                queue.complete(chain.head, written: VsockHeader.size + max(count, 0))
                delivered = true
            }
        }
    }
}
