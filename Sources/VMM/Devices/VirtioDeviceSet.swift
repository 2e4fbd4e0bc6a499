import Boot
import GuestMemory
import HostSystem
import KVM
import Metadata
import Virtio

extension MMIOTransport: BusDevice {}

/// Where virtio-mmio device `index` lives: a 4 KiB window from 0xD0001000
/// (just above the exit device, in the hole below 4 GiB) and GSI 5 + index on
/// the IOAPIC (COM1 has 4).
public enum VirtioPlacement {
    public static let firstBase: UInt64 = 0xD000_1000
    public static let firstGSI: UInt32 = 5

    public static func device(_ index: Int) -> ACPITables.MMIODevice {
        ACPITables.MMIODevice(base: UInt32(firstBase + UInt64(index) * MMIOTransport.windowSize),
                              length: UInt32(MMIOTransport.windowSize), gsi: firstGSI + UInt32(index))
    }
}

/// The machine's virtio devices: their back ends, transports, the event loop
/// they run on, and the KVM wiring (an irqfd per device, an ioeventfd per
/// queue) that keeps vCPUs out of userspace on notifications and interrupts.
public final class VirtioDeviceSet: Sendable {
    public let loop: EventLoop
    public let transports: [MMIOTransport]
    public let blockDevices: [BlockDevice]
    /// Whether KVM delivers notifications and interrupts (ioeventfd, irqfd);
    /// otherwise notifications are MMIO exits and interrupts KVM_IRQ_LINE pulses.
    public let usesEventNotifiers: Bool
    private let interruptNotifiers: [EventNotifier]

    /// The devices `configuration` asks for, in placement order: drives (root
    /// first), network interfaces, vsock, then the entropy device. `report`
    /// hears of taps Kestrel created. The interfaces that `mmds-config` names
    /// hand the guest's MMDS frames to `metadata` (a fresh, empty service
    /// when nil).
    public static func devices(for configuration: MachineConfiguration, metadata: MetadataService? = nil,
                               report: (String) -> Void = { _ in }) throws -> [(name: String, device: any VirtioDevice)] {
        let service = configuration.metadata == nil ? nil : (metadata ?? MetadataService())
        if let service, let metadata = configuration.metadata {
            service.configure(version: metadata.version, imdsCompatible: metadata.imdsCompatible)
        }
        var devices: [(String, any VirtioDevice)] = []
        for drive in configuration.orderedDrives {
            do {
                devices.append(("virtio-blk \(drive.id)", try BlockDevice(path: drive.path, readOnly: drive.readOnly, identifier: drive.id,
                                                                            flush: drive.cacheType == .writeback,
                                                                            bandwidth: drive.rateLimiter?.bandwidth, operations: drive.rateLimiter?.operations,
                                                                            engine: drive.ioEngine)))
            } catch {
                throw ConfigurationError("drive \(drive.id): \(error)")
            }
        }
        for interface in configuration.networkInterfaces {
            let tap: TapDevice
            do {
                tap = try TapDevice(name: interface.tapName ?? "kestrel%d")
            } catch let error as SystemCallError where error.errno == .permissionDenied || error.errno == .notPermitted {
                throw ConfigurationError("network interface \(interface.id): cannot \(interface.tapName == nil ? "create a tap" : "open tap \(interface.tapName!)") without CAP_NET_ADMIN (\(error))")
            } catch {
                throw ConfigurationError("network interface \(interface.id): \(error)")
            }
            if interface.tapName == nil { report("created tap \(tap.name) for \(interface.id)") }
            let mac = interface.guestMAC.flatMap(NetDevice.parseMAC) ?? NetDevice.randomMAC()
            var stack: MetadataNetworkStack?
            if let service, let metadata = configuration.metadata, metadata.networkInterfaces.contains(interface.id) {
                stack = MetadataNetworkStack(service: service, ipv4Address: metadata.ipv4Address)
            }
            devices.append(("virtio-net \(interface.id)", try NetDevice(endpoint: tap, mac: mac, mtu: interface.mtu.map { UInt16($0) }, interceptor: stack,
                                                                     receiveLimit: try interface.receiveLimiter?.makeQueue(),
                                                                     transmitLimit: try interface.transmitLimiter?.makeQueue())))
        }
        if let vsock = configuration.vsock {
            do {
                devices.append(("virtio-vsock", try VsockDevice(guestCID: vsock.guestCID, udsPath: vsock.udsPath)))
            } catch {
                throw ConfigurationError("vsock: \(error)")
            }
        }
        if let balloon = configuration.balloon {
            devices.append(("virtio-balloon", try BalloonDevice(targetMiB: balloon.amountMiB, deflateOnOOM: balloon.deflateOnOOM,
                                                                statisticsInterval: .seconds(balloon.statisticsInterval),
                                                                freePageHinting: balloon.freePageHinting,
                                                                freePageReporting: balloon.freePageReporting)))
        }
        if configuration.entropy {
            devices.append(("virtio-rng", try EntropyDevice(bandwidth: configuration.entropyLimiter?.bandwidth,
                                                            operations: configuration.entropyLimiter?.operations)))
        }
        return devices
    }

