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

/// What a host access to a guest range would reach.
public enum GuestAccess: Equatable, Sendable {
    /// Guest RAM of one region, all of it shared: the host may touch it.
    case shared
    /// Guest RAM of one region, some of it private to the guest.
    case `private`
    /// Not wholly inside one region.
    case outside
}

/// A guest's physical address space: regions of host memory by guest physical
/// address, with bounds-checked access. Every access must lie wholly within one
/// region; nothing outside a region is ever touched.
///
/// Ranges marked private (a confidential VM's memory that the guest converted,
/// as KVM_SET_MEMORY_ATTRIBUTES records it) are refused too: the host,
/// devices included, reaches shared memory only.
///
/// Shared by vCPU threads and devices: the region list is behind a mutex, and
/// the bytes themselves are guest memory, which the guest changes under
/// everybody's feet anyway.
public final class GuestAddressSpace: Sendable {
    private struct State {
        var regions: [GuestRegion] = []
        /// Sorted, disjoint and not touching: merged on every change.
        var privateRanges: [Range<UInt64>] = []
        /// While writes are tracked: by region start, one bit per page the
        /// host may have written through this space since the bitmap was taken.
        var written: [UInt64: [UInt64]]?
        /// While set, devices must not give RAM's pages back to the host.
        var discardsHeld = false
    }
    private let state = Mutex(State())

    public init() {}

    /// The regions, by address.
    public var regions: [GuestRegion] { state.withLock { $0.regions } }

    /// Whether devices may give RAM's pages back to the host (a balloon's
    /// MADV_REMOVE or MADV_DONTNEED). A live snapshot holds discards while it
    /// copies: a page discarded before its copy would be lost to the file.
    /// A held discard is skipped, not replayed (the guest may reuse the
    /// pages by then); the host just does not get them back.
    public var discardsHeld: Bool {
        get { state.withLock { $0.discardsHeld } }
        set { state.withLock { $0.discardsHeld = newValue } }
    }

    /// Adds a region; it must not overlap an existing one.
    public func add(_ mapping: MemoryMapping, at start: GuestAddress) throws {
        let size = UInt64(mapping.size)
        guard let end = start.adding(size) else {
            throw GuestMemoryError.addressOverflow(address: start.rawValue, length: size)
        }
        try state.withLock { state in
            for region in state.regions where start < region.end && region.start < end {
                throw GuestMemoryError.overlap(address: start.rawValue, size: size)
            }
            state.regions.append(GuestRegion(start: start, mapping: mapping))
            state.regions.sort { $0.start < $1.start }
            if state.written != nil { state.written![start.rawValue] = Self.emptyBitmap(for: mapping) }
        }
    }

    /// The region holding `[address, address + length)`, if one does (private
    /// or not).
    public func region(containing address: GuestAddress, length: UInt64 = 1) -> GuestRegion? {
        state.withLock { state in state.regions.first { $0.contains(address, length: length) } }
    }

    /// Whether the whole range is guest RAM of a single region (private or not).
    public func contains(_ address: GuestAddress, length: UInt64) -> Bool {
        region(containing: address, length: length) != nil
    }

    /// What a host access to `[address, address + length)` would reach.
    public func access(_ address: GuestAddress, length: UInt64) -> GuestAccess {
        state.withLock { state in
            guard state.regions.contains(where: { $0.contains(address, length: length) }) else { return .outside }
            return Self.overlapsPrivate(state.privateRanges, address.rawValue, length) ? .private : .shared
        }
    }

    // MARK: Private ranges

