import HostSystem
import Synchronization
import Virtio
import WireFormats

/// The guest's way to the MMDS through a virtio-net device, as Firecracker's
/// (its "dumbo" stack): ARP requests for the MMDS address are answered with
/// the MMDS MAC, and TCP segments to port 80 of that address reach a small
/// TCP server that reads HTTP requests and answers them from
/// `MetadataService`. No frame to the MMDS address reaches the tap.
///
/// The TCP side is the passive half of RFC 9293 for a peer on the same
/// wire: a SYN opens a connection (at most `maximumConnections`; the least
/// recently active one is reset to make room), in-order data is taken and
/// acknowledged (anything else is acknowledged and dropped), answers go out
/// in segments of at most the peer's MSS within its window, and FINs close.
/// Frames to the guest are not lost while they wait here (at most
/// `maximumQueuedFrames`, made lazily as the guest takes them), so the only
/// retransmission is going back to the last acknowledged byte on a third
/// duplicate ACK. The guest's checksums are not checked (its frames may carry
/// offloaded, partial ones); ours are complete.
///
/// `FrameInterceptor`'s contract: used on the device's event loop thread only.
public final class MetadataNetworkStack: FrameInterceptor, @unchecked Sendable {
    public let service: MetadataService
    public let ipv4Address: [UInt8]
    let macAddress = MetadataConfiguration.macAddress
    static let port: UInt16 = 80
    static let maximumConnections = 30
    static let maximumQueuedFrames = 64
    /// The MSS we offer, and assume for a peer that offers none (RFC 9293's 536).
    static let ourMSS = 1460, defaultPeerMSS = 536
    /// A peer's MSS below this (0 would stall the answer) counts as this.
    static let minimumPeerMSS = 64
    static let ourWindow: UInt16 = 65535

    private var queued: [[UInt8]] = []
    private var queueStart = 0
    private var connections: [ConnectionKey: TCPConnection] = [:]
    private var activity: UInt64 = 0
    private var identification: UInt16 = 0
    private let statistics = Mutex(Statistics())

    /// Firecracker's `mmds` frame and connection counts.
    public struct Statistics: Equatable, Sendable {
        public var framesReceived = 0, framesDropped = 0, framesSent = 0, bytesSent = 0
        public var connectionsCreated = 0, connectionsDestroyed = 0
    }

    public var counts: Statistics { statistics.withLock { $0 } }

    public init(service: MetadataService, ipv4Address: [UInt8] = MetadataConfiguration.defaultIPv4Address) {
        precondition(ipv4Address.count == 4, "an IPv4 address has four bytes")
        self.service = service
        self.ipv4Address = ipv4Address
    }

    struct ConnectionKey: Hashable {
        var address: [UInt8]
        var port: UInt16
    }

    // MARK: FrameInterceptor

    /// Ethernet (14) and an ARP body's target address (bytes 24 to 27), or
    /// an IPv4 header's destination (16 to 19).
    public var decisionLength: Int { 42 }

    public func claims(_ prefix: [UInt8]) -> Bool {
        guard prefix.count >= 34 else { return false }
        switch PacketBytes.u16(prefix, 12) {
        case 0x0806:
            return prefix.count >= 42 && PacketBytes.u16(prefix, 20) == 1 && Array(prefix[38..<42]) == ipv4Address
        case 0x0800:
            return prefix[14] >> 4 == 4 && Array(prefix[30..<34]) == ipv4Address
        default:
            return false
        }
    }

    public func receive(_ frame: [UInt8]) {
        statistics.withLock { $0.framesReceived += 1 }
        guard frame.count >= 14 else { return dropped() }
        let guestMAC = Array(frame[6..<12])
        switch PacketBytes.u16(frame, 12) {
        case 0x0806: answerARP(frame, guestMAC: guestMAC)
        case 0x0800: receiveIPv4(frame, guestMAC: guestMAC)
        default: dropped()
        }
    }

