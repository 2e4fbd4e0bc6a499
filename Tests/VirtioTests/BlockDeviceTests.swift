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

    func setUp(sectors: Int = 64, readOnly: Bool = false) throws -> Setup {
        let image = try Image(sectors: sectors)
        let device = try BlockDevice(path: image.path, readOnly: readOnly, identifier: "disk-one")
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

    @Test func readsSectorsIntoSplitBuffers() throws {
        let setup = try setUp()
        let result = try request(setup.driver, type: 0, sector: 3, dataLength: 1024, splitData: true)
        #expect(result.status == 0)
        #expect(result.used == 1025)
        let data = setup.driver.read(result.data, 1024)
        #expect(data[0..<512].allSatisfy { $0 == 3 } && data[512...].allSatisfy { $0 == 4 })
    }

    @Test func writesReachTheImageAndFlushSucceeds() throws {
        let setup = try setUp()
        let payload = [UInt8](repeating: 0xAB, count: 512)
        #expect(try request(setup.driver, type: 1, sector: 5, payload: payload).status == 0)
        #expect(try request(setup.driver, type: 4, sector: 0).status == 0)
        let contents = setup.image.contents()
        #expect(contents[(5 * 512)..<(6 * 512)].allSatisfy { $0 == 0xAB })
        #expect(contents[(6 * 512)..<(7 * 512)].allSatisfy { $0 == 6 }, "the next sector is untouched")
    }

    @Test func outOfRangeAndUnalignedRequestsFailWithIOError() throws {
        let setup = try setUp(sectors: 8)
        #expect(try request(setup.driver, type: 0, sector: 7, dataLength: 1024).status == 1, "runs past the end")
        #expect(try request(setup.driver, type: 0, sector: UInt64.max, dataLength: 512).status == 1, "sector overflow")
        #expect(try request(setup.driver, type: 0, sector: 0, dataLength: 100).status == 1, "not whole sectors")
        #expect(try request(setup.driver, type: 1, sector: 8, payload: [UInt8](repeating: 1, count: 512)).status == 1)
    }

    @Test func getIDReturnsTheIdentifierPadded() throws {
        let setup = try setUp()
        let result = try request(setup.driver, type: 8, sector: 0, dataLength: 20)
        #expect(result.status == 0)
        #expect(setup.driver.read(result.data, 20) == Array("disk-one".utf8) + [UInt8](repeating: 0, count: 12))
    }

    @Test func unknownTypeIsUnsupported() throws {
        let setup = try setUp()
        #expect(try request(setup.driver, type: 77, sector: 0).status == 2)
    }

    @Test func readOnlyDeviceRefusesWritesAndOffersRO() throws {
        let setup = try setUp(readOnly: true)
        #expect(setup.driver.offeredFeatures & BlockDevice.Feature.readOnly != 0)
        #expect(try request(setup.driver, type: 1, sector: 0, payload: [UInt8](repeating: 1, count: 512)).status == 1)
        #expect(setup.image.contents()[0..<512].allSatisfy { $0 == 0 })
        #expect(try request(setup.driver, type: 0, sector: 1, dataLength: 512).status == 0)
    }

    @Test func discardAndWriteZeroesReadBackAsZeros() throws {
        let setup = try setUp(sectors: 64)
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

    @Test func requestWithoutStatusByteNeedsReset() throws {
        let setup = try setUp()
        setup.driver.submit([.init(address: setup.driver.allocate(16, filledWith: Self.header(0, sector: 0)), length: 16, writable: false)])
        setup.driver.notify()
        #expect(setup.driver.waitForStatus(.needsReset))
        #expect(setup.driver.logLines.first?.contains("status byte") == true)
    }

    @Test func shortHeaderIsAnIOError() throws {
        let setup = try setUp()
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
}
