import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import Virtio

/// A datagram socket pair in place of a tap: one frame (with its 12-byte
/// virtio-net header) per datagram, like a tap with IFF_VNET_HDR.
final class SocketPairEndpoint: PacketEndpoint {
    let fileDescriptor: Int32
    let peer: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        try SystemCallError.check(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &fds), "socketpair")
        fileDescriptor = fds[0]
        peer = fds[1]
        try UnixSocket.setNonBlocking(fileDescriptor)
    }

    deinit { close(fileDescriptor); close(peer) }

    func acceptOffloads(guestFeatures: UInt64) throws {}

    func send(_ frame: [UInt8]) { _ = frame.withUnsafeBytes { Glibc.send(peer, $0.baseAddress, $0.count, 0) } }

    /// The next frame the device sent, waiting up to 5 s.
    func receive() -> [UInt8]? {
        var pollEntry = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        guard poll(&pollEntry, 1, 5000) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 70000)
        let count = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
        return count >= 0 ? Array(buffer.prefix(count)) : nil
    }
}

@Suite(.timeLimit(.minutes(5))) struct NetDeviceTests {
    static let mac: [UInt8] = [0x06, 0x00, 0xAC, 0x10, 0x00, 0x02]

    func setUp() throws -> (SocketPairEndpoint, NetDevice, TestDriver) {
        let endpoint = try SocketPairEndpoint()
        let device = try NetDevice(endpoint: endpoint, mac: Self.mac)
        let driver = try TestDriver(device)
        #expect(driver.initialise(queues: 2).contains(.driverOK))
        return (endpoint, device, driver)
    }

    func frame(_ size: Int, seed: UInt8) -> [UInt8] {
        [UInt8](repeating: 0, count: NetDevice.headerSize) + (0..<size).map { UInt8(truncatingIfNeeded: Int(seed) &+ $0) }
    }

    /// Firecracker's `mtu`: VIRTIO_NET_F_MTU offered, and the MTU at offset
    /// 10 of the configuration; without one, neither.
    @Test func anMTUIsAdvertisedOnlyWhenConfigured() throws {
        let endpoint = try SocketPairEndpoint()
        let driver = try TestDriver(try NetDevice(endpoint: endpoint, mac: Self.mac, mtu: 1400))
        #expect(driver.offeredFeatures & NetDevice.Feature.mtu != 0)
        #expect(driver.initialise(queues: 2).contains(.driverOK))
        var bytes = [UInt8](repeating: 0xFF, count: 12)
        bytes.withUnsafeMutableBytes { driver.transport.read(offset: 0x100, into: $0) }
        #expect(bytes == Self.mac + [1, 0, 1, 0, 0x78, 0x05])
        let (_, _, plain) = try setUp()
        #expect(plain.offeredFeatures & NetDevice.Feature.mtu == 0)
    }

    @Test func configurationHasTheMACAndALinkThatIsUp() throws {
        let (_, _, driver) = try setUp()
        var bytes = [UInt8](repeating: 0xFF, count: 8)
        bytes.withUnsafeMutableBytes { driver.transport.read(offset: 0x100, into: $0) }
        #expect(bytes == Self.mac + [1, 0])
        let features = driver.offeredFeatures
        #expect(features & NetDevice.Feature.mac != 0 && features & NetDevice.Feature.status != 0)
        #expect(features & NetDevice.Feature.hostTSO4 != 0 && features & NetDevice.Feature.guestChecksum != 0)
        #expect(NetDevice.parseMAC("06:00:ac:10:00:02") == Self.mac)
        #expect(NetDevice.parseMAC("06:00:ac:10:00") == nil && NetDevice.parseMAC("zz:00:ac:10:00:02") == nil)
        let random = NetDevice.randomMAC()
        #expect(random[0] & 0x03 == 0x02, "locally administered unicast")
    }

    @Test func transmittedFramesReachTheEndpointWhole() throws {
        let (endpoint, device, driver) = try setUp()
        let sent = frame(1500, seed: 7)
        let header = driver.allocate(12, filledWith: Array(sent.prefix(12)))
        let body = driver.allocate(1500, filledWith: Array(sent.dropFirst(12)))
        driver.submit([.init(address: header, length: 12, writable: false), .init(address: body, length: 1500, writable: false)], queue: 1)
        driver.notify(1)
        #expect(endpoint.receive() == sent)
        let used = try #require(driver.waitForUsed(queue: 1))
        #expect(used.head == 0 && used.length == 0)
        #expect(device.statistics.sentFrames == 1 && device.statistics.sentBytes == 1500)
    }

    @Test func receivedFramesFillBuffersAndWaitForThem() throws {
        let (endpoint, device, driver) = try setUp()
        // A frame before any buffer: it waits in the endpoint.
        let first = frame(64, seed: 1)
        endpoint.send(first)
        usleep(50_000)
        #expect(driver.waitForUsed(queue: 0, seconds: 0) == nil)
        let buffer = driver.allocate(2048)
        driver.submit([.init(address: buffer, length: 2048, writable: true)], queue: 0, first: 0)
        driver.notify(0)
        let used = try #require(driver.waitForUsed(queue: 0))
        #expect(used.length == UInt32(first.count))
        var expected = first
        expected[10] = 1  // num_buffers
        #expect(driver.read(buffer, first.count) == expected)
        // With a buffer posted, a frame goes straight in.
        let second = driver.allocate(2048)
        driver.submit([.init(address: second, length: 2048, writable: true)], queue: 0, first: 1)
        driver.notify(0)
        endpoint.send(frame(100, seed: 9))
        let next = try #require(driver.waitForUsed(queue: 0))
        #expect(next.head == 1 && next.length == 112)
        #expect(device.statistics.receivedFrames == 2)
    }

    @Test func aReceiveBufferSmallerThanTheHeaderNeedsReset() throws {
        let (endpoint, _, driver) = try setUp()
        driver.submit([.init(address: driver.allocate(8), length: 8, writable: true)], queue: 0)
        driver.notify(0)
        endpoint.send(frame(10, seed: 0))
        #expect(driver.waitForStatus(.needsReset))
        #expect(driver.logLines.first?.contains("less than the 12-byte header") == true)
    }
}

