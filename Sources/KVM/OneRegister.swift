import CKVM
import SystemPackage

/// A register id for KVM_GET_ONE_REG / KVM_SET_ONE_REG / KVM_GET_REG_LIST.
///
/// Layout: bits 63:56 architecture, 55:52 log2 of the size in bytes, and the
/// architecture's own fields below. For x86 (arch 0x20): type in bits 47:32 and
/// index in bits 31:0.
public struct OneRegisterID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// KVM_REG_X86
    public static let x86Architecture: UInt64 = 0x2000_0000_0000_0000
    /// KVM_REG_SIZE_U64
    public static let sizeU64: UInt64 = 0x0030_0000_0000_0000

    /// x86 register types (KVM_X86_REG_TYPE_*).
    public enum X86Type: UInt64, Sendable {
        case msr = 2
        case kvm = 3
    }

    /// An x86 64-bit register of the given type and index.
    public static func x86(_ type: X86Type, index: UInt32) -> OneRegisterID {
        OneRegisterID(rawValue: x86Architecture | sizeU64 | type.rawValue << 32 | UInt64(index))
    }

    /// An MSR accessed through ONE_REG.
    public static func msr(_ index: UInt32) -> OneRegisterID { .x86(.msr, index: index) }

    /// KVM_REG_GUEST_SSP: the guest's shadow-stack pointer (type KVM, index 0).
    public static let guestSSP = OneRegisterID.x86(.kvm, index: 0)

    /// Size of the register value in bytes, from bits 55:52.
    public var size: Int { 1 << Int((rawValue >> 52) & 0xF) }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

extension VCPU {
    /// Reads a register of up to 8 bytes. The corresponding ioctl is KVM_GET_ONE_REG.
    public func oneRegister(_ id: OneRegisterID) throws -> UInt64 {
        guard id.size <= 8 else { throw KVMUsageError("register \(id) is \(id.size) bytes; use oneRegisterBytes") }
        var value: UInt64 = 0
        try withUnsafeMutableBytes(of: &value) { bytes in
            // Sound: `value` has 8 bytes, at least the register's size, and lives for the call.
            var request = ckvm_one_reg(id: id.rawValue, addr: UInt64(UInt(bitPattern: bytes.baseAddress)))
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getOneRegister, &request)
        }
        return value
    }

    /// Writes a register of up to 8 bytes. The corresponding ioctl is KVM_SET_ONE_REG.
    public func setOneRegister(_ id: OneRegisterID, _ newValue: UInt64) throws {
        guard id.size <= 8 else { throw KVMUsageError("register \(id) is \(id.size) bytes") }
        var value = newValue
        try withUnsafeMutableBytes(of: &value) { bytes in
            // Sound: as above; the kernel reads `id.size` bytes from `value`.
            var request = ckvm_one_reg(id: id.rawValue, addr: UInt64(UInt(bitPattern: bytes.baseAddress)))
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setOneRegister, &request)
        }
    }

    /// The registers ONE_REG can access on this vCPU. The corresponding ioctl is
    /// KVM_GET_REG_LIST (ask with n = 0, get E2BIG and the count, ask again).
    public func registerList() throws -> [OneRegisterID] {
        var header = ckvm_reg_list_header(n: 0)
        do {
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getRegisterList, &header)
            return []
        } catch let error as SystemCallError where error.errno == .argListTooLong {
            // header.n holds the count now.
        }
        let count = Int(header.n)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8 * (count + 1), alignment: 8)
        defer { buffer.deallocate() }
        // Sound: room for the header word plus `count` ids.
        buffer.storeBytes(of: UInt64(count), as: UInt64.self)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getRegisterList, buffer)
        let returned = min(Int(buffer.load(as: UInt64.self)), count)
        return (0..<returned).map { OneRegisterID(rawValue: buffer.load(fromByteOffset: 8 * ($0 + 1), as: UInt64.self)) }
    }
}
