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

    /// A restored balloon reads again the statistics buffer the driver had
    /// handed over before the snapshot (the snapshot does not name it, and
    /// the driver waits for it), and gives it back at its poll: statistics
    /// go on. Before, they stopped until the guest reset the device.
    @Test func aRestoredBalloonReadsTheHeldStatisticsBufferAgain() throws {
        let (_, driver) = try setUp()
        let entries = withUnsafeBytes(of: UInt16(4).littleEndian) { Array($0) } + withUnsafeBytes(of: UInt64(42 << 20).littleEndian) { Array($0) }
        let buffer = driver.allocate(entries.count, filledWith: entries)
        driver.submit([.init(address: buffer, length: UInt32(entries.count), writable: false)], queue: 2)
        driver.notify(2)
        usleep(200_000)
        let saved = driver.transport.savedState()
        #expect(saved.queues[2].nextAvailable == 1 && saved.queues[2].nextUsed == 0, "one buffer held at the snapshot")
        driver.writeRegister(MMIOTransport.Register.status, 0)  // the snapshotted process is gone

        let device = try BalloonDevice(targetMiB: 64, deflateOnOOM: true, statisticsInterval: .seconds(1), freePageReporting: true)
        let restored = try MMIOTransport(device: device, name: "restored", memory: driver.memory, loop: driver.loop,
                                         interruptLine: {}, log: { _ in })
        try restored.restore(saved)
        usleep(300_000)
        #expect(device.status.statistics == ["free_memory": 42 << 20], "the held buffer was read again")
        #expect(driver.waitForUsed(queue: 2, seconds: 5)?.head == 0, "and handed back at the poll")
        #expect(restored.savedState().queues[2].nextAvailable == 1 && restored.savedState().queues[2].nextUsed == 1)
    }

    /// A free page hinting run, as the Linux driver runs one: the host's new
    /// command id, the driver's echo of it in a device-readable buffer, free
    /// blocks in device-writable ones (returned to the host), then STOP,
    /// which the device acknowledges with DONE. Blocks of a stale run, or
    /// sent after DONE, are left alone: the driver may be using them again.
    @Test func aHintingRunReturnsItsBlocksAndEndsWithDone() throws {
        let device = try BalloonDevice(targetMiB: 0, deflateOnOOM: false, statisticsInterval: .seconds(1), freePageHinting: true,
                                       freePageReporting: true)
        #expect(device.queueSizes.count == 5 && device.statisticsQueue == 2 && device.hintingQueue == 3 && device.reportingQueue == 4)
        let driver = try TestDriver(device)
        #expect(driver.initialise(queues: device.queueSizes.count).contains(.driverOK))
        #expect(driver.offeredFeatures & BalloonDevice.Feature.freePageHinting != 0)
        func command() -> UInt32 {
            var value: UInt32 = 0
            withUnsafeMutableBytes(of: &value) { driver.transport.read(offset: 0x108, into: $0) }
            return value
        }
        #expect(command() == BalloonDevice.HintCommand.stop)
        let generation = device.configurationGeneration, interrupts = driver.interruptCount
        try device.startHinting(acknowledgeOnStop: true)
        #expect(command() == 2 && device.configurationGeneration != generation && driver.interruptCount == interrupts + 1)
        let started = try device.hintingStatus()
        #expect(started == (2, nil))

        let area = driver.allocate(4 * 4096)
        let block = GuestAddress((area.rawValue + 4095) & ~4095)
        try driver.memory.write([UInt8](repeating: 0xAB, count: 3 * 4096), at: block)
        var descriptor: UInt16 = 0
        func send(_ buffers: [TestDriver.Buffer]) {
            driver.submit(buffers, queue: 3, first: descriptor)
            descriptor += UInt16(buffers.count)
            driver.notify(3)
            #expect(driver.waitForUsed(queue: 3) != nil)
        }
        func sendCommand(_ value: UInt32) {
            send([.init(address: driver.allocate(4, filledWith: littleEndian([value])), length: 4, writable: false)])
        }
        sendCommand(2)
        send([.init(address: block, length: 8192, writable: true)])
        #expect(try driver.memory.read(at: block, length: 8192) == [UInt8](repeating: 0, count: 8192), "the run's block went back to the host")
        #expect(device.metricCounts["free_page_hint_count"] == 1 && device.metricCounts["free_page_hint_freed"] == 8192)
        sendCommand(BalloonDevice.HintCommand.stop)
        let afterStop = try device.hintingStatus()
        #expect(command() == BalloonDevice.HintCommand.done && afterStop == (1, 0), "STOP is acknowledged with DONE")
        send([.init(address: block + 8192, length: 4096, writable: true)])
        #expect(try driver.memory.read(at: block + 8192, length: 4) == [0xAB, 0xAB, 0xAB, 0xAB], "after DONE a block is the guest's again")

        // Without acknowledge_on_stop the blocks stay lent until stopHinting.
        try device.startHinting(acknowledgeOnStop: false)
        #expect(command() == 3)
        sendCommand(2)
        send([.init(address: block + 8192, length: 4096, writable: true)])
        #expect(try driver.memory.read(at: block + 8192, length: 4) == [0xAB, 0xAB, 0xAB, 0xAB], "a block of a stale run is left alone")
        sendCommand(3)
        sendCommand(BalloonDevice.HintCommand.stop)
        #expect(command() == 3, "no DONE without acknowledge_on_stop")
        try device.stopHinting()
        #expect(command() == BalloonDevice.HintCommand.done)
        // A STOP the driver sends before it has seen a run is not that run's end.
        try device.startHinting(acknowledgeOnStop: true)
        sendCommand(BalloonDevice.HintCommand.stop)
        #expect(command() == 4, "a STOP without the run's echo is not acknowledged")
        device.reset()
        let afterReset = try device.hintingStatus()
        #expect(command() == BalloonDevice.HintCommand.stop && afterReset == (0, nil))

        #expect(throws: BalloonError("the guest's balloon driver is not running")) { try device.startHinting(acknowledgeOnStop: true) }
        let plain = try BalloonDevice(targetMiB: 0, deflateOnOOM: false, statisticsInterval: .zero, freePageReporting: false)
        #expect(plain.queueSizes.count == 2 && plain.hintingQueue == nil)
        #expect(throws: BalloonError.self) { try plain.startHinting(acknowledgeOnStop: true) }
        #expect(throws: BalloonError.self) { try plain.stopHinting() }
        #expect(throws: BalloonError.self) { _ = try plain.hintingStatus() }
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
