import GuestMemory
import KVM

/// One range of guest RAM the guest may convert between private and shared:
/// its private memory is a guest_memfd (at an offset), its shared memory a host
/// mapping. The range is what KVM_SET_MEMORY_ATTRIBUTES changes; the two
/// backings are what a conversion discards.
///
/// The realm rule: the shared backing must be MAP_SHARED. With MAP_PRIVATE,
/// the pages the guest writes after a private-to-shared conversion are not the
/// pages the VMM reads (a realm VMM lost its virtio rings this way), so such a
/// configuration is refused by name.
public struct ConvertibleRAM: Sendable {
    /// Guest-physical addresses, page-aligned.
    public let range: Range<UInt64>
    /// The file behind private memory and the offset of `range.lowerBound` in it.
    public let privateFile: Int32
    public let privateOffset: UInt64
    /// Shared memory: `range.lowerBound` is at its first byte.
    public let shared: MemoryMapping
    /// Keeps `privateFile` open (a `GuestMemfd`, or a test's file).
    let owner: (any AnyObject & Sendable)?

    /// A range whose private memory is `privateFile` at `privateOffset`, kept
    /// open by `owner`, and whose shared memory is `shared`.
    public init(range: Range<UInt64>, privateFile: Int32, privateOffset: UInt64, shared: MemoryMapping,
                keeping owner: (any AnyObject & Sendable)?) throws {
        let page = UInt64(MemoryMapping.pageSize)
        guard !range.isEmpty, range.lowerBound % page == 0, range.upperBound % page == 0, privateOffset % page == 0 else {
            throw ConversionError("convertible RAM \(Self.text(range)) must be non-empty and page-aligned, with a page-aligned guest_memfd offset")
        }
        guard UInt64(shared.size) == UInt64(range.count) else {
            throw ConversionError("convertible RAM \(Self.text(range)) has \(shared.size) bytes of shared memory for \(range.count)")
        }
        guard shared.sharing == .shared else {
            throw ConversionError("the shared memory behind \(Self.text(range)) is MAP_PRIVATE; memory the guest may convert must be "
                + "MAP_SHARED, or what the guest writes after a private-to-shared conversion (its virtio rings) never reaches the VMM")
        }
        self.range = range
        self.privateFile = privateFile
        self.privateOffset = privateOffset
        self.shared = shared
        self.owner = owner
    }

    /// A KVM region with both backings: a guest_memfd and a shared mapping.
    public init(region: MemoryRegion) throws {
        guard let memfd = region.guestMemfd, let mapping = region.mapping else {
            throw ConversionError("slot \(region.slot) at \(region.start) needs both a guest_memfd and shared memory to be convertible")
        }
        try self.init(range: region.start.rawValue..<(region.start.rawValue + region.size), privateFile: memfd.fileDescriptor,
                      privateOffset: region.guestMemfdOffset, shared: mapping, keeping: memfd)
    }

    static func text(_ range: Range<UInt64>) -> String {
        "[0x\(String(range.lowerBound, radix: 16)), 0x\(String(range.upperBound, radix: 16)))"
    }
}

/// A refused or failed conversion, or a configuration that cannot convert.
public struct ConversionError: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
