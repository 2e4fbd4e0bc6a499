/// A guest physical address (after vm-memory's `GuestAddress`): its own type,
/// so that it cannot be mixed up with a host address, a size or an offset.
/// Arithmetic that could wrap past 2^64 is checked.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { rawValue = value }

    /// `self + offset`, or nil when it would pass 2^64.
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : GuestAddress(sum)
    }

    /// `self + offset`; the caller knows it cannot wrap (a range already checked).
    public static func + (address: GuestAddress, offset: UInt64) -> GuestAddress {
        GuestAddress(address.rawValue + offset)
    }

    /// The distance from `base` up to this address.
    public static func - (address: GuestAddress, base: GuestAddress) -> UInt64 {
        address.rawValue - base.rawValue
    }

    /// Whether the address is a multiple of `alignment` (a power of two).
    public func isAligned(to alignment: UInt64) -> Bool { rawValue & (alignment - 1) == 0 }

    /// The guest frame number of a 4 KiB page.
    public var pageFrameNumber: UInt64 { rawValue >> 12 }

    public static func < (left: GuestAddress, right: GuestAddress) -> Bool { left.rawValue < right.rawValue }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
