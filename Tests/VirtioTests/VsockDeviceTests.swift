import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import Virtio

/// The driver's side of virtio-vsock: receive buffers posted, packets sent on
/// the transmit queue, packets read back from the receive queue.
final class VsockTestGuest {
    static let cid: UInt64 = 3
    let device: VsockDevice
    let driver: TestDriver
    let path: String
    private var receiveBuffers: [UInt32: GuestAddress] = [:]
    private var nextReceiveHead: UInt16 = 0
    private var nextTransmitHead: UInt16 = 0

    init(bufferCount: Int = 8) throws {
        path = "/tmp/kestrel-vsock-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        device = try VsockDevice(guestCID: Self.cid, udsPath: path)
        driver = try TestDriver(device)
        #expect(driver.initialise(queues: 3).contains(.driverOK))
        for _ in 0..<bufferCount { postReceiveBuffer() }
        driver.notify(0)
    }

    deinit { unlink(path) }

    func postReceiveBuffer() {
        let address = driver.allocate(4096)
        let head = nextReceiveHead % driver.queueSize
        receiveBuffers[UInt32(head)] = address
        driver.submit([.init(address: address, length: 4096, writable: true)], queue: 0, first: head)
        nextReceiveHead &+= 1
    }

    func send(_ operation: VsockHeader.Operation, from port: UInt32, to hostPort: UInt32, payload: [UInt8] = [], flags: UInt32 = 0,
              bufferAllocation: UInt32 = 64 << 10, forwardCount: UInt32 = 0, sourceCID: UInt64 = VsockTestGuest.cid) {
        let header = VsockHeader(sourceCID: sourceCID, destinationCID: 2, sourcePort: port, destinationPort: hostPort,
                                 length: UInt32(payload.count), operation: operation, flags: flags,
                                 bufferAllocation: bufferAllocation, forwardCount: forwardCount)
        var buffers: [TestDriver.Buffer] = [.init(address: driver.allocate(44, filledWith: header.bytes), length: 44, writable: false)]
        if !payload.isEmpty { buffers.append(.init(address: driver.allocate(payload.count, filledWith: payload), length: UInt32(payload.count), writable: false)) }
        let head = nextTransmitHead % (driver.queueSize / 2) * 2
        driver.submit(buffers, queue: 1, first: head)
        nextTransmitHead &+= 1
        driver.notify(1)
    }

    /// The next packet the device put in a receive buffer, with its payload; a new buffer replaces it.
    func receive() -> (header: VsockHeader, payload: [UInt8])? {
        guard let used = driver.waitForUsed(queue: 0), let address = receiveBuffers[used.head],
              let header = VsockHeader(driver.read(address, 44)) else { return nil }
        let payload = driver.read(address + 44, Int(used.length) - 44)
        postReceiveBuffer()
        driver.notify(0)
        return (header, payload)
    }
}

func readAll(_ fd: Int32, count: Int, seconds: Int32 = 5) -> [UInt8] {
    var bytes: [UInt8] = []
    while bytes.count < count {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, seconds * 1000) == 1 else { break }
        var buffer = [UInt8](repeating: 0, count: count - bytes.count)
        let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if got <= 0 { break }
        bytes += buffer.prefix(got)
    }
    return bytes
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

