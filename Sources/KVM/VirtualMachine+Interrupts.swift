import CKVM

extension VirtualMachine {
    /// Creates the in-kernel PIC pair, IOAPIC and local APICs (before vCPUs).
    /// The corresponding ioctl is KVM_CREATE_IRQCHIP.
    public func createInterruptController() throws {
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.createInterruptController, value: 0)
    }

    /// Creates the in-kernel i8254 PIT, with a dummy PC speaker port.
    /// The corresponding ioctl is KVM_CREATE_PIT2.
    public func createPIT() throws {
        var config = ckvm_pit_config()
        config.flags = 1  // KVM_PIT_SPEAKER_DUMMY
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.createPIT2, &config)
    }

    /// Drives an interrupt line of the in-kernel irqchip (GSI = ISA IRQ for 0-15).
    /// The corresponding ioctl is KVM_IRQ_LINE.
    public func setInterruptLine(_ line: UInt32, active: Bool) throws {
        var level = ckvm_irq_level(irq: line, level: active ? 1 : 0)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.interruptLine, &level)
    }
}

/// One route of the in-kernel irqchip's GSI table: GSI `gsi` drives pin
/// `pin` of `chip` (a KVM_IRQ_ROUTING_IRQCHIP entry; PIC pins are 0 to 7).
public struct InterruptRoute: Equatable, Sendable {
    public var gsi: UInt32
    public var chip: InterruptControllerState.Chip
    public var pin: UInt32

    public init(gsi: UInt32, chip: InterruptControllerState.Chip, pin: UInt32) {
        self.gsi = gsi
        self.chip = chip
        self.pin = pin
    }
}

extension VirtualMachine {
    /// Replaces the whole GSI routing table of the in-kernel irqchip (which
    /// must exist): a GSI absent from `routes` then reaches no pin. KVM_IRQ_LINE,
    /// irqfds and the in-kernel PIT (GSI 0) all go through this table.
    /// The corresponding ioctl is KVM_SET_GSI_ROUTING.
    public func setInterruptRouting(_ routes: [InterruptRoute]) throws {
        let headerSize = MemoryLayout<ckvm_irq_routing_header>.size
        let stride = MemoryLayout<ckvm_irq_routing_entry>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: headerSize + routes.count * stride,
                                                      alignment: MemoryLayout<ckvm_irq_routing_entry>.alignment)
        defer { buffer.deallocate() }
        // Sound: the header and `routes.count` entries fit in the allocation,
        // each at its own aligned offset; KVM reads exactly `nr` entries.
        buffer.storeBytes(of: ckvm_irq_routing_header(nr: UInt32(routes.count), flags: 0), as: ckvm_irq_routing_header.self)
        for (position, route) in routes.enumerated() {
            var entry = ckvm_irq_routing_entry()
            entry.gsi = route.gsi
            entry.type = 1  // KVM_IRQ_ROUTING_IRQCHIP
            entry.irqchip = route.chip.rawValue
            entry.pin = route.pin
            buffer.storeBytes(of: entry, toByteOffset: headerSize + position * stride, as: ckvm_irq_routing_entry.self)
        }
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setGSIRouting, buffer)
    }
}