    /// Creates the transports for `devices`, puts them on `mmioBus` and wires
    /// them to `vm`. `log` gets one line per device fault.
    /// `platformFeatures` are offered by every transport (VIRTIO_F_ACCESS_PLATFORM for SNP).
    init(devices: [(name: String, device: any VirtioDevice)], vm: VirtualMachine, kvm: KVMSystem, memory: GuestAddressSpace,
         platformFeatures: UInt64 = 0, mmioBus: inout DeviceBus, log: @escaping @Sendable (String) -> Void) throws {
        loop = try EventLoop(name: "virtio")
        usesEventNotifiers = try kvm.checkExtension(.irqfd) > 0 && kvm.checkExtension(.ioeventfd) > 0
        var transports: [MMIOTransport] = []
        var interruptNotifiers: [EventNotifier] = []
        for (index, entry) in devices.enumerated() {
            let placement = VirtioPlacement.device(index)
            let line: @Sendable () -> Void
            if usesEventNotifiers {
                let notifier = try EventNotifier()
                try vm.attachInterrupt(notifier, gsi: placement.gsi)
                interruptNotifiers.append(notifier)
                line = { notifier.signal() }
            } else {
                let edge = EdgePulse { try? vm.setInterruptLine(placement.gsi, active: $0) }
                line = { edge.pulse() }
            }
            let transport = try MMIOTransport(device: entry.device, name: entry.name, memory: memory, loop: loop,
                                              platformFeatures: platformFeatures, interruptLine: line, log: log)
            if usesEventNotifiers {
                for (queue, notifier) in transport.queueNotifiers.enumerated() {
                    try vm.attachIOEvent(notifier, at: UInt64(placement.base) + UInt64(MMIOTransport.Register.queueNotify), length: 4,
                                         matching: UInt64(queue))
                }
            }
            mmioBus.add(transport, at: UInt64(placement.base)..<(UInt64(placement.base) + MMIOTransport.windowSize))
            transports.append(transport)
        }
        self.transports = transports
        self.interruptNotifiers = interruptNotifiers
        blockDevices = devices.compactMap { $0.device as? BlockDevice }
        let quiescing = devices.map(\.device)
        loop.beforeParking { for device in quiescing { device.quiesce() } }
    }

    /// The devices' MMIO windows by name, which a conversion must not touch.
    public var mmioRanges: [(name: String, range: Range<UInt64>)] {
        transports.indices.map { index in
            let base = UInt64(VirtioPlacement.device(index).base)
            return (transports[index].name, base..<(base + MMIOTransport.windowSize))
        }
    }

    /// Starts the event loop (before the vCPUs); `setUp` runs first on its thread.
    public func start(setUp: @escaping @Sendable () -> Void = {}) throws { try loop.start(setUp: setUp) }

    /// Stops the event loop and makes the disks' data durable.
    public func stop() {
        loop.stop()
        for disk in blockDevices { try? disk.synchronize() }
    }
}
