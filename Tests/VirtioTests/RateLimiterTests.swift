import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import Virtio

@Suite struct RateLimiterTests {
    func close(_ duration: Duration, _ seconds: Double) -> Bool { abs(duration.seconds - seconds) < 1e-6 }

    /// The burst goes first, then the bucket; a request may take it below
    /// zero, and the wait is the time the refill needs to get back to zero.
    @Test func bucketsRefillEvenlyAndRequestsRunIntoDebt() {
        let start = ContinuousClock.now
        let limiter = RateLimiter(bandwidth: TokenBucket(size: 1000, oneTimeBurst: 500, refillTime: .seconds(1)),
                                  operations: TokenBucket(size: 4, refillTime: .seconds(2)), now: start)
        limiter.consume(bytes: 1500, now: start)
        #expect(limiter.delay(now: start) == .zero)
        limiter.consume(bytes: 500, now: start)
        #expect(close(limiter.delay(now: start), 0.5))
        #expect(close(limiter.delay(now: start + .milliseconds(200)), 0.3))
        #expect(limiter.delay(now: start + .milliseconds(500)) == .zero)
        // Four operations a bucket, refilled over 2 s: two were taken, one came back by 0.5 s,
        // so four more put it at -1, half a second away.
        for _ in 0..<4 { limiter.consume(bytes: 0, now: start + .milliseconds(500)) }
        #expect(close(limiter.delay(now: start + .milliseconds(500)), 0.5))
        #expect(limiter.throttledEvents == 3)
        // A PATCH: a bucket of size 0 removes that limit; one left out is kept.
        limiter.update(bandwidth: TokenBucket(size: 0, refillTime: .seconds(1)), operations: nil, now: start + .milliseconds(500))
        #expect(close(limiter.delay(now: start + .milliseconds(500)), 0.5))
        limiter.update(bandwidth: nil, operations: TokenBucket(size: 0, refillTime: .seconds(1)), now: start + .milliseconds(500))
        #expect(!limiter.isActive && limiter.delay(now: start + .milliseconds(500)) == .zero)
        #expect(!RateLimiter(bandwidth: TokenBucket(size: 0, refillTime: .seconds(1)), operations: nil).isActive)
    }

    /// A bucket holds no more than its size however long it waits.
    @Test func aBucketNeverHoldsMoreThanItsSize() {
        let start = ContinuousClock.now
        let limiter = RateLimiter(bandwidth: TokenBucket(size: 100, refillTime: .milliseconds(100)), operations: nil, now: start)
        limiter.consume(bytes: 300, now: start + .seconds(60))
        #expect(close(limiter.delay(now: start + .seconds(60)), 0.2))
    }
}

@Suite(.timeLimit(.minutes(5))) struct LimitedBlockDeviceTests {
    func read(_ driver: TestDriver, sector: UInt64, head: UInt16) -> GuestAddress {
        let header = driver.allocate(16, filledWith: BlockDeviceTests.header(0, sector: sector))
        let data = driver.allocate(512), status = driver.allocate(1, filledWith: [0xFF])
        driver.submit([.init(address: header, length: 16, writable: false), .init(address: data, length: 512, writable: true),
                       .init(address: status, length: 1, writable: true)], first: head)
        driver.notify()
        return data
    }

    /// 512 bytes a bucket: two reads go (the second into debt), the third
    /// waits for the refill and is then served by the limiter's timer.
    @Test func aThrottledRequestIsServedWhenTheBucketRefills() throws {
        let image = try BlockDeviceTests.Image(sectors: 16)
        let device = try BlockDevice(path: image.path, readOnly: true, identifier: "limited",
                                     bandwidth: TokenBucket(size: 512, refillTime: .milliseconds(300)))
        let driver = try TestDriver(device)
        #expect(driver.initialise().contains(.driverOK))
        for (index, sector) in [UInt64(1), 2, 3].enumerated() {
            let data = read(driver, sector: sector, head: UInt16(index * 3))
            let used = try #require(driver.waitForUsed(), "request \(index) was never served")
            #expect(used.length == 513 && driver.read(data, 4) == [UInt8](repeating: UInt8(sector), count: 4))
        }
        #expect(device.rateLimit.limiter.throttledEvents >= 1, "the third read waited")
        #expect(device.metricCounts["read_count"] == 3 && device.metricCounts["read_bytes"] == 1536)
    }

    /// PATCH's image swap: the new file is served, the capacity is new, the
    /// driver gets a configuration interrupt and a new generation; a path
    /// that cannot be opened changes nothing.
    @Test func aReplacedImageIsServedAndTheDriverIsTold() throws {
        let first = try BlockDeviceTests.Image(sectors: 16), second = try BlockDeviceTests.Image(sectors: 64)
        let device = try BlockDevice(path: first.path, readOnly: false, identifier: "swap")
        let driver = try TestDriver(device)
        #expect(driver.initialise().contains(.driverOK))
        #expect(driver.readRegister(MMIOTransport.Register.configurationGeneration) == 0)
        try device.replaceImage(with: second.path)
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { driver.transport.read(offset: 0x100, into: $0) }
        #expect(capacity == 64 && device.path == second.path)
        #expect(driver.readRegister(MMIOTransport.Register.configurationGeneration) == 1)
        #expect(driver.readRegister(MMIOTransport.Register.interruptStatus) & 2 != 0, "a configuration-change interrupt")
        let data = read(driver, sector: 40, head: 0)
        #expect(driver.waitForUsed()?.length == 513 && driver.read(data, 2) == [40, 40], "sector 40 exists only in the new image")
        #expect(throws: (any Error).self) { try device.replaceImage(with: "/nonexistent/image") }
        #expect(device.path == second.path && device.capacity == 64)
        // The same file again, grown: its lock is kept (a second open would conflict with it) and the size read again.
        #expect(truncate(second.path, 128 * 512) == 0)
        try device.replaceImage(with: second.path)
        #expect(device.capacity == 128 && driver.readRegister(MMIOTransport.Register.configurationGeneration) == 2)
    }
}
