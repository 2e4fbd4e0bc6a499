import GuestMemory

/// One buffer of a descriptor chain, checked to lie inside one guest RAM region.
public struct DescriptorSegment: Equatable, Sendable {
    public let address: GuestAddress
    public let length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    public let isWritable: Bool
}

/// A chain the driver made available: its head index (to return it in the
/// used ring) and its buffers, device-readable ones first. Every segment was
/// checked when the chain was taken from the ring, so reading and writing
/// through `GuestAddressSpace` cannot leave guest RAM even if the driver
/// rewrites the descriptors afterwards.
public struct DescriptorChain: Sendable {
    public let head: UInt16
    public let segments: [DescriptorSegment]

    public var readable: ArraySlice<DescriptorSegment> { segments.prefix { !$0.isWritable } }
    public var writable: ArraySlice<DescriptorSegment> { segments.drop { !$0.isWritable } }
    public var readableLength: Int { readable.reduce(0) { $0 + Int($1.length) } }
    public var writableLength: Int { writable.reduce(0) { $0 + Int($1.length) } }
}

/// Reads a chain's device-readable bytes in order.
public struct ChainReader {
    private let memory: GuestAddressSpace
    private let segments: ArraySlice<DescriptorSegment>
    private var segment: Int
    private var offset: UInt32 = 0
    /// Bytes not read yet.
    public private(set) var remaining: Int

    public init(_ chain: DescriptorChain, memory: GuestAddressSpace) {
        self.memory = memory
        segments = chain.readable
        segment = segments.startIndex
        remaining = chain.readableLength
    }

    /// Copies up to `buffer.count` bytes; returns how many.
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        forEachPiece(upTo: buffer.count) { piece in
            // Sound: `piece` is at most `buffer.count - copied` bytes.
            UnsafeMutableRawBufferPointer(rebasing: buffer[copied..<(copied + piece.count)]).copyMemory(from: UnsafeRawBufferPointer(piece))
            copied += piece.count
        }
        return copied
    }

    /// Reads exactly `count` bytes, or nil when fewer remain.
    public mutating func readBytes(_ count: Int) -> [UInt8]? {
        guard count <= remaining else { return nil }
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            initialized = read(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Host views of the next `count` bytes (at most what remains), consumed:
    /// for preadv/pwritev straight between a file and guest memory.
    public mutating func take(_ count: Int) -> [UnsafeMutableRawBufferPointer] {
        var pieces: [UnsafeMutableRawBufferPointer] = []
        forEachPiece(upTo: count) { pieces.append($0) }
        return pieces
    }

    /// Skips up to `count` bytes.
    public mutating func skip(_ count: Int) {
        forEachPiece(upTo: count) { _ in }
    }

    private mutating func forEachPiece(upTo limit: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        var left = min(limit, remaining)
        while left > 0, segment < segments.endIndex {
            let current = segments[segment]
            let available = Int(current.length - offset)
            if available == 0 { segment += 1; offset = 0; continue }
            let count = min(available, left)
            // The segment was checked against guest RAM when the chain was walked,
            // so this lookup only fails if a region went away (it never does while
            // devices run); stop reading rather than trap.
            guard let view = try? memory.buffer(at: current.address + UInt64(offset), length: count) else {
                remaining = 0
                return
            }
            body(view)
            offset += UInt32(count)
            left -= count
            remaining -= count
        }
    }
}

/// Writes into a chain's device-writable bytes in order and counts them (the
/// used ring's length).
public struct ChainWriter {
    private let memory: GuestAddressSpace
    private let segments: ArraySlice<DescriptorSegment>
    private var segment: Int
    private var offset: UInt32 = 0
    /// Bytes written so far (what the used ring reports).
    public private(set) var written = 0
    /// Bytes passed so far, written or skipped.
    public private(set) var position = 0
    /// Writable bytes not written yet.
    public private(set) var remaining: Int

    public init(_ chain: DescriptorChain, memory: GuestAddressSpace) {
        self.memory = memory
        segments = chain.writable
        segment = segments.startIndex
        remaining = chain.writableLength
    }

    /// Copies as many of `bytes` as fit; returns how many.
    @discardableResult
    public mutating func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        var copied = 0
        forEachPiece(upTo: bytes.count) { piece in
            piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[copied..<(copied + piece.count)]))
            copied += piece.count
        }
        return copied
    }

    @discardableResult
    public mutating func write(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { write($0) }
    }

    /// Host views of the next `count` writable bytes (at most what remains),
    /// counted as written: for preadv, getrandom and recv straight into guest memory.
    /// Call `unwrite` for bytes that were not filled after all.
    public mutating func take(_ count: Int) -> [UnsafeMutableRawBufferPointer] {
        var pieces: [UnsafeMutableRawBufferPointer] = []
        forEachPiece(upTo: count) { pieces.append($0) }
        return pieces
    }

    /// Moves to byte `target` of the writable part without writing or counting
    /// the bytes in between (they keep what the driver had there).
    public mutating func skip(to target: Int) {
        guard target > position else { return }
        let before = written
        forEachPiece(upTo: target - position) { _ in }
        written = before
    }

    /// Takes back the count of `count` bytes handed out by `take` but not filled.
    public mutating func unwrite(_ count: Int) {
        written -= min(count, written)
    }

    private mutating func forEachPiece(upTo limit: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) {
        var left = min(limit, remaining)
        while left > 0, segment < segments.endIndex {
            let current = segments[segment]
            let available = Int(current.length - offset)
            if available == 0 { segment += 1; offset = 0; continue }
            let count = min(available, left)
            guard let view = try? memory.buffer(at: current.address + UInt64(offset), length: count) else {
                remaining = 0
                return
            }
            body(view)
            offset += UInt32(count)
            left -= count
            remaining -= count
            written += count
            position += count
        }
    }
}
