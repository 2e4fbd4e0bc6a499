/// Errors from guest memory layout and access.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A size of zero or a negative size.
    case invalidSize(Int)
    /// An access that is not wholly inside one region.
    case outOfBounds(address: UInt64, length: Int)
    /// A region that overlaps one already added.
    case overlap(address: UInt64, size: UInt64)
    /// A guest physical address range that wraps around 2^64.
    case addressOverflow(address: UInt64, length: UInt64)
    /// An access that touches memory the guest made private.
    case privateMemory(address: UInt64, length: Int)

    public var description: String {
        switch self {
        case .invalidSize(let size): return "invalid memory size \(size)"
        case .outOfBounds(let address, let length):
            return "guest access of \(length) bytes at 0x\(String(address, radix: 16)) is outside guest memory"
        case .overlap(let address, let size):
            return "region at 0x\(String(address, radix: 16)) (0x\(String(size, radix: 16)) bytes) overlaps another region"
        case .privateMemory(let address, let length):
            return "guest access of \(length) bytes at 0x\(String(address, radix: 16)) touches private memory; the host reaches shared memory only"
        case .addressOverflow(let address, let length):
            return "range at 0x\(String(address, radix: 16)) of 0x\(String(length, radix: 16)) bytes wraps past 2^64"
        }
    }
}
