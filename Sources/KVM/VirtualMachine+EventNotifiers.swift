import CKVM
import HostSystem

/// Where a guest write that KVM turns into an eventfd signal happens.
public enum IOEventSpace: Sendable, Equatable {
    /// A memory-mapped register at a guest physical address.
    case mmio
    /// An I/O port.
    case port
}

extension VirtualMachine {
    /// Routes `notifier` to interrupt line `gsi` of the in-kernel irqchip: every
    /// signal is an edge on that line, raised by KVM without a return to
    /// userspace. The corresponding ioctl is KVM_IRQFD.
    public func attachInterrupt(_ notifier: EventNotifier, gsi: UInt32) throws {
        var request = ckvm_irqfd()
        request.fd = UInt32(bitPattern: notifier.fileDescriptor)
        request.gsi = gsi
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.irqfd, &request)
    }

    /// Undoes `attachInterrupt` (KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN).
    public func detachInterrupt(_ notifier: EventNotifier, gsi: UInt32) throws {
        var request = ckvm_irqfd()
        request.fd = UInt32(bitPattern: notifier.fileDescriptor)
        request.gsi = gsi
        request.flags = 1
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.irqfd, &request)
    }

    /// Makes a guest write of `length` bytes to `address` signal `notifier`
    /// inside KVM instead of exiting to userspace; with `value`, only writes of
    /// that value do (KVM_IOEVENTFD_FLAG_DATAMATCH). The corresponding ioctl is
    /// KVM_IOEVENTFD.
    public func attachIOEvent(_ notifier: EventNotifier, at address: UInt64, length: UInt32, in space: IOEventSpace = .mmio,
                              matching value: UInt64? = nil) throws {
        var request = Self.ioeventfdRequest(notifier, address, length, space, value)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.ioeventfd, &request)
    }

    /// Undoes `attachIOEvent` with the same arguments (KVM_IOEVENTFD_FLAG_DEASSIGN).
    public func detachIOEvent(_ notifier: EventNotifier, at address: UInt64, length: UInt32, in space: IOEventSpace = .mmio,
                              matching value: UInt64? = nil) throws {
        var request = Self.ioeventfdRequest(notifier, address, length, space, value)
        request.flags |= 4
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.ioeventfd, &request)
    }

    private static func ioeventfdRequest(_ notifier: EventNotifier, _ address: UInt64, _ length: UInt32, _ space: IOEventSpace,
                                         _ value: UInt64?) -> ckvm_ioeventfd {
        var request = ckvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = notifier.fileDescriptor
        if let value { request.datamatch = value; request.flags |= 1 }
        if space == .port { request.flags |= 2 }
        return request
    }
}
