import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import Virtio

@Suite(.timeLimit(.minutes(5))) struct BalloonDeviceTests {
    func setUp(statistics: Bool = true, reporting: Bool = true) throws -> (BalloonDevice, TestDriver) {
        let device = try BalloonDevice(targetMiB: 64, deflateOnOOM: true, statisticsInterval: statistics ? .seconds(1) : .zero,
                                       freePageReporting: reporting)
        let driver = try TestDriver(device)
        #expect(driver.initialise(queues: device.queueSizes.count).contains(.driverOK))
        return (device, driver)
    }

    func littleEndian(_ values: [UInt32]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } } }

    /// Features, queues numbered as Linux numbers them, the target in
    /// num_pages, and `actual` the one field the driver writes.
    @Test func configurationCarriesTheTargetAndTakesActual() throws {
        let (device, driver) = try setUp()
        #expect(driver.offeredFeatures & BalloonDevice.Feature.deflateOnOOM != 0 && driver.offeredFeatures & BalloonDevice.Feature.statisticsQueue != 0)
        #expect(device.queueSizes.count == 4 && device.statisticsQueue == 2 && device.reportingQueue == 3)
        let plain = try BalloonDevice(targetMiB: 1, deflateOnOOM: false, statisticsInterval: .zero, freePageReporting: true)
        #expect(plain.queueSizes.count == 3 && plain.statisticsQueue == nil && plain.reportingQueue == 2)
        var target: UInt32 = 0
        withUnsafeMutableBytes(of: &target) { driver.transport.read(offset: 0x100, into: $0) }
        #expect(target == 64 * 256)
        littleEndian([1234]).withUnsafeBytes { driver.transport.write(offset: 0x104, from: $0) }
        littleEndian([99]).withUnsafeBytes { driver.transport.write(offset: 0x100, from: $0) }  // num_pages is the device's
        #expect(device.status.actualPages == 1234 && device.status.targetPages == 64 * 256)
        let before = driver.interruptCount
        device.setTarget(mib: 8)
        #expect(device.status.targetPages == 2048 && driver.interruptCount == before + 1)
        #expect(driver.readRegister(MMIOTransport.Register.interruptStatus) & 2 != 0)
    }

    /// Inflated pages and reported free ranges go back to the host: their
    /// contents read as zero afterwards. A frame outside RAM is refused.
    @Test func inflatedAndReportedPagesAreReturnedToTheHost() throws {
        let (device, driver) = try setUp()
        let page = driver.allocate(3 * 4096)
        let aligned = GuestAddress((page.rawValue + 4095) & ~4095)
        try driver.memory.write([UInt8](repeating: 0xAB, count: 8192), at: aligned)
        let frames = driver.allocate(8, filledWith: littleEndian([UInt32(aligned.rawValue >> 12), 0xFFFF_FFF0]))
        driver.submit([.init(address: frames, length: 8, writable: false)], queue: 0)
        driver.notify(0)
        #expect(driver.waitForUsed(queue: 0) != nil)
        #expect(try driver.memory.read(at: aligned, length: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try driver.memory.read(at: aligned + 4096, length: 4) == [0xAB, 0xAB, 0xAB, 0xAB], "the next page is untouched")
        #expect(device.metricCounts["inflate_count"] == 1 && device.metricCounts["discard_refused"] == 1)
        // Free page reporting: a device-writable range of free memory.
        driver.submit([.init(address: aligned + 4096, length: 4096, writable: true)], queue: 3)
        driver.notify(3)
        #expect(driver.waitForUsed(queue: 3) != nil)
        #expect(try driver.memory.read(at: aligned + 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(device.metricCounts["free_page_report_count"] == 1 && device.metricCounts["free_page_report_freed"] == 4096)
    }

    /// The statistics buffer is read and kept; the poll gives it back,
    /// which is the driver's cue to refill it.
    @Test func statisticsAreReadAndTheBufferReturnedAtThePoll() throws {
        let (device, driver) = try setUp()
        var entries: [UInt8] = []
        for (tag, value) in [(UInt16(4), UInt64(100 << 20)), (5, 256 << 20), (15, 7)] {
            entries += withUnsafeBytes(of: tag.littleEndian) { Array($0) } + withUnsafeBytes(of: value.littleEndian) { Array($0) }
        }
        let buffer = driver.allocate(entries.count, filledWith: entries)
        driver.submit([.init(address: buffer, length: UInt32(entries.count), writable: false)], queue: 2)
        driver.notify(2)
        // Held until the poll, a second later.
        usleep(200_000)
        #expect(driver.waitForUsed(queue: 2, seconds: 0) == nil, "the buffer is kept until the poll")
        #expect(device.status.statistics == ["free_memory": 100 << 20, "total_memory": 256 << 20, "direct_reclaim": 7])
        #expect(driver.waitForUsed(queue: 2, seconds: 5) != nil, "the poll hands the buffer back")
        #expect(throws: BalloonError.self) { try device.setStatisticsInterval(.zero) }
        let (plain, _) = try setUp(statistics: false, reporting: false)
        #expect(throws: BalloonError.self) { try plain.setStatisticsInterval(.seconds(5)) }
    }

    /// An inflate buffer larger than any driver sends is a fault, not a huge allocation.
    @Test func anOversizedInflateBufferNeedsReset() throws {
        let (_, driver) = try setUp()
        let buffer = driver.allocate(40000)
        driver.submit((0..<2).map { _ in .init(address: buffer, length: 40000, writable: false) }, queue: 0)
        driver.notify(0)
        #expect(driver.waitForStatus(.needsReset))
        #expect(driver.logLines.first?.contains("a driver sends at most 65536") == true, "\(driver.logLines)")
    }
}