    /// Marks `range` private (or shared again). Callers keep it page-aligned
    /// and inside RAM; the space only records it.
    public func setPrivate(_ range: Range<UInt64>, _ isPrivate: Bool) {
        guard !range.isEmpty else { return }
        state.withLock { state in
            var kept: [Range<UInt64>] = []
            for existing in state.privateRanges {
                if existing.lowerBound < range.lowerBound { kept.append(existing.lowerBound..<min(existing.upperBound, range.lowerBound)) }
                if existing.upperBound > range.upperBound { kept.append(max(existing.lowerBound, range.upperBound)..<existing.upperBound) }
            }
            if isPrivate { kept.append(range) }
            kept.sort { $0.lowerBound < $1.lowerBound }
            var merged: [Range<UInt64>] = []
            for next in kept where !next.isEmpty {
                if let last = merged.last, last.upperBound >= next.lowerBound {
                    merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, next.upperBound)
                } else {
                    merged.append(next)
                }
            }
            state.privateRanges = merged
        }
    }

    /// The private ranges, by address (merged).
    public var privateRanges: [Range<UInt64>] { state.withLock { $0.privateRanges } }

    /// The parts of `range` that are private, by address.
    public func privateParts(of range: Range<UInt64>) -> [Range<UInt64>] {
        state.withLock { state in
            state.privateRanges.compactMap { existing in
                let lower = max(existing.lowerBound, range.lowerBound), upper = min(existing.upperBound, range.upperBound)
                return lower < upper ? lower..<upper : nil
            }
        }
    }

    private static func overlapsPrivate(_ ranges: [Range<UInt64>], _ address: UInt64, _ length: UInt64) -> Bool {
        guard !ranges.isEmpty else { return false }
        let end = address &+ max(length, 1)
        return ranges.contains { $0.lowerBound < end && address < $0.upperBound }
    }

    // MARK: Written pages

    /// Starts recording the pages the host writes through this space (for
    /// diff snapshots: KVM's dirty log sees only the guest's own writes).
    /// Every mutable view `buffer` hands out counts as a write; reads pass
    /// `writing: false`. Bitmaps start empty.
    public func startTrackingWrites() {
        state.withLock { state in
            var written: [UInt64: [UInt64]] = [:]
            for region in state.regions { written[region.start.rawValue] = Self.emptyBitmap(for: region.mapping) }
            state.written = written
        }
    }

    /// Stops recording and drops the bitmaps.
    public func stopTrackingWrites() { state.withLock { $0.written = nil } }

    /// Whether host writes are recorded.
    public var tracksWrites: Bool { state.withLock { $0.written != nil } }

    /// The pages of the region at `start` written through this space since
    /// the last call (or since tracking started), one bit per page, and an
    /// empty bitmap in their place; nil while writes are not tracked.
    public func takeWrittenPages(regionStart start: GuestAddress) -> [UInt64]? {
        state.withLock { state in
            guard let bitmap = state.written?[start.rawValue] else { return nil }
            state.written![start.rawValue] = [UInt64](repeating: 0, count: bitmap.count)
            return bitmap
        }
    }

    /// Records a host write to `[address, address + length)` made without a
    /// view from `buffer` (madvise, for one): the range reads differently
    /// now. Outside RAM it records nothing.
    public func markWritten(_ address: GuestAddress, length: UInt64) {
        state.withLock { state in
            guard state.written != nil, let region = state.regions.first(where: { $0.contains(address, length: length) }) else { return }
            Self.mark(&state, region: region, offset: address - region.start, length: length)
        }
    }

    private static func emptyBitmap(for mapping: MemoryMapping) -> [UInt64] {
        [UInt64](repeating: 0, count: (mapping.size / MemoryMapping.pageSize + 63) / 64)
    }

    /// Sets the bits of the pages `[offset, offset + length)` of `region` touches (under the lock).
    private static func mark(_ state: inout State, region: GuestRegion, offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let page = UInt64(MemoryMapping.pageSize)
        let first = Int(offset / page), last = Int((offset + length - 1) / page)
        state.written![region.start.rawValue]!.withUnsafeMutableBufferPointer { bits in
            for index in first...last { bits[index / 64] |= 1 << UInt64(index % 64) }
        }
    }

    // MARK: Access

    /// A host view of `[address, address + length)`; throws when the range is not
    /// inside one region, or touches private memory. The buffer is valid while
    /// the region's mapping lives. While writes are tracked, the view's pages
    /// count as written unless `writing` is false (a view only read).
    public func buffer(at address: GuestAddress, length: Int, writing: Bool = true) throws -> UnsafeMutableRawBufferPointer {
        guard length >= 0 else { throw GuestMemoryError.outOfBounds(address: address.rawValue, length: length) }
        let found: GuestRegion? = try state.withLock { state in
            guard let region = state.regions.first(where: { $0.contains(address, length: UInt64(length)) }) else { return nil }
            if Self.overlapsPrivate(state.privateRanges, address.rawValue, UInt64(length)) {
                throw GuestMemoryError.privateMemory(address: address.rawValue, length: length)
            }
            if writing, state.written != nil { Self.mark(&state, region: region, offset: address - region.start, length: UInt64(length)) }
            return region
        }
        guard let region = found else { throw GuestMemoryError.outOfBounds(address: address.rawValue, length: length) }
        // Sound: the region contains the range, so it lies inside the region's mapping.
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
        Array(try buffer(at: address, length: length, writing: false))
    }

    /// Stores a little-endian integer.
    public func store<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws {
        let target = try buffer(at: address, length: MemoryLayout<T>.size)
        target.storeBytes(of: value.littleEndian, toByteOffset: 0, as: T.self)
    }

    /// Loads a little-endian integer.
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: GuestAddress) throws -> T {
        let source = try buffer(at: address, length: MemoryLayout<T>.size, writing: false)
        return T(littleEndian: source.loadUnaligned(fromByteOffset: 0, as: T.self))
    }

    /// Reads a NUL-terminated UTF-8 string of at most `limit` bytes (bounded: a
    /// missing terminator ends the string at the limit or at the region's end).
    public func string(at address: GuestAddress, limit: Int = 4096) throws -> String {
        guard let region = region(containing: address) else {
            throw GuestMemoryError.outOfBounds(address: address.rawValue, length: 1)
        }
        let available = Int(min(UInt64(limit), region.end - address))
        let bytes = try buffer(at: address, length: available, writing: false)
        let length = bytes.firstIndex(of: 0) ?? available
        return String(decoding: bytes.prefix(length), as: UTF8.self)
    }
}
