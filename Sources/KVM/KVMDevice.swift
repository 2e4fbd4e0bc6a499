import CKVM
import Glibc

/// An in-kernel device made with KVM_CREATE_DEVICE (an arm64 VGIC, a VFIO
/// bridge, ...), configured through its attributes. Closing the object
/// closes the device fd.
public final class KVMDevice: Sendable {
    public let fileDescriptor: Int32
    public let type: UInt32

    init(fileDescriptor: Int32, type: UInt32) {
        self.fileDescriptor = fileDescriptor
        self.type = type
    }

    deinit { close(fileDescriptor) }

    /// Sets an attribute whose value is a 64-bit word (an address, a count).
    /// The corresponding ioctl is KVM_SET_DEVICE_ATTR on the device fd.
    public func setAttribute(group: UInt32, attribute: UInt64, value: UInt64) throws {
        var word = value
        try withUnsafeMutableBytes(of: &word) { bytes in
            // Sound: `addr` points at the 8 bytes of `word`, alive for the call.
            var request = ckvm_device_attr(flags: 0, group: group, attr: attribute, addr: UInt64(UInt(bitPattern: bytes.baseAddress)))
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setDeviceAttribute, &request)
        }
    }

    /// Sets an attribute that takes no value (a control such as "initialise").
    public func setAttribute(group: UInt32, attribute: UInt64) throws {
        var request = ckvm_device_attr(flags: 0, group: group, attr: attribute, addr: 0)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setDeviceAttribute, &request)
    }
}

extension VirtualMachine {
    /// Creates an in-kernel device of `type` (enum kvm_device_type). The
    /// corresponding ioctl is KVM_CREATE_DEVICE.
    public func createDevice(type: UInt32) throws -> KVMDevice {
        var request = ckvm_create_device(type: type, fd: 0, flags: 0)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.createDevice, &request)
        return KVMDevice(fileDescriptor: Int32(bitPattern: request.fd), type: type)
    }
}
