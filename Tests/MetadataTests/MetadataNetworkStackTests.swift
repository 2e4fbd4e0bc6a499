import Testing
import WireFormats
@testable import Metadata

/// The guest's side of the wire, by hand: Ethernet, ARP, IPv4 and TCP
/// frames built and read the way a guest kernel would.
struct GuestWire {
    static let mac: [UInt8] = [0x06, 0x00, 0xAC, 0x10, 0x00, 0x02]
    static let address: [UInt8] = [169, 254, 1, 2]
    let stack: MetadataNetworkStack

    struct Received {
        var sequence: UInt32, acknowledgment: UInt32, flags: UInt8, window: UInt16, payload: [UInt8], options: [UInt8]
        var frame: [UInt8]
    }

    func arpRequest(for target: [UInt8]) -> [UInt8] {
        [UInt8](repeating: 0xFF, count: 6) + Self.mac + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1] + Self.mac + Self.address
            + [UInt8](repeating: 0, count: 6) + target
    }

    func segment(port: UInt16, destinationPort: UInt16 = 80, sequence: UInt32, acknowledgment: UInt32, flags: UInt8,
                 payload: [UInt8] = [], window: UInt16 = 65535, options: [UInt8] = []) -> [UInt8] {
        var tcp: [UInt8] = []
        PacketBytes.append(port, to: &tcp)
        PacketBytes.append(destinationPort, to: &tcp)
        PacketBytes.append(sequence, to: &tcp)
        PacketBytes.append(acknowledgment, to: &tcp)
        tcp += [UInt8((20 + options.count) / 4) << 4, flags]
        PacketBytes.append(window, to: &tcp)
        tcp += [0xAB, 0xCD, 0, 0] + options + payload  // a partial (offloaded) checksum: not checked
        var ip: [UInt8] = [0x45, 0]
        PacketBytes.append(UInt16(20 + tcp.count), to: &ip)
        ip += [0, 1, 0x40, 0, 64, 6, 0, 0] + Self.address + stack.ipv4Address
        return MetadataConfiguration.macAddress + Self.mac + [0x08, 0x00] + ip + tcp
    }

    /// Every frame the stack has for the guest now, each checked: addressed
    /// to the guest, with valid IPv4 and TCP checksums.
    func drain() -> [Received] {
        var frames: [Received] = []
        while let frame = stack.nextFrame() {
            #expect(Array(frame[0..<6]) == Self.mac && Array(frame[6..<12]) == MetadataConfiguration.macAddress)
            guard PacketBytes.u16(frame, 12) == 0x0800 else { continue }
            let ip = Array(frame[14..<34])
            #expect(PacketBytes.checksum(ip[...]) == 0, "the IPv4 header checksum verifies")
            #expect(Array(ip[16..<20]) == Self.address)
            let tcp = Array(frame[34...])
            var pseudo: UInt32 = 6 + UInt32(tcp.count)
            for index in stride(from: 12, to: 20, by: 2) { pseudo += UInt32(ip[index]) << 8 | UInt32(ip[index + 1]) }
            #expect(PacketBytes.checksum(tcp[...], initial: pseudo) == 0, "the TCP checksum verifies")
            let offset = Int(tcp[12] >> 4) * 4
            frames.append(Received(sequence: PacketBytes.u32(tcp, 4), acknowledgment: PacketBytes.u32(tcp, 8), flags: tcp[13],
                                   window: PacketBytes.u16(tcp, 14), payload: Array(tcp[offset...]), options: Array(tcp[20..<offset]), frame: frame))
        }
        return frames
    }
}

@Suite struct MetadataNetworkStackTests {
    typealias Flags = MetadataNetworkStack.Segment
    let service: MetadataService
    let stack: MetadataNetworkStack
    let wire: GuestWire

    init() throws {
        service = MetadataService()
        try service.put(.object(["latest": .object(["meta-data": .object(["id": .string(String(repeating: "v", count: 3000))])])]))
        stack = MetadataNetworkStack(service: service)
        wire = GuestWire(stack: stack)
    }

    @Test func onlyARPRequestsAndIPv4ForTheAddressAreClaimed() {
        let arp = wire.arpRequest(for: [169, 254, 169, 254])
        #expect(stack.claims(Array(arp.prefix(stack.decisionLength))))
        #expect(!stack.claims(wire.arpRequest(for: [169, 254, 1, 1])))
        #expect(stack.claims(Array(wire.segment(port: 1, sequence: 0, acknowledgment: 0, flags: Flags.syn).prefix(42))))
        var elsewhere = wire.segment(port: 1, sequence: 0, acknowledgment: 0, flags: Flags.syn)
        elsewhere[33] = 1
        #expect(!stack.claims(elsewhere))
        #expect(!stack.claims(Array(arp.prefix(20))))
        stack.receive(arp)
        let reply = stack.nextFrame()
        #expect(reply.map { Array($0[12..<14]) } == [0x08, 0x06])
        #expect(reply.map { Array($0[20..<22] + $0[22..<28] + $0[28..<32]) } == [0, 2] + MetadataConfiguration.macAddress + [169, 254, 169, 254])
        #expect(reply.map { Array($0[32..<42]) } == GuestWire.mac + GuestWire.address)
    }

