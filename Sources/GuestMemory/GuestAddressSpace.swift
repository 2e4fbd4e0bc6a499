/// One guest-physical region backed by a host mapping.
public struct GuestRegion {
    /// First guest physical address of the region.
    public let guestPhysicalAddress: UInt64
    /// The host memory behind it.
    public let mapping: MemoryMapping

    public var size: UInt64 { UInt64(mapping.size) }
    public var end: UInt64 { guestPhysicalAddress + size }

    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        address >= guestPhysicalAddress && length <= size && address - guestPhysicalAddress <= size - length
    }
}

/// A guest's physical address space: regions of host memory by guest physical
/// address, with bounds-checked access. Every access must lie wholly within one
/// region; nothing outside a region is ever touched.
public final class GuestAddressSpace {
    public private(set) var regions: [GuestRegion] = []

    public init() {}

    /// Adds a region; it must not overlap an existing one.
    public func add(_ mapping: MemoryMapping, at guestPhysicalAddress: UInt64) throws {
        let size = UInt64(mapping.size)
        guard guestPhysicalAddress <= UInt64.max - size else {
            throw GuestMemoryError.addressOverflow(address: guestPhysicalAddress, length: size)
        }
        for region in regions where guestPhysicalAddress < region.end && region.guestPhysicalAddress < guestPhysicalAddress + size {
            throw GuestMemoryError.overlap(address: guestPhysicalAddress, size: size)
        }
        regions.append(GuestRegion(guestPhysicalAddress: guestPhysicalAddress, mapping: mapping))
        regions.sort { $0.guestPhysicalAddress < $1.guestPhysicalAddress }
    }

    /// The region holding `[address, address + length)`, if one does.
    public func region(containing address: UInt64, length: UInt64 = 1) -> GuestRegion? {
        regions.first { $0.contains(address, length: length) }
    }

    /// Whether the whole range is guest RAM of a single region.
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        region(containing: address, length: length) != nil
    }

    /// A host view of `[address, address + length)`; throws when the range is not
    /// inside one region. The buffer is valid while the region's mapping lives.
    public func buffer(at address: UInt64, length: Int) throws -> UnsafeMutableRawBufferPointer {
        guard length >= 0, let region = region(containing: address, length: UInt64(length)) else {
            throw GuestMemoryError.outOfBounds(address: address, length: length)
        }
        // Sound: `contains` proved the range lies inside the region's mapping.
        let offset = Int(address - region.guestPhysicalAddress)
        return UnsafeMutableRawBufferPointer(start: region.mapping.baseAddress + offset, count: length)
    }

    /// Copies bytes into guest memory.
    public func write<C: Collection>(_ bytes: C, at address: UInt64) throws where C.Element == UInt8 {
        let target = try buffer(at: address, length: bytes.count)
        target.copyBytes(from: bytes)
    }

    /// Copies bytes out of guest memory.
    public func read(at address: UInt64, length: Int) throws -> [UInt8] {
        Array(try buffer(at: address, length: length))
    }

    /// Stores a little-endian integer.
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws {
        let target = try buffer(at: address, length: MemoryLayout<T>.size)
        target.storeBytes(of: value.littleEndian, toByteOffset: 0, as: T.self)
    }

    /// Loads a little-endian integer.
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws -> T {
        let source = try buffer(at: address, length: MemoryLayout<T>.size)
        return T(littleEndian: source.loadUnaligned(fromByteOffset: 0, as: T.self))
    }

    /// Reads a NUL-terminated UTF-8 string of at most `limit` bytes (bounded: a
    /// missing terminator ends the string at the limit or at the region's end).
    public func string(at address: UInt64, limit: Int = 4096) throws -> String {
        guard let region = region(containing: address) else {
            throw GuestMemoryError.outOfBounds(address: address, length: 1)
        }
        let available = Int(min(UInt64(limit), region.end - address))
        let bytes = try buffer(at: address, length: available)
        let length = bytes.firstIndex(of: 0) ?? available
        return String(decoding: bytes.prefix(length), as: UTF8.self)
    }
}
