/// An ioctl request number together with the name KVM's documentation gives it.
///
/// Numbers follow the kernel's `_IOC(dir, type, nr, size)` encoding:
/// `dir << 30 | size << 16 | type << 8 | nr`, with direction none 0, write 1,
/// read 2, read+write 3. Sizes come from the layout of our own ABI structs, so a
/// wrong struct shows up as a wrong request number in the unit tests.
public struct IoctlRequest: Hashable, Sendable, CustomStringConvertible {
    /// The value passed to ioctl(2).
    public let number: UInt
    /// The kernel's name for the request, e.g. `KVM_CREATE_GUEST_MEMFD`.
    public let name: String

    public init(number: UInt, name: String) {
        self.number = number
        self.name = name
    }

    /// Data direction of a request, as seen from userspace.
    public enum Direction: UInt, Sendable {
        case none = 0
        case write = 1
        case read = 2
        case readWrite = 3
    }

    /// Encodes a request of the KVM ioctl type (0xAE).
    public init(_ name: String, _ direction: Direction, _ nr: UInt8, size: Int = 0) {
        precondition(size >= 0 && size < (1 << 14), "ioctl argument size must fit in 14 bits")
        self.number = direction.rawValue << 30 | UInt(size) << 16 | 0xAE << 8 | UInt(nr)
        self.name = name
    }

    public var description: String { name }
}
