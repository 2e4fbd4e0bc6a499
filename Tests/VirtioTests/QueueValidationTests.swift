import GuestMemory
import Testing
@testable import Virtio

/// Malformed queues: each puts the device into DEVICE_NEEDS_RESET with one
/// log line, and nothing is completed or read outside guest RAM.
@Suite(.timeLimit(.minutes(5))) struct QueueValidationTests {
    func activeDriver(features: UInt64? = nil) throws -> TestDriver {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.initialise(features: features).contains(.driverOK))
        return driver
    }

    func expectNeedsReset(_ driver: TestDriver, mentioning text: String) {
        driver.notify()
        #expect(driver.waitForStatus(.needsReset))
        let lines = driver.logLines
        #expect(lines.count == 1, "one line per fault: \(lines)")
        #expect(lines.first?.contains(text) == true, "\(lines)")
        #expect(driver.usedIndex == 0, "nothing was completed")
    }

    @Test func chainThatLoopsIsRefused() throws {
        let driver = try activeDriver()
        let buffer = driver.allocate(64)
        driver.writeDescriptor(0, 0, address: buffer, length: 64, flags: 1 | 2, next: 1)
        driver.writeDescriptor(0, 1, address: buffer, length: 64, flags: 1 | 2, next: 0)
        driver.publish(head: 0)
        expectNeedsReset(driver, mentioning: "longer than the queue size")
    }

    @Test func bufferOutsideGuestRAMIsRefused() throws {
        let driver = try activeDriver()
        driver.submit([.init(address: GuestAddress(0x7FFF_F000), length: 0x2000, writable: true)])
        expectNeedsReset(driver, mentioning: "not inside guest RAM")
    }

    @Test func bufferStraddlingTheEndOfRAMIsRefused() throws {
        let driver = try activeDriver()
        let end: GuestAddress = TestDriver.ramBase + UInt64(TestDriver.ramSize)
        driver.submit([.init(address: GuestAddress(end.rawValue - 16), length: 32, writable: true)])
        expectNeedsReset(driver, mentioning: "not inside guest RAM")
    }

    /// A confidential guest's private memory is not the device's to touch: a
    /// buffer there is refused, not served, and so is one that only ends there.
    @Test func bufferInPrivateMemoryIsRefused() throws {
        let driver = try activeDriver()
        let buffer = driver.allocate(0x2000)
        let page = (buffer.rawValue + 0xFFF) & ~0xFFF
        driver.memory.setPrivate(page..<(page + 0x1000), true)
        driver.submit([.init(address: GuestAddress(page - 16), length: 32, writable: true)])
        expectNeedsReset(driver, mentioning: "lies in private memory; devices reach shared memory only")
        #expect(try driver.memory.read(at: GuestAddress(page - 16), length: 16) == [UInt8](repeating: 0, count: 16), "nothing was written")
    }

    @Test func addressThatWrapsIsRefused() throws {
        let driver = try activeDriver()
        driver.submit([.init(address: GuestAddress(UInt64.max - 8), length: 64, writable: true)])
        expectNeedsReset(driver, mentioning: "not inside guest RAM")
    }

    @Test func headOrNextOutsideTheTableIsRefused() throws {
        let driver = try activeDriver()
        driver.publish(head: 999)
        expectNeedsReset(driver, mentioning: "head index 999")
        let second = try activeDriver()
        second.writeDescriptor(0, 0, address: second.allocate(8), length: 8, flags: 1 | 2, next: 16)
        second.publish(head: 0)
        expectNeedsReset(second, mentioning: "next index 16")
    }

    @Test func readableAfterWritableIsRefused() throws {
        let driver = try activeDriver()
        driver.submit([.init(address: driver.allocate(8), length: 8, writable: true),
                       .init(address: driver.allocate(8), length: 8, writable: false)])
        expectNeedsReset(driver, mentioning: "device-readable descriptor after a device-writable")
    }

    @Test func availableIndexJumpingPastTheQueueSizeIsRefused() throws {
        let driver = try activeDriver()
        driver.setAvailableIndex(100)
        expectNeedsReset(driver, mentioning: "beyond the queue size")
    }

    @Test func indirectTablesAreCheckedAndFollowed() throws {
        // Accepted: an indirect table of two writable buffers.
        let driver = try activeDriver()
        let first = driver.allocate(16), second = driver.allocate(16)
        let table = driver.allocate(32)
        for (index, address) in [first, second].enumerated() {
            let entry = table + UInt64(index * 16)
            try driver.memory.store(address.rawValue, at: entry)
            try driver.memory.store(UInt32(16), at: entry + 8)
            try driver.memory.store(UInt16(index == 0 ? 1 | 2 : 2), at: entry + 12)
            try driver.memory.store(UInt16(1), at: entry + 14)
        }
        driver.writeDescriptor(0, 0, address: table, length: 32, flags: 4, next: 0)
        driver.publish(head: 0)
        driver.notify()
        let used = try #require(driver.waitForUsed())
        #expect(used.head == 0 && used.length == 32)

        // Refused: INDIRECT without the feature, nested, with NEXT, a partial entry.
        let cases: [(features: UInt64?, flags: UInt16, length: UInt32, nested: Bool, text: String)] = [
            (VirtioFeature.version1, 4, 32, false, "without VIRTIO_RING_F_INDIRECT_DESC"),
            (nil, 4 | 1, 32, false, "both INDIRECT and NEXT"),
            (nil, 4, 24, false, "not 1...16 descriptors"),
            (nil, 4, 32, true, "nested indirect table"),
        ]
        for item in cases {
            let driver = try activeDriver(features: item.features)
            let table = driver.allocate(32)
            try driver.memory.store(table.rawValue, at: table)
            try driver.memory.store(UInt32(32), at: table + 8)
            try driver.memory.store(UInt16(item.nested ? 4 : 2), at: table + 12)
            driver.writeDescriptor(0, 0, address: table, length: item.length, flags: item.flags, next: 1)
            driver.writeDescriptor(0, 1, address: driver.allocate(8), length: 8, flags: 2, next: 0)
            driver.publish(head: 0)
            expectNeedsReset(driver, mentioning: item.text)
        }
    }

    @Test func aDeviceThatNeedsResetDoesNothingUntilReset() throws {
        let driver = try activeDriver()
        driver.publish(head: 999)
        expectNeedsReset(driver, mentioning: "head index")
        driver.submit([.init(address: driver.allocate(8), length: 8, writable: true)], first: 1)
        driver.notify()
        #expect(driver.waitForUsed() == nil)
        #expect(driver.logLines.count == 1, "no second line")
        #expect(driver.initialise().contains(.driverOK), "a reset brings it back")
    }
}

