import GuestMemory
import Testing
@testable import Virtio

@Suite(.timeLimit(.minutes(5))) struct MMIOTransportTests {
    typealias R = MMIOTransport.Register

    @Test func identifiesAVersion2DeviceAndOffersVersion1() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.readRegister(R.magic) == 0x7472_6976)
        #expect(driver.readRegister(R.version) == 2)
        #expect(driver.readRegister(R.deviceID) == 4)
        let features = driver.offeredFeatures
        #expect(features & VirtioFeature.version1 != 0)
        #expect(features & VirtioFeature.eventIndex != 0)
        driver.writeRegister(R.queueSelect, 0)
        #expect(driver.readRegister(R.queueSizeMax) == 256)
        driver.writeRegister(R.queueSelect, 1)
        #expect(driver.readRegister(R.queueSizeMax) == 0, "a queue that does not exist has size 0")
    }

    /// An SNP machine's transports add VIRTIO_F_ACCESS_PLATFORM, which a
    /// driver may then accept; an ordinary machine's do not offer it.
    @Test func accessPlatformIsOfferedOnlyWhenTheMachineAddsIt() throws {
        #expect(try TestDriver(EntropyDevice()).offeredFeatures & VirtioFeature.accessPlatform == 0)
        let confidential = try TestDriver(EntropyDevice(), platformFeatures: VirtioFeature.accessPlatform)
        #expect(confidential.offeredFeatures & VirtioFeature.accessPlatform != 0)
        #expect(confidential.initialise(features: VirtioFeature.version1 | VirtioFeature.accessPlatform).contains(.driverOK))
        #expect(!(try TestDriver(EntropyDevice())).initialise(features: VirtioFeature.version1 | VirtioFeature.accessPlatform).contains(.featuresOK))
    }

    @Test func refusesFeaturesWithoutVersion1OrUnknownBits() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(!driver.initialise(features: 0).contains(.featuresOK))
        #expect(!driver.initialise(features: VirtioFeature.version1 | 1 << 50).contains(.featuresOK))
        #expect(driver.initialise(features: VirtioFeature.version1).contains(.driverOK))
    }

    @Test func driverOKWithoutFeaturesOKIsNotAccepted() throws {
        let driver = try TestDriver(EntropyDevice())
        driver.writeRegister(R.status, VirtioStatus([.acknowledge, .driver, .driverOK]).rawValue)
        #expect(!VirtioStatus(rawValue: driver.readRegister(R.status)).contains(.driverOK))
    }

    @Test func resetClearsStatusAndQueues() throws {
        let driver = try TestDriver(EntropyDevice())
        #expect(driver.initialise().contains(.driverOK))
        driver.writeRegister(R.status, 0)
        #expect(driver.readRegister(R.status) == 0)
        #expect(driver.readRegister(R.queueReady) == 0)
        #expect(driver.initialise().contains(.driverOK), "a reset device initialises again")
    }

    @Test func narrowAndUnalignedRegisterAccessesAreIgnored() throws {
        let driver = try TestDriver(EntropyDevice())
        var byte: UInt8 = 0xAA
        withUnsafeMutableBytes(of: &byte) { driver.transport.read(offset: 0, into: $0) }
        #expect(byte == 0)
        withUnsafeBytes(of: UInt8(7)) { driver.transport.write(offset: UInt64(R.status), from: $0) }
        #expect(driver.readRegister(R.status) == 0)
    }

    @Test func ringsOutsideGuestRAMSetNeedsResetAtDriverOK() throws {
        let driver = try TestDriver(EntropyDevice())
        let status = driver.initialise { _ in (GuestAddress(0x4000_0000), GuestAddress(0x4000_4000), GuestAddress(0x4000_8000)) }
        #expect(status.contains(.needsReset))
        #expect(driver.logLines.count == 1)
        #expect(driver.interruptCount == 1, "the driver hears of it with a configuration interrupt")
        #expect(driver.readRegister(R.interruptStatus) == 2)
    }

    @Test func misalignedRingSetsNeedsReset() throws {
        let driver = try TestDriver(EntropyDevice())
        let base = TestDriver.ramBase
        #expect(driver.initialise { _ in (base + 8, base + 0x4000, base + 0x8000) }.contains(.needsReset))
    }
}