    public func nextFrame() -> [UInt8]? {
        if queueStart == queued.count {
            queued.removeAll(keepingCapacity: true)
            queueStart = 0
            pump()
        }
        guard queueStart < queued.count else { return nil }
        let frame = queued[queueStart]
        queueStart += 1
        statistics.withLock { $0.framesSent += 1; $0.bytesSent += frame.count }
        return frame
    }

    /// Frames waiting for the guest.
    var queuedCount: Int { queued.count - queueStart }
    var connectionCount: Int { connections.count }
    /// Answer bytes not yet acknowledged, over every connection.
    var answerBytesWaiting: Int { connections.values.map(\.outgoing.count).reduce(0, +) }

    private func dropped() { statistics.withLock { $0.framesDropped += 1 } }

    private func enqueue(_ frame: [UInt8]) {
        guard queuedCount < Self.maximumQueuedFrames else { return dropped() }
        queued.append(frame)
    }

    // MARK: ARP and IPv4

    private func answerARP(_ frame: [UInt8], guestMAC: [UInt8]) {
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, oper 1 (request).
        guard frame.count >= 42, PacketBytes.u16(frame, 14) == 1, PacketBytes.u16(frame, 16) == 0x0800,
              frame[18] == 6, frame[19] == 4, PacketBytes.u16(frame, 20) == 1 else { return dropped() }
        let senderMAC = Array(frame[22..<28]), senderIP = Array(frame[28..<32])
        var reply = senderMAC + macAddress + [0x08, 0x06]
        reply += [0, 1, 0x08, 0x00, 6, 4, 0, 2] + macAddress + ipv4Address + senderMAC + senderIP
        enqueue(reply)
    }

    private func receiveIPv4(_ frame: [UInt8], guestMAC: [UInt8]) {
        guard frame.count >= 34 else { return dropped() }
        let headerLength = Int(frame[14] & 0x0F) * 4
        let totalLength = Int(PacketBytes.u16(frame, 16))
        let fragment = PacketBytes.u16(frame, 20)
        // No fragments (MF set or an offset), and only TCP.
        guard headerLength >= 20, totalLength >= headerLength, 14 + totalLength <= frame.count,
              fragment & 0x3FFF == 0, frame[23] == 6 else { return dropped() }
        let source = Array(frame[26..<30])
        let segment = Array(frame[(14 + headerLength)..<(14 + totalLength)])
        receiveTCP(segment, from: source, guestMAC: guestMAC)
    }

    // MARK: TCP

    struct Segment {
        var sourcePort: UInt16, destinationPort: UInt16
        var sequence: UInt32, acknowledgment: UInt32
        var flags: UInt8
        var window: UInt16
        var mss: Int?
        var payload: ArraySlice<UInt8>

        static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08, ack: UInt8 = 0x10

        init?(_ bytes: [UInt8]) {
            guard bytes.count >= 20 else { return nil }
            let dataOffset = Int(bytes[12] >> 4) * 4
            guard dataOffset >= 20, dataOffset <= bytes.count else { return nil }
            sourcePort = PacketBytes.u16(bytes, 0)
            destinationPort = PacketBytes.u16(bytes, 2)
            sequence = PacketBytes.u32(bytes, 4)
            acknowledgment = PacketBytes.u32(bytes, 8)
            flags = bytes[13]
            window = PacketBytes.u16(bytes, 14)
            payload = bytes[dataOffset...]
            // Options: only MSS (kind 2, length 4) matters.
            var index = 20
            while index < dataOffset {
                let kind = bytes[index]
                if kind == 0 { break }
                if kind == 1 { index += 1; continue }
                guard index + 1 < dataOffset, bytes[index + 1] >= 2, index + Int(bytes[index + 1]) <= dataOffset else { break }
                if kind == 2, bytes[index + 1] == 4 { mss = Int(PacketBytes.u16(bytes, index + 2)) }
                index += Int(bytes[index + 1])
            }
        }

        func has(_ flag: UInt8) -> Bool { flags & flag != 0 }

        /// The sequence space the segment takes: its data, SYN and FIN.
        var length: UInt32 { UInt32(payload.count) + (has(Self.syn) ? 1 : 0) + (has(Self.fin) ? 1 : 0) }
    }