/// An interceptor that claims frames whose first byte is 0xEE and answers
/// each with its bytes reversed.
final class EchoInterceptor: FrameInterceptor, @unchecked Sendable {
    var taken: [[UInt8]] = []
    var pending: [[UInt8]] = []
    var decisionLength: Int { 1 }
    func claims(_ prefix: [UInt8]) -> Bool { prefix.first == 0xEE }
    func receive(_ frame: [UInt8]) { taken.append(frame); pending.append(frame.reversed()) }
    func nextFrame() -> [UInt8]? { pending.isEmpty ? nil : pending.removeFirst() }
}

@Suite(.timeLimit(.minutes(5))) struct NetDeviceInterceptionTests {
    /// A claimed frame never reaches the endpoint; the answer waits for a
    /// receive buffer and arrives with a virtio-net header (num_buffers 1).
    @Test func claimedFramesAreAnsweredInsteadOfForwarded() throws {
        let endpoint = try SocketPairEndpoint()
        let interceptor = EchoInterceptor()
        let device = try NetDevice(endpoint: endpoint, mac: NetDeviceTests.mac, interceptor: interceptor)
        let driver = try TestDriver(device)
        #expect(driver.initialise(queues: 2).contains(.driverOK))
        let claimed: [UInt8] = [UInt8](repeating: 0, count: 12) + [0xEE, 1, 2, 3]
        let frame = driver.allocate(claimed.count, filledWith: claimed)
        driver.submit([.init(address: frame, length: UInt32(claimed.count), writable: false)], queue: 1)
        driver.notify(1)
        #expect(driver.waitForUsed(queue: 1) != nil)
        #expect(interceptor.taken == [[0xEE, 1, 2, 3]])
        // Another frame goes to the endpoint as before.
        let passed: [UInt8] = [UInt8](repeating: 0, count: 12) + [0x01, 9]
        driver.submit([.init(address: driver.allocate(passed.count, filledWith: passed), length: UInt32(passed.count), writable: false)], queue: 1, first: 1)
        driver.notify(1)
        #expect(endpoint.receive() == passed)
        let buffer = driver.allocate(2048)
        driver.submit([.init(address: buffer, length: 2048, writable: true)], queue: 0)
        driver.notify(0)
        let used = try #require(driver.waitForUsed(queue: 0))
        #expect(used.length == 16)
        #expect(driver.read(buffer, 16) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 2, 1, 0xEE])
        #expect(device.statistics.interceptedFrames == 1 && device.statistics.interceptorFrames == 1 && device.statistics.sentFrames == 1)
    }
}
