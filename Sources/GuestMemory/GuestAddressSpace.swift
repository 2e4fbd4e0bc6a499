import Synchronization

/// One guest-physical region backed by a host mapping.
public struct GuestRegion: Sendable {
    /// First guest physical address of the region.
    public let start: GuestAddress
    /// The host memory behind it.
    public let mapping: MemoryMapping

    public var size: UInt64 { UInt64(mapping.size) }
    /// The first address past the region (the space refuses regions that wrap).
    public var end: GuestAddress { start + size }

    public func contains(_ address: GuestAddress, length: UInt64) -> Bool {
        address >= start && length <= size && address - start <= size - length
    }
}

/// A guest's physical address space: regions of host memory by guest physical
/// address, with bounds-checked access. Every access must lie wholly within one
/// region; nothing outside a region is ever touched.
///
/// Shared by vCPU threads and devices: the region list is behind a mutex, and
/// the bytes themselves are guest memory, which the guest changes under
/// everybody's feet anyway.
public final class GuestAddressSpace: Sendable {
    private let list = Mutex<[GuestRegion]>([])

    public init() {}

    /// The regions, by address.
    public var regions: [GuestRegion] { list.withLock { $0 } }

    /// Adds a region; it must not overlap an existing one.
    public func add(_ mapping: MemoryMapping, at start: GuestAddress) throws {
        let size = UInt64(mapping.size)
        guard let end = start.adding(size) else {
            throw GuestMemoryError.addressOverflow(address: start.rawValue, length: size)
        }
        try list.withLock { regions in
            for region in regions where start < region.end && region.start < end {
                throw GuestMemoryError.overlap(address: start.rawValue, size: size)
            }
            regions.append(GuestRegion(start: start, mapping: mapping))
            regions.sort { $0.start < $1.start }
        }
    }

    /// The region holding `[address, address + length)`, if one does.
    public func region(containing address: GuestAddress, length: UInt64 = 1) -> GuestRegion? {
        list.withLock { regions in regions.first { $0.contains(address, length: length) } }
    }

    /// Whether the whole range is guest RAM of a single region.
    public func contains(_ address: GuestAddress, length: UInt64) -> Bool {
        region(containing: address, length: length) != nil
    }

    /// A host view of `[address, address + length)`; throws when the range is not
    /// inside one region. The buffer is valid while the region's mapping lives.
    public func buffer(at address: GuestAddress, length: Int) throws -> UnsafeMutableRawBufferPointer {
        guard length >= 0, let region = region(containing: address, length: UInt64(length)) else {
            throw GuestMemoryError.outOfBounds(address: address.rawValue, length: length)
        }
        // Sound: `contains` proved the range lies inside the region's mapping.
        let offset = Int(address - region.start)
        return UnsafeMutableRawBufferPointer(start: region.mapping.baseAddress + offset, count: length)
    }

    /// Copies bytes into guest memory.
    public func write<C: Collection>(_ bytes: C, at address: GuestAddress) throws where C.Element == UInt8 {
        let target = try buffer(at: address, length: bytes.count)
        target.copyBytes(from: bytes)
    }

    /// Copies bytes out of guest memory.
    public func read(at address: GuestAddress, length: Int) throws -> [UInt8] {
        Array(try buffer(at: address, length: length))
    }

    /// Stores a little-endian integer.
    public func store<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws {
        let target = try buffer(at: address, length: MemoryLayout<T>.size)
        target.storeBytes(of: value.littleEndian, toByteOffset: 0, as: T.self)
    }

    /// Loads a little-endian integer.
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: GuestAddress) throws -> T {
        let source = try buffer(at: address, length: MemoryLayout<T>.size)
        return T(littleEndian: source.loadUnaligned(fromByteOffset: 0, as: T.self))
    }

    /// Reads a NUL-terminated UTF-8 string of at most `limit` bytes (bounded: a
    /// missing terminator ends the string at the limit or at the region's end).
    public func string(at address: GuestAddress, limit: Int = 4096) throws -> String {
        guard let region = region(containing: address) else {
            throw GuestMemoryError.outOfBounds(address: address.rawValue, length: 1)
        }
        let available = Int(min(UInt64(limit), region.end - address))
        let bytes = try buffer(at: address, length: available)
        let length = bytes.firstIndex(of: 0) ?? available
        return String(decoding: bytes.prefix(length), as: UTF8.self)
    }
}