@Suite(.timeLimit(.minutes(5))) struct VsockDeviceTests {
    @Test func theConfigurationGivesTheGuestCID() throws {
        let guest = try VsockTestGuest()
        var cid: UInt64 = 0
        withUnsafeMutableBytes(of: &cid) { guest.driver.transport.read(offset: 0x100, into: $0) }
        #expect(cid == 3)
        #expect(throws: SystemCallError.self) { try VsockDevice(guestCID: 2, udsPath: "/tmp/x") }
        #expect(throws: SystemCallError.self) { try VsockDevice(guestCID: 3, udsPath: "/nonexistent/dir/v.sock") }
    }

    @Test func aGuestConnectionReachesTheListenerAtPathUnderscorePort() throws {
        let guest = try VsockTestGuest()
        let listener = try UnixSocket.listen(at: guest.path + "_5000")
        defer { close(listener); unlink(guest.path + "_5000") }
        guest.send(.request, from: 1234, to: 5000)
        let response = try #require(guest.receive())
        #expect(response.header.knownOperation == .response)
        #expect(response.header.sourcePort == 5000 && response.header.destinationPort == 1234 && response.header.destinationCID == 3)
        #expect(response.header.bufferAllocation == VsockDevice.bufferAllocation)
        var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        #expect(poll(&entry, 1, 5000) == 1)
        let accepted = try #require(UnixSocket.accept(listener))
        defer { close(accepted) }

        guest.send(.readWrite, from: 1234, to: 5000, payload: Array("hello".utf8))
        #expect(readAll(accepted, count: 5) == Array("hello".utf8))
        writeAll(accepted, Array("world".utf8))
        let data = try #require(guest.receive())
        #expect(data.header.knownOperation == .readWrite && data.payload == Array("world".utf8))

        guest.send(.shutdown, from: 1234, to: 5000, flags: 3)
        let reset = try #require(guest.receive())
        #expect(reset.header.knownOperation == .reset)
        #expect(readAll(accepted, count: 1).isEmpty, "the host socket is closed")
        #expect(guest.device.connectionCount == 0)
    }

    @Test func aGuestConnectionToAPortNobodyListensOnIsReset() throws {
        let guest = try VsockTestGuest()
        guest.send(.request, from: 1234, to: 6000)
        #expect(try #require(guest.receive()).header.knownOperation == .reset)
        guest.send(.request, from: 1234, to: 6000, sourceCID: 9)  // spoofed source
        #expect(try #require(guest.receive()).header.knownOperation == .reset)
    }

    @Test func aHostConnectionSaysConnectAndHearsOK() throws {
        let guest = try VsockTestGuest()
        let host = try UnixSocket.connect(to: guest.path)
        defer { close(host) }
        writeAll(host, Array("CONNECT 52\n".utf8))
        let request = try #require(guest.receive())
        #expect(request.header.knownOperation == .request && request.header.destinationPort == 52 && request.header.sourceCID == 2)
        let hostPort = request.header.sourcePort
        guest.send(.response, from: 52, to: hostPort)
        #expect(String(decoding: readAll(host, count: "OK \(hostPort)\n".utf8.count), as: UTF8.self) == "OK \(hostPort)\n")
        writeAll(host, Array("ping".utf8))
        let data = try #require(guest.receive())
        #expect(data.payload == Array("ping".utf8) && data.header.destinationPort == 52)
        guest.send(.readWrite, from: 52, to: hostPort, payload: Array("pong".utf8))
        #expect(readAll(host, count: 4) == Array("pong".utf8))
        // The host side stops sending: the guest hears a half shutdown and may
        // still send; then it resets.
        shutdown(host, Int32(SHUT_WR))
        let shut = try #require(guest.receive())
        #expect(shut.header.knownOperation == .shutdown && shut.header.flags == VsockHeader.shutdownSend)
        guest.send(.readWrite, from: 52, to: hostPort, payload: Array("late".utf8))
        #expect(readAll(host, count: 4) == Array("late".utf8), "a half-closed connection still carries the guest's bytes")
        guest.send(.reset, from: 52, to: hostPort)
        usleep(100_000)
        #expect(guest.device.connectionCount == 0)
    }

    @Test func aMalformedConnectLineClosesTheSocket() throws {
        let guest = try VsockTestGuest()
        let host = try UnixSocket.connect(to: guest.path)
        defer { close(host) }
        writeAll(host, Array("HELLO 52\n".utf8))
        #expect(readAll(host, count: 1).isEmpty)
        #expect(VsockHandshake.port(fromLine: Array("CONNECT 52".utf8)) == 52)
        #expect(VsockHandshake.port(fromLine: Array("CONNECT 99999999999".utf8)) == nil)
        #expect(VsockHandshake.port(fromLine: Array("CONNECT -1".utf8)) == nil)
    }

    @Test func dataToTheGuestStaysWithinItsCredit() throws {
        let guest = try VsockTestGuest()
        let listener = try UnixSocket.listen(at: guest.path + "_7000")
        defer { close(listener); unlink(guest.path + "_7000") }
        guest.send(.request, from: 1, to: 7000, bufferAllocation: 8)
        #expect(try #require(guest.receive()).header.knownOperation == .response)
        var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        _ = poll(&entry, 1, 5000)
        let accepted = try #require(UnixSocket.accept(listener))
        defer { close(accepted) }
        writeAll(accepted, Array("0123456789abcdef".utf8))
        let first = try #require(guest.receive())
        #expect(first.payload == Array("01234567".utf8), "only the guest's 8 bytes of credit")
        #expect(guest.driver.waitForUsed(queue: 0, seconds: 1) == nil, "nothing more until the guest frees space")
        guest.send(.creditUpdate, from: 1, to: 7000, bufferAllocation: 8, forwardCount: 8)
        let second = try #require(guest.receive())
        #expect(second.payload == Array("89abcdef".utf8))
    }
}
