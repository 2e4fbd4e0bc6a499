import WireFormats

/// One guest connection to the MMDS: sequence state for both directions,
/// the HTTP requests arriving, and the answers going out.
///
/// Our sequence space: `ourInitial` is the SYN; `outgoing[0]` is at
/// `dataStart`; the first `sentCount` bytes of `outgoing` are sent and not
/// yet acknowledged; a FIN follows the last byte once `finQueued`.
struct TCPConnection {
    var guestMAC: [UInt8]
    var guestAddress: [UInt8]
    var guestPort: UInt16
    var localPort: UInt16 = MetadataNetworkStack.port
    var ourInitial: UInt32
    var peerInitial: UInt32
    var peerWindow: Int
    var peerMSS: Int
    var lastActive: UInt64

    var receiveNext: UInt32
    var synAcknowledged = false
    var dataStart: UInt32
    var outgoing: [UInt8] = []
    var sentCount = 0
    var finQueued = false, finSent = false, finAcknowledged = false, peerFinished = false
    var needsAcknowledgment = false
    var duplicateAcknowledgments = 0
    var reader = HTTPRequestReader(maximumBodyBytes: 4096)

    init(guestMAC: [UInt8], guestAddress: [UInt8], guestPort: UInt16, ourInitial: UInt32, peerInitial: UInt32,
         peerWindow: Int, peerMSS: Int, lastActive: UInt64) {
        self.guestMAC = guestMAC
        self.guestAddress = guestAddress
        self.guestPort = guestPort
        self.ourInitial = ourInitial
        self.peerInitial = peerInitial
        self.peerWindow = peerWindow
        self.peerMSS = peerMSS
        self.lastActive = lastActive
        receiveNext = peerInitial &+ 1
        dataStart = ourInitial &+ 1
    }

    /// The next sequence number we would send.
    var sendNext: UInt32 {
        guard synAcknowledged else { return ourInitial &+ 1 }
        return dataStart &+ UInt32(sentCount) &+ (finSent ? 1 : 0)
    }

    /// Both FINs sent and ours acknowledged.
    var isClosed: Bool { finAcknowledged && peerFinished }

    /// The peer acknowledged everything before `number`.
    mutating func acknowledge(_ number: UInt32, pureAck: Bool) {
        if !synAcknowledged {
            if number == ourInitial &+ 1 { synAcknowledged = true }
            return
        }
        // How far past dataStart the acknowledgment reaches, as a signed distance.
        let advance = Int(Int32(bitPattern: number &- dataStart))
        let finPosition = outgoing.count + 1
        if advance > 0 && advance <= sentCount {
            outgoing.removeFirst(advance)
            sentCount -= advance
            dataStart = number
            duplicateAcknowledgments = 0
        } else if finSent && sentCount == outgoing.count && advance == finPosition {
            dataStart &+= UInt32(outgoing.count)
            outgoing.removeAll()
            sentCount = 0
            finAcknowledged = true
        } else if advance == 0 && pureAck && sentCount > 0 {
            // A third duplicate: something we sent was lost; send again from here.
            duplicateAcknowledgments += 1
            if duplicateAcknowledgments >= 3 {
                sentCount = 0
                finSent = false
                duplicateAcknowledgments = 0
            }
        }
    }

    /// The most answer bytes waiting for the peer before no further request
    /// is read, and the most request bytes held unread: a guest that pipelines
    /// requests and never reads the answers costs Kestrel no more than these.
    static let outgoingLimit = 64 << 10, unreadLimit = 16 << 10

    /// Whether `count` more bytes of data can be taken now; if not, the
    /// segment is dropped unacknowledged and the peer sends it again later.
    func canTake(_ count: Int) -> Bool { reader.bufferedCount + count <= Self.unreadLimit }

    /// Data from the peer, in order: the HTTP requests it completes are
    /// answered into `outgoing`, while less than `outgoingLimit` waits there
    /// (the rest is read as the peer acknowledges). A request that closes, or
    /// one that cannot be read, ends the connection after its answer.
    mutating func take(_ bytes: ArraySlice<UInt8>, service: MetadataService) {
        reader.append(bytes)
        while !finQueued && outgoing.count < Self.outgoingLimit {
            do {
                guard let event = try reader.next() else { return }
                switch event {
                case .continueExpected:
                    outgoing += Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
                case .request(let request):
                    let closing = !request.keepsConnection
                    outgoing += service.respond(to: request).serialized(closing: closing)
                    if closing { finQueued = true }
                }
            } catch {
                let answer = MetadataResponse(status: error.status, contentType: "text/plain", body: Array(error.message.utf8))
                outgoing += answer.serialized(closing: true)
                finQueued = true
            }
        }
    }

    /// The next segment to send (its sequence number, payload and whether it
    /// is the FIN), within the peer's window and MSS; nil when there is none.
    mutating func nextSegment(ourMSS: Int) -> (UInt32, ArraySlice<UInt8>, Bool)? {
        guard synAcknowledged else { return nil }
        let unsent = outgoing.count - sentCount
        let room = peerWindow - sentCount
        if unsent > 0 && room > 0 {
            let count = min(unsent, room, min(peerMSS, ourMSS))
            let sequence = dataStart &+ UInt32(sentCount)
            let payload = outgoing[sentCount..<(sentCount + count)]
            sentCount += count
            return (sequence, payload, false)
        }
        if unsent == 0 && finQueued && !finSent {
            finSent = true
            return (dataStart &+ UInt32(outgoing.count), [], true)
        }
        return nil
    }
}
