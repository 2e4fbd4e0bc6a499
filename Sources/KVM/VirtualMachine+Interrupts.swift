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