    private func receiveTCP(_ bytes: [UInt8], from address: [UInt8], guestMAC: [UInt8]) {
        guard let segment = Segment(bytes) else { return dropped() }
        if segment.has(Segment.rst) {
            if connections.removeValue(forKey: ConnectionKey(address: address, port: segment.sourcePort)) != nil {
                statistics.withLock { $0.connectionsDestroyed += 1 }
            }
            return
        }
        let key = ConnectionKey(address: address, port: segment.sourcePort)
        activity += 1
        guard segment.destinationPort == Self.port else { return reset(segment, to: address, guestMAC: guestMAC) }
        if segment.has(Segment.syn) && !segment.has(Segment.ack) {
            if let existing = connections[key], !existing.synAcknowledged, existing.peerInitial == segment.sequence {
                enqueue(synAcknowledgment(existing))  // our SYN-ACK was not seen: send it again
                return
            }
            openConnection(key, segment, guestMAC: guestMAC)
            return
        }
        guard var connection = connections[key] else { return reset(segment, to: address, guestMAC: guestMAC) }
        connection.lastActive = activity
        connection.peerWindow = Int(segment.window)
        if segment.has(Segment.ack) {
            connection.acknowledge(segment.acknowledgment, pureAck: segment.payload.isEmpty && !segment.has(Segment.fin))
            // Answers were taken: requests read but not yet answered may be answered now.
            if !connection.finQueued { connection.take([], service: service) }
        }
        guard connection.synAcknowledged else {
            connections[key] = connection
            return
        }
        if segment.sequence == connection.receiveNext {
            if !segment.payload.isEmpty && !connection.finQueued && !connection.canTake(segment.payload.count) {
                // Requests it has not read yet: this data waits in the guest until they are.
                connection.needsAcknowledgment = true
                connections[key] = connection
                return
            }
            if !segment.payload.isEmpty {
                connection.receiveNext &+= UInt32(segment.payload.count)
                connection.needsAcknowledgment = true
                if !connection.finQueued { connection.take(segment.payload, service: service) }
            }
            if segment.has(Segment.fin) {
                connection.receiveNext &+= 1
                connection.peerFinished = true
                connection.finQueued = true
                connection.needsAcknowledgment = true
            }
        } else if segment.length > 0 {
            connection.needsAcknowledgment = true  // out of order or repeated: say what we expect
        }
        if connection.isClosed {
            connections[key] = nil
            statistics.withLock { $0.connectionsDestroyed += 1 }
            if connection.needsAcknowledgment { enqueue(frame(for: connection, sequence: connection.sendNext, flags: Segment.ack)) }
            return
        }
        connections[key] = connection
    }

    private func openConnection(_ key: ConnectionKey, _ segment: Segment, guestMAC: [UInt8]) {
        if connections[key] == nil, connections.count >= Self.maximumConnections,
           let oldest = connections.min(by: { $0.value.lastActive < $1.value.lastActive }) {
            enqueue(frame(for: oldest.value, sequence: oldest.value.sendNext, flags: Segment.rst))
            connections[oldest.key] = nil
            statistics.withLock { $0.connectionsDestroyed += 1 }
        }
        var initial: UInt32 = 0
        withUnsafeMutableBytes(of: &initial) { _ = HostRandom.fill($0) }
        let connection = TCPConnection(
            guestMAC: guestMAC, guestAddress: key.address, guestPort: key.port, ourInitial: initial,
            peerInitial: segment.sequence, peerWindow: Int(segment.window), peerMSS: max(segment.mss ?? Self.defaultPeerMSS, Self.minimumPeerMSS),
            lastActive: activity)
        connections[key] = connection
        statistics.withLock { $0.connectionsCreated += 1 }
        enqueue(synAcknowledgment(connection))
    }

    private func synAcknowledgment(_ connection: TCPConnection) -> [UInt8] {
        var mss: [UInt8] = [2, 4]
        PacketBytes.append(UInt16(Self.ourMSS), to: &mss)
        return frame(for: connection, sequence: connection.ourInitial, flags: Segment.syn | Segment.ack, options: mss)
    }

