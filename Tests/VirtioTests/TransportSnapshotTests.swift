import GuestMemory
import Testing
@testable import Virtio

/// A transport's saved state, restored into a new transport over the same
/// guest memory, goes on from the same queue positions.
@Suite(.timeLimit(.minutes(5))) struct TransportSnapshotTests {
    typealias R = MMIOTransport.Register

    @Test func aRestoredTransportContinuesFromTheSavedRingPositions() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.initialise().contains(.driverOK))
        for _ in 0..<2 {
            driver.submit([.init(address: driver.allocate(16), length: 16, writable: true)])
            driver.notify()
            #expect(driver.waitForUsed() != nil)
        }
        let saved = driver.transport.savedState()
        #expect(saved.active && saved.queues[0].nextAvailable == 2 && saved.queues[0].nextUsed == 2)
        #expect(saved.queues[0].configuration.descriptorTable == driver.queueAddress(0).descriptors)

        let restored = try MMIOTransport(device: EntropyDevice(), name: "restored", memory: driver.memory, loop: driver.loop,
                                         interruptLine: {}, log: { _ in })
        try restored.restore(saved)
        #expect(restored.savedState() == saved, "the restored transport reports what was saved")
        #expect(restored.status.contains(.driverOK))
        // A third request, notified through the restored transport, lands in used slot 2.
        driver.submit([.init(address: driver.allocate(16), length: 16, writable: true)])
        withUnsafeBytes(of: UInt32(0).littleEndian) { restored.write(offset: UInt64(R.queueNotify), from: $0) }
        let used = try #require(driver.waitForUsed())
        #expect(used.length == 16)
        #expect(driver.usedIndex == 3)
        #expect(restored.savedState().queues[0].nextUsed == 3)
    }

    @Test func aSavedStateForAnotherDeviceOrQueueCountIsRefused() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.initialise().contains(.driverOK))
        var saved = driver.transport.savedState()
        let fresh = { try MMIOTransport(device: EntropyDevice(), name: "fresh", memory: driver.memory, loop: driver.loop, interruptLine: {}, log: { _ in }) }
        saved.deviceType = VirtioDeviceType.block.rawValue
        #expect(throws: QueueFault.self) { try fresh().restore(saved) }
        saved = driver.transport.savedState()
        saved.queues.append(saved.queues[0])
        #expect(throws: QueueFault.self) { try fresh().restore(saved) }
        saved = driver.transport.savedState()
        saved.driverFeatures |= 1 << 55
        #expect(throws: QueueFault.self) { try fresh().restore(saved) }
        saved = driver.transport.savedState()
        saved.queues[0].configuration.usedRing = GuestAddress(0x1_0000_0000)
        #expect(throws: QueueFault.self, "rings outside guest RAM") { try fresh().restore(saved) }
    }
}