@Suite(.timeLimit(.minutes(5))) struct EntropyDeviceTests {
    @Test func fillsWritableBuffersFromTheHost() throws {
        let device = try EntropyDevice()
        let driver = try TestDriver(device)
        #expect(driver.initialise().contains(.driverOK))
        let first = driver.allocate(64), second = driver.allocate(200)
        driver.submit([.init(address: first, length: 64, writable: true), .init(address: second, length: 200, writable: true)])
        driver.notify()
        let used = try #require(driver.waitForUsed())
        #expect(used.head == 0 && used.length == 264)
        #expect(driver.read(first, 64).contains { $0 != 0 })
        #expect(driver.read(second, 200).contains { $0 != 0 })
        #expect(device.bytesServed == 264)
        #expect(driver.interruptCount >= 1)
        #expect(driver.readRegister(MMIOTransport.Register.interruptStatus) & 1 == 1)
        driver.writeRegister(MMIOTransport.Register.interruptAcknowledge, 1)
        #expect(driver.readRegister(MMIOTransport.Register.interruptStatus) == 0)
    }

    @Test func eventIndexSuppressesInterruptsUntilUsedEvent() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.initialise().contains(.driverOK))
        let available = driver.queueAddress(0).available
        // used_event = 1: interrupt only once the used index passes 1 (after the second chain).
        try driver.memory.store(UInt16(1), at: available + 4 + 2 * UInt64(driver.queueSize))
        driver.submit([.init(address: driver.allocate(8), length: 8, writable: true)], first: 0)
        driver.notify()
        _ = try #require(driver.waitForUsed())
        #expect(driver.interruptCount == 0)
        driver.submit([.init(address: driver.allocate(8), length: 8, writable: true)], first: 1)
        driver.notify()
        _ = try #require(driver.waitForUsed())
        #expect(driver.interruptCount == 1)
        // The device asked to be notified from the next available entry on.
        let availEvent = try driver.memory.load(UInt16.self, at: driver.queueAddress(0).used + 4 + 8 * UInt64(driver.queueSize))
        #expect(availEvent == 2)
    }
}
