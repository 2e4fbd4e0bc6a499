extension VCPU {
    /// The in-kernel local APIC's register page (1024 bytes, `struct kvm_lapic_state`).
    /// The corresponding ioctl is KVM_GET_LAPIC.
    public func localAPIC() throws -> [UInt8] {
        var registers = [UInt8](repeating: 0, count: 1024)
        // Sound: the buffer is exactly the 1024 bytes KVM_GET_LAPIC writes.
        _ = try registers.withUnsafeMutableBytes { try SystemCall.ioctl(fileDescriptor, KVMRequest.getLocalAPIC, $0.baseAddress) }
        return registers
    }

    /// Sets the local APIC's register page. The corresponding ioctl is KVM_SET_LAPIC.
    public func setLocalAPIC(_ registers: [UInt8]) throws {
        guard registers.count == 1024 else { throw KVMUsageError("a local APIC register page has 1024 bytes, not \(registers.count)") }
        var copy = registers
        // Sound: the buffer is exactly the 1024 bytes KVM_SET_LAPIC reads.
        _ = try copy.withUnsafeMutableBytes { try SystemCall.ioctl(fileDescriptor, KVMRequest.setLocalAPIC, $0.baseAddress) }
    }
}
