import Glibc
import GuestMemory
import HostSystem
import Testing
@testable import Virtio

@Suite(.timeLimit(.minutes(5))) struct BlockDeviceTests {
    /// A temporary image of `sectors` sectors; sector n is filled with byte n.
    final class Image {
        let path: String
        init(sectors: Int) throws {
            var template = Array("/tmp/kestrel-blk-XXXXXX".utf8CString)
            let fd = mkstemp(&template)
            guard fd >= 0 else { throw SystemCallError.current("mkstemp") }
            path = String(cString: template)
            var bytes: [UInt8] = []
            for sector in 0..<sectors { bytes += [UInt8](repeating: UInt8(truncatingIfNeeded: sector), count: 512) }
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        deinit { unlink(path) }

        func contents() -> [UInt8] {
            let fd = open(path, O_RDONLY)
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: 1 << 20)
            let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            return Array(bytes.prefix(max(count, 0)))
        }
    }

    struct Setup {
        let image: Image
        let device: BlockDevice
        let driver: TestDriver
    }

    func setUp(sectors: Int = 64, readOnly: Bool = false, engine: BlockDevice.IOEngine = .sync) throws -> Setup {
        let image = try Image(sectors: sectors)
        let device = try BlockDevice(path: image.path, readOnly: readOnly, identifier: "disk-one", engine: engine)
        let driver = try TestDriver(device)
        #expect(driver.initialise().contains(.driverOK))
        return Setup(image: image, device: device, driver: driver)
    }

    static func header(_ type: UInt32, sector: UInt64) -> [UInt8] {
        withUnsafeBytes(of: type.littleEndian) { Array($0) } + [0, 0, 0, 0] + withUnsafeBytes(of: sector.littleEndian) { Array($0) }
    }

    /// Sends one request; returns (status, used length, data address).
    func request(_ driver: TestDriver, type: UInt32, sector: UInt64, payload: [UInt8] = [], dataLength: Int = 0,
                 splitData: Bool = false) throws -> (status: UInt8, used: UInt32, data: GuestAddress) {
        var buffers: [TestDriver.Buffer] = [.init(address: driver.allocate(16, filledWith: Self.header(type, sector: sector)), length: 16, writable: false)]
        if !payload.isEmpty { buffers.append(.init(address: driver.allocate(payload.count, filledWith: payload), length: UInt32(payload.count), writable: false)) }
        let data = driver.allocate(max(dataLength, 1))
        if dataLength > 0 {
            if splitData {
                let half = UInt32(dataLength / 2)
                buffers.append(.init(address: data, length: half, writable: true))
                buffers.append(.init(address: data + UInt64(half), length: UInt32(dataLength) - half, writable: true))
            } else {
                buffers.append(.init(address: data, length: UInt32(dataLength), writable: true))
            }
        }
        let status = driver.allocate(1, filledWith: [0xFF])
        buffers.append(.init(address: status, length: 1, writable: true))
        driver.submit(buffers, first: 0)
        driver.notify()
        let used = try #require(driver.waitForUsed())
        return (driver.read(status, 1)[0], used.length, data)
    }

    @Test func configurationGivesCapacityAndFeatures() throws {
        let setup = try setUp(sectors: 64)
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { setup.driver.transport.read(offset: 0x100, into: $0) }
        #expect(capacity == 64)
        let features = setup.driver.offeredFeatures
        #expect(features & BlockDevice.Feature.flush != 0)
        #expect(features & BlockDevice.Feature.readOnly == 0)
        #expect(features & BlockDevice.Feature.discard != 0)
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func readsSectorsIntoSplitBuffers(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(engine: engine)
        let result = try request(setup.driver, type: 0, sector: 3, dataLength: 1024, splitData: true)
        #expect(result.status == 0)
        #expect(result.used == 1025)
        let data = setup.driver.read(result.data, 1024)
        #expect(data[0..<512].allSatisfy { $0 == 3 } && data[512...].allSatisfy { $0 == 4 })
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func writesReachTheImageAndFlushSucceeds(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(engine: engine)
        let payload = [UInt8](repeating: 0xAB, count: 512)
        #expect(try request(setup.driver, type: 1, sector: 5, payload: payload).status == 0)
        #expect(try request(setup.driver, type: 4, sector: 0).status == 0)
        let contents = setup.image.contents()
        #expect(contents[(5 * 512)..<(6 * 512)].allSatisfy { $0 == 0xAB })
        #expect(contents[(6 * 512)..<(7 * 512)].allSatisfy { $0 == 6 }, "the next sector is untouched")
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func outOfRangeAndUnalignedRequestsFailWithIOError(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(sectors: 8, engine: engine)
        #expect(try request(setup.driver, type: 0, sector: 7, dataLength: 1024).status == 1, "runs past the end")
        #expect(try request(setup.driver, type: 0, sector: UInt64.max, dataLength: 512).status == 1, "sector overflow")
        #expect(try request(setup.driver, type: 0, sector: 0, dataLength: 100).status == 1, "not whole sectors")
        #expect(try request(setup.driver, type: 1, sector: 8, payload: [UInt8](repeating: 1, count: 512)).status == 1)
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func getIDReturnsTheIdentifierPadded(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(engine: engine)
        let result = try request(setup.driver, type: 8, sector: 0, dataLength: 20)
        #expect(result.status == 0)
        #expect(setup.driver.read(result.data, 20) == Array("disk-one".utf8) + [UInt8](repeating: 0, count: 12))
    }

    @Test func unknownTypeIsUnsupported() throws {
        let setup = try setUp()
        #expect(try request(setup.driver, type: 77, sector: 0).status == 2)
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func readOnlyDeviceRefusesWritesAndOffersRO(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(readOnly: true, engine: engine)
        #expect(setup.driver.offeredFeatures & BlockDevice.Feature.readOnly != 0)
        #expect(try request(setup.driver, type: 1, sector: 0, payload: [UInt8](repeating: 1, count: 512)).status == 1)
        #expect(setup.image.contents()[0..<512].allSatisfy { $0 == 0 })
        #expect(try request(setup.driver, type: 0, sector: 1, dataLength: 512).status == 0)
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func discardAndWriteZeroesReadBackAsZeros(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(sectors: 64, engine: engine)
        func range(_ sector: UInt64, _ count: UInt32, _ flags: UInt32) -> [UInt8] {
            withUnsafeBytes(of: sector.littleEndian) { Array($0) } + withUnsafeBytes(of: count.littleEndian) { Array($0) }
                + withUnsafeBytes(of: flags.littleEndian) { Array($0) }
        }
        #expect(try request(setup.driver, type: 13, sector: 0, payload: range(8, 8, 0)).status == 0)
        #expect(try request(setup.driver, type: 11, sector: 0, payload: range(24, 8, 0)).status == 0)
        #expect(try request(setup.driver, type: 11, sector: 0, payload: range(0, 8, 1)).status == 2, "unmap flag on discard")
        #expect(try request(setup.driver, type: 13, sector: 0, payload: range(60, 8, 0)).status == 1, "past the end")
        let contents = setup.image.contents()
        #expect(contents[(8 * 512)..<(16 * 512)].allSatisfy { $0 == 0 })
        #expect(contents[(24 * 512)..<(32 * 512)].allSatisfy { $0 == 0 })
        #expect(contents[(16 * 512)..<(17 * 512)].allSatisfy { $0 == 16 })
        #expect(contents.count == 64 * 512, "the image keeps its size")
    }

    /// io_engine Async: several requests (five: the test queue has 16 descriptors) in the ring at once, finished as the
    /// kernel completes them (in any order), each with its own data.
    @Test func asyncRequestsAreInFlightTogether() throws {
        let setup = try setUp(sectors: 64, engine: .async)
        let driver = setup.driver
        var statuses: [GuestAddress] = [], data: [GuestAddress] = []
        for index in 0..<5 {
            let head = UInt16(index * 3)
            let header = driver.allocate(16, filledWith: Self.header(0, sector: UInt64(index * 2)))
            data.append(driver.allocate(1024))
            statuses.append(driver.allocate(1, filledWith: [0xFF]))
            for (offset, buffer) in [TestDriver.Buffer(address: header, length: 16, writable: false),
                                     .init(address: data[index], length: 1024, writable: true),
                                     .init(address: statuses[index], length: 1, writable: true)].enumerated() {
                driver.writeDescriptor(0, head + UInt16(offset), address: buffer.address, length: buffer.length,
                                       flags: (offset < 2 ? 1 : 0) | (buffer.writable ? 2 : 0), next: head + UInt16(offset) + 1)
            }
            driver.publish(head: head)
        }
        driver.notify()
        var heads: Set<UInt32> = []
        for _ in 0..<5 {
            let used = try #require(driver.waitForUsed())
            #expect(used.length == 1025)
            heads.insert(used.head)
        }
        #expect(heads == Set((0..<5).map { UInt32($0 * 3) }))
        for index in 0..<5 {
            #expect(driver.read(statuses[index], 1) == [0])
            let bytes = driver.read(data[index], 1024)
            #expect(bytes[0..<512].allSatisfy { $0 == UInt8(index * 2) } && bytes[512...].allSatisfy { $0 == UInt8(index * 2 + 1) })
        }
        #expect(setup.device.metricCounts["read_count"] == 5 && setup.device.metricCounts["read_bytes"] == 5 * 1024)
    }

    /// A pause parks the device's loop only once the ring is empty: a write
    /// sent just before it is finished (used, and on disk) when pause returns.
    @Test func aPauseFinishesWhatTheRingHolds() throws {
        let setup = try setUp(sectors: 64, engine: .async)
        let driver = setup.driver
        let status = driver.allocate(1, filledWith: [0xFF])
        driver.submit([.init(address: driver.allocate(16, filledWith: Self.header(1, sector: 9)), length: 16, writable: false),
                       .init(address: driver.allocate(4096, filledWith: [UInt8](repeating: 0x5A, count: 4096)), length: 4096, writable: false),
                       .init(address: status, length: 1, writable: true)])
        driver.notify()
        usleep(20_000)  // the loop has taken the notification (the pause would otherwise park before it)
        driver.loop.pause()
        #expect(driver.usedIndex == 1 && driver.read(status, 1) == [0], "finished before the loop parked")
        #expect(setup.image.contents()[(9 * 512)..<(17 * 512)].allSatisfy { $0 == 0x5A })
        driver.loop.resume()
    }

    /// A read with no data is served at once (not sent to the ring, and never
    /// as a flush), and a queue set larger than its maximum is refused.
    @Test func anEmptyAsyncReadAndAnOversizedQueue() throws {
        let setup = try setUp(sectors: 8, engine: .async)
        let result = try request(setup.driver, type: 0, sector: 0)
        #expect(result.status == 0 && result.used == 1)
        #expect(setup.device.metricCounts["flush_count"] == 0)
        let image = try Image(sectors: 8)
        let driver = try TestDriver(try BlockDevice(path: image.path, readOnly: false, identifier: "big", engine: .async))
        driver.queueSize = 512
        _ = driver.initialise()
        #expect(driver.waitForStatus(.needsReset))
        #expect(driver.logLines.first?.contains("size 512 is over its maximum 256") == true, "\(driver.logLines)")
    }

    @Test func requestWithoutStatusByteNeedsReset() throws {
        let setup = try setUp()
        setup.driver.submit([.init(address: setup.driver.allocate(16, filledWith: Self.header(0, sector: 0)), length: 16, writable: false)])
        setup.driver.notify()
        #expect(setup.driver.waitForStatus(.needsReset))
        #expect(setup.driver.logLines.first?.contains("status byte") == true)
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func shortHeaderIsAnIOError(engine: BlockDevice.IOEngine) throws {
        let setup = try setUp(engine: engine)
        let status = setup.driver.allocate(1, filledWith: [0xFF])
        setup.driver.submit([.init(address: setup.driver.allocate(8), length: 8, writable: false), .init(address: status, length: 1, writable: true)])
        setup.driver.notify()
        _ = try #require(setup.driver.waitForUsed())
        #expect(setup.driver.read(status, 1) == [1])
    }

    @Test func aSecondWriterOfTheImageIsRefused() throws {
        let setup = try setUp()
        #expect(throws: SystemCallError.self) { try BlockDevice(path: setup.image.path, readOnly: false, identifier: "x") }
        #expect(throws: HostFileError("cannot open the drive /nonexistent/disk.img: No such file or directory")) {
            try BlockDevice(path: "/nonexistent/disk.img", readOnly: false, identifier: "x")
        }
        #expect(throws: HostFileError("the drive /tmp is a directory, not a regular file")) { try BlockDevice(path: "/tmp", readOnly: true, identifier: "x") }
    }

    /// A FIFO as the image is refused at once: open(2) would wait for a writer.
    @Test(.timeLimit(.minutes(1))) func aFIFOIsRefusedWithoutBlocking() throws {
        let fifo = "/tmp/kestrel-fifo-\(getpid())-disk.img"
        unlink(fifo)
        try #require(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        for readOnly in [true, false] {
            #expect(throws: HostFileError("the drive \(fifo) is a FIFO, not a regular file")) {
                try BlockDevice(path: fifo, readOnly: readOnly, identifier: "x")
            }
        }
    }

    /// A read or write that io_uring moved only in part is finished with
    /// preadv/pwritev from where it stopped, across vector boundaries: the
    /// async engine once answered VIRTIO_BLK_S_IOERR for any short result.
    @Test func aTransferTheRingMovedInPartIsFinishedFromWhereItStopped() throws {
        let image = try Image(sectors: 8)
        let fd = open(image.path, O_RDWR)
        defer { close(fd) }
        // Three vectors over 2.5 sectors read from sector 2; the ring "moved" 700 bytes.
        let buffers = [UnsafeMutableRawBufferPointer.allocate(byteCount: 300, alignment: 8),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: 700, alignment: 8),
                       UnsafeMutableRawBufferPointer.allocate(byteCount: 280, alignment: 8)]
        defer { buffers.forEach { $0.deallocate() } }
        for buffer in buffers { buffer.initializeMemory(as: UInt8.self, repeating: 0xEE) }
        let vectors = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 3)
        defer { vectors.deallocate() }
        for (index, buffer) in buffers.enumerated() { vectors[index] = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count) }
        let moved = BlockDevice.transfer(Array(vectors), at: 1024, moved: 700, write: false, fd)
        #expect(moved == 1280)
        let read = buffers.flatMap { Array($0) }
        let file = Array(image.contents()[1024..<2304])
        #expect(read[..<700].allSatisfy { $0 == 0xEE }, "the bytes the ring moved are left alone")
        #expect(Array(read[700...]) == Array(file[700...]), "the rest comes from the file, from byte 700 on")

        // A write: the ring wrote the first 300 bytes; the rest is written now.
        for buffer in buffers { buffer.initializeMemory(as: UInt8.self, repeating: 0x5A) }
        #expect(BlockDevice.transfer(Array(vectors), at: 0, moved: 300, write: true, fd) == 1280)
        let written = image.contents()
        #expect(written[..<300].allSatisfy { $0 == 0 }, "sector 0's bytes the ring wrote are not written again")
        #expect(written[300..<1280].allSatisfy { $0 == 0x5A })
        #expect(written[1280] == 2, "nothing past the transfer")

        // Past the end of the file a read stops short: the total says so.
        #expect(BlockDevice.transfer(Array(vectors), at: 8 * 512 - 100, write: false, fd) == 100)
    }
}

/// Device writes into guest RAM never reach KVM's dirty log, and a diff
/// snapshot that trusts the log alone loses them (Firecracker shipped that
/// bug: restored guests read stale blocks). With writes tracked, a block
/// read marks every page it wrote: its data buffers, its status byte and the
/// used ring; and none it only read: the header, the descriptor table and
/// the available ring.
@Suite(.timeLimit(.minutes(5))) struct DeviceWriteTrackingTests {
    static func page(_ address: GuestAddress) -> Int { Int((address - TestDriver.ramBase) / 4096) }

    static func pages(_ bitmap: [UInt64]) -> Set<Int> {
        var set = Set<Int>()
        for (word, bits) in bitmap.enumerated() where bits != 0 {
            for bit in 0..<64 where bits & (1 << UInt64(bit)) != 0 { set.insert(word * 64 + bit) }
        }
        return set
    }

    @Test(arguments: BlockDevice.IOEngine.allCases) func aBlockReadMarksThePagesItWroteAndOnlyThose(engine: BlockDevice.IOEngine) throws {
        let image = try BlockDeviceTests.Image(sectors: 64)
        let device = try BlockDevice(path: image.path, readOnly: false, identifier: "disk", engine: engine)
        let driver = try TestDriver(device)
        #expect(driver.initialise().contains(.driverOK))
        driver.memory.startTrackingWrites()
        // A 16 KiB read whose data buffer starts 512 bytes into a page, so
        // that it touches five pages; header and status each on pages of their own.
        let header = driver.allocate(4096, filledWith: BlockDeviceTests.header(0, sector: 8))
        let data = driver.allocate(6 * 4096) + 512
        let status = driver.allocate(4096, filledWith: [0xFF])
        driver.submit([.init(address: header, length: 16, writable: false), .init(address: data, length: 16384, writable: true),
                       .init(address: status, length: 1, writable: true)])
        // What the driver wrote so far (descriptors, ring, buffers) is not the device's.
        _ = driver.memory.takeWrittenPages(regionStart: TestDriver.ramBase)
        driver.notify()
        let used = try #require(driver.waitForUsed())
        #expect(used.length == 16385)
        #expect(driver.read(data, 512).allSatisfy { $0 == 8 }, "the data arrived")
        let written = Self.pages(try #require(driver.memory.takeWrittenPages(regionStart: TestDriver.ramBase)))
        let queue = driver.queueAddress(0)
        var expected = Set((Self.page(data)...Self.page(data + 16383)))
        expected.insert(Self.page(status))
        expected.insert(Self.page(queue.used))
        #expect(expected.count == 7)
        #expect(written == expected, "written \(written.sorted()), expected \(expected.sorted())")
        for (what, address) in [("header", header), ("descriptor table", queue.descriptors), ("available ring", queue.available)] {
            #expect(!written.contains(Self.page(address)), "the \(what) was only read")
        }
        #expect(Self.pages(try #require(driver.memory.takeWrittenPages(regionStart: TestDriver.ramBase))).isEmpty, "taking starts over")
    }
}