    /// RFC 9293's reset for a segment that belongs to no connection.
    private func reset(_ segment: Segment, to address: [UInt8], guestMAC: [UInt8]) {
        var stray = TCPConnection(guestMAC: guestMAC, guestAddress: address, guestPort: segment.sourcePort, ourInitial: 0,
                                  peerInitial: segment.sequence, peerWindow: 0, peerMSS: Self.defaultPeerMSS, lastActive: 0)
        stray.localPort = segment.destinationPort
        if segment.has(Segment.ack) {
            enqueue(frame(for: stray, sequence: segment.acknowledgment, flags: Segment.rst, acknowledging: false))
        } else {
            stray.receiveNext = segment.sequence &+ segment.length
            enqueue(frame(for: stray, sequence: 0, flags: Segment.rst | Segment.ack))
        }
    }

    /// Makes frames for connections with data to send or something to
    /// acknowledge, until the queue holds `maximumQueuedFrames`.
    private func pump() {
        for key in connections.keys.sorted(by: { connections[$0]!.lastActive < connections[$1]!.lastActive }) {
            guard var connection = connections[key] else { continue }
            var sentAny = false
            while queuedCount < Self.maximumQueuedFrames, let (sequence, payload, fin) = connection.nextSegment(ourMSS: Self.ourMSS) {
                enqueue(frame(for: connection, sequence: sequence, flags: Segment.ack | (fin ? Segment.fin : Segment.psh), payload: payload))
                sentAny = true
            }
            if connection.needsAcknowledgment && !sentAny && queuedCount < Self.maximumQueuedFrames {
                enqueue(frame(for: connection, sequence: connection.sendNext, flags: Segment.ack))
            }
            if sentAny || connection.needsAcknowledgment { connection.needsAcknowledgment = false }
            connections[key] = connection
        }
    }

    /// An Ethernet frame with one IPv4 TCP segment to the connection's peer.
    private func frame(for connection: TCPConnection, sequence: UInt32, flags: UInt8, options: [UInt8] = [],
                       payload: ArraySlice<UInt8> = [], acknowledging: Bool = true) -> [UInt8] {
        var tcp: [UInt8] = []
        tcp.reserveCapacity(20 + options.count + payload.count)
        PacketBytes.append(connection.localPort, to: &tcp)
        PacketBytes.append(connection.guestPort, to: &tcp)
        PacketBytes.append(sequence, to: &tcp)
        PacketBytes.append(acknowledging ? connection.receiveNext : 0, to: &tcp)
        tcp.append(UInt8((20 + options.count) / 4) << 4)
        tcp.append(flags)
        PacketBytes.append(Self.ourWindow, to: &tcp)
        tcp += [0, 0, 0, 0]  // checksum, urgent pointer
        tcp += options
        tcp += payload
        // The pseudo-header: addresses, protocol 6, TCP length.
        var pseudo: UInt32 = 6 + UInt32(tcp.count)
        for index in stride(from: 0, to: 4, by: 2) {
            pseudo += UInt32(ipv4Address[index]) << 8 | UInt32(ipv4Address[index + 1])
            pseudo += UInt32(connection.guestAddress[index]) << 8 | UInt32(connection.guestAddress[index + 1])
        }
        PacketBytes.store(PacketBytes.checksum(tcp[...], initial: pseudo), in: &tcp, at: 16)

        identification &+= 1
        var ip: [UInt8] = [0x45, 0]
        PacketBytes.append(UInt16(20 + tcp.count), to: &ip)
        PacketBytes.append(identification, to: &ip)
        ip += [0x40, 0, 64, 6, 0, 0]  // don't fragment, TTL 64, TCP, checksum
        ip += ipv4Address + connection.guestAddress
        PacketBytes.store(PacketBytes.checksum(ip[...]), in: &ip, at: 10)
        return connection.guestMAC + macAddress + [0x08, 0x00] + ip + tcp
    }
}