    /// A whole exchange: handshake, a GET whose answer spans several
    /// segments of the guest's MSS within its window, then both FINs.
    @Test func aGetIsAnsweredOverTCPWithinTheGuestsWindowAndMSS() throws {
        stack.receive(wire.segment(port: 40000, sequence: 1000, acknowledgment: 0, flags: Flags.syn, window: 2000, options: [2, 4, 0x02, 0x00]))
        let synAck = try #require(wire.drain().first)
        #expect(synAck.flags == Flags.syn | Flags.ack && synAck.acknowledgment == 1001 && synAck.options == [2, 4, 0x05, 0xB4])
        let ourStart = synAck.sequence &+ 1
        let request = Array("GET /latest/meta-data/id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".utf8)
        stack.receive(wire.segment(port: 40000, sequence: 1001, acknowledgment: ourStart, flags: Flags.ack | Flags.psh, payload: request, window: 2000))
        // MSS 512 within a 2000-byte window: three full segments and part of a fourth.
        var segments = wire.drain()
        #expect(segments.map(\.payload.count) == [512, 512, 512, 464])
        #expect(segments.allSatisfy { $0.acknowledgment == 1001 &+ UInt32(request.count) })
        var answer = segments.flatMap(\.payload)
        var acknowledged = ourStart &+ 2000
        while answer.count < 3000 {
            stack.receive(wire.segment(port: 40000, sequence: 1001 &+ UInt32(request.count), acknowledgment: acknowledged, flags: Flags.ack, window: 2000))
            segments = wire.drain()
            #expect(!segments.isEmpty)
            answer += segments.flatMap(\.payload)
            acknowledged = acknowledged &+ UInt32(segments.map(\.payload.count).reduce(0, +))
        }
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.hasSuffix(String(repeating: "v", count: 3000)))
        #expect(text.contains("Content-Type: text/plain\r\n") && text.contains("Connection: keep-alive\r\n"))
        // The guest closes: its FIN is acknowledged and ours follows.
        let guestNext = 1001 &+ UInt32(request.count)
        stack.receive(wire.segment(port: 40000, sequence: guestNext, acknowledgment: acknowledged, flags: Flags.ack | Flags.fin))
        let closing = wire.drain()
        #expect(closing.last?.flags == Flags.ack | Flags.fin && closing.last?.acknowledgment == guestNext &+ 1)
        #expect(stack.connectionCount == 1)
        stack.receive(wire.segment(port: 40000, sequence: guestNext &+ 1, acknowledgment: acknowledged &+ 1, flags: Flags.ack))
        #expect(stack.connectionCount == 0)
        #expect(stack.counts.connectionsCreated == 1 && stack.counts.connectionsDestroyed == 1)
    }

    @Test func connectionCloseEndsWithOurFINAndStraySegmentsAreReset() throws {
        stack.receive(wire.segment(port: 40001, sequence: 7, acknowledgment: 0, flags: Flags.syn))
        let ours = try #require(wire.drain().first).sequence &+ 1
        // The handshake's ACK carries the request.
        let request = Array("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 30\r\nConnection: close\r\n\r\n".utf8)
        stack.receive(wire.segment(port: 40001, sequence: 8, acknowledgment: ours, flags: Flags.ack, payload: request))
        let frames = wire.drain()
        #expect(frames.last?.flags == Flags.ack | Flags.fin)
        let text = String(decoding: frames.flatMap(\.payload), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.contains("Connection: close\r\n") && text.contains("X-metadata-token-ttl-seconds: 30\r\n"))
        // A segment for no connection gets a reset at its acknowledgment number.
        stack.receive(wire.segment(port: 40999, sequence: 5, acknowledgment: 77, flags: Flags.ack, payload: [1]))
        let reset = try #require(wire.drain().first)
        #expect(reset.flags == Flags.rst && reset.sequence == 77)
        // Another port than 80: reset, acknowledging the SYN.
        stack.receive(wire.segment(port: 40002, destinationPort: 8080, sequence: 9, acknowledgment: 0, flags: Flags.syn))
        let refused = try #require(wire.drain().first)
        #expect(refused.flags == Flags.rst | Flags.ack && refused.acknowledgment == 10)
    }

    @Test func aRepeatedSYNGetsTheSameAnswerAndTheTableIsBounded() throws {
        stack.receive(wire.segment(port: 1, sequence: 100, acknowledgment: 0, flags: Flags.syn))
        let first = try #require(wire.drain().first)
        stack.receive(wire.segment(port: 1, sequence: 100, acknowledgment: 0, flags: Flags.syn))
        #expect(wire.drain().first?.sequence == first.sequence)
        for port in 2...UInt16(MetadataNetworkStack.maximumConnections + 5) {
            stack.receive(wire.segment(port: port, sequence: 1, acknowledgment: 0, flags: Flags.syn))
        }
        #expect(stack.connectionCount == MetadataNetworkStack.maximumConnections)
        let frames = wire.drain()
        #expect(frames.filter { $0.flags == Flags.rst }.count == 5, "the least recently active connections are reset")
    }

    @Test func malformedFramesAreDroppedWithoutAnAnswer() {
        let good = wire.segment(port: 3, sequence: 1, acknowledgment: 0, flags: Flags.syn)
        for cut in [0, 13, 20, 33, 40, 53] { stack.receive(Array(good.prefix(cut))) }
        var badOffset = good
        badOffset[34 + 12] = 0xF0  // a 60-byte TCP header in a 20-byte segment
        stack.receive(badOffset)
        var fragment = good
        fragment[20] = 0x20  // more fragments
        stack.receive(fragment)
        var udp = good
        udp[23] = 17
        stack.receive(udp)
        #expect(stack.nextFrame() == nil && stack.connectionCount == 0)
    }

    /// A third duplicate ACK sends the unacknowledged data again.
    @Test func aThirdDuplicateAcknowledgmentResends() throws {
        stack.receive(wire.segment(port: 9, sequence: 0, acknowledgment: 0, flags: Flags.syn, window: 1000))
        let ours = try #require(wire.drain().first).sequence &+ 1
        let request = Array("GET /latest/meta-data/id HTTP/1.1\r\n\r\n".utf8)
        let next = UInt32(1 + request.count)
        stack.receive(wire.segment(port: 9, sequence: 1, acknowledgment: ours, flags: Flags.ack, payload: request, window: 1000))
        let sent = wire.drain()
        #expect(sent.map(\.payload.count).reduce(0, +) == 1000)
        for _ in 0..<2 { stack.receive(wire.segment(port: 9, sequence: next, acknowledgment: ours, flags: Flags.ack, window: 1000)) }
        #expect(wire.drain().isEmpty)
        stack.receive(wire.segment(port: 9, sequence: next, acknowledgment: ours, flags: Flags.ack, window: 1000))
        let again = wire.drain()
        #expect(again.first?.sequence == ours && again.map(\.payload.count).reduce(0, +) == 1000)
    }

    /// A guest that pipelines requests and reads no answer costs a bounded
    /// amount: answers stop at the limit, and unread requests wait in the guest.
    @Test func pipelinedRequestsWithoutAcknowledgmentsAreBounded() throws {
        stack.receive(wire.segment(port: 77, sequence: 0, acknowledgment: 0, flags: Flags.syn, window: 0))
        let ours = try #require(wire.drain().first).sequence &+ 1
        let request = Array("GET /latest/meta-data/id HTTP/1.1\r\n\r\n".utf8)
        var sequence: UInt32 = 1
        for _ in 0..<500 {
            let burst = Array([[UInt8]](repeating: request, count: 30).joined())
            stack.receive(wire.segment(port: 77, sequence: sequence, acknowledgment: ours, flags: Flags.ack, payload: burst, window: 0))
            sequence &+= UInt32(burst.count)
            _ = wire.drain()
        }
        #expect(stack.answerBytesWaiting < TCPConnection.outgoingLimit + 4096, "\(stack.answerBytesWaiting) bytes of answers wait")
    }

    /// An MSS of 0 in the SYN counts as the minimum: the answer still flows.
    @Test func aZeroMSSStillMovesTheAnswer() throws {
        stack.receive(wire.segment(port: 78, sequence: 0, acknowledgment: 0, flags: Flags.syn, options: [2, 4, 0, 0]))
        let ours = try #require(wire.drain().first).sequence &+ 1
        let request = Array("GET /latest/meta-data/id HTTP/1.1\r\n\r\n".utf8)
        stack.receive(wire.segment(port: 78, sequence: 1, acknowledgment: ours, flags: Flags.ack, payload: request))
        let segments = wire.drain()
        #expect(!segments.isEmpty && segments.allSatisfy { !$0.payload.isEmpty } && segments.count <= 64, "\(segments.map(\.payload.count))")
    }
}
