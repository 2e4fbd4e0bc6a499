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

/// A position in a run of segments: hands out host views of the next bytes.
/// The segments were checked against guest RAM when the chain was walked, so
/// a view fails only if a RAM region went away, which never happens while
/// devices run; the cursor then ends rather than trap.
struct SegmentCursor {
    private let memory: GuestAddressSpace
    private let segments: ArraySlice<DescriptorSegment>
    /// Whether the views are written (they then count as written pages).
    private let writing: Bool
    private var segment: Int
    private var offset: UInt32 = 0
    /// Bytes not passed yet.
    private(set) var remaining: Int

    init(_ segments: ArraySlice<DescriptorSegment>, memory: GuestAddressSpace, writing: Bool) {
        self.memory = memory
        self.segments = segments
        self.writing = writing
        segment = segments.startIndex
        remaining = segments.reduce(0) { $0 + Int($1.length) }
    }

    /// Calls `body` with views of the next `limit` bytes (fewer at the end); returns how many it passed.
    @discardableResult
    mutating func advance(upTo limit: Int, _ body: (UnsafeMutableRawBufferPointer) -> Void) -> Int {
        var left = min(limit, remaining)
        var passed = 0
        while left > 0, segment < segments.endIndex {
            let current = segments[segment]
            let available = Int(current.length - offset)
            if available == 0 { segment += 1; offset = 0; continue }
            let count = min(available, left)
            guard let view = try? memory.buffer(at: current.address + UInt64(offset), length: count, writing: writing) else {
                remaining = 0
                break
            }
            body(view)
            offset += UInt32(count)
            left -= count
            remaining -= count
            passed += count
        }
        return passed
    }
}

/// Reads a chain's device-readable bytes in order.
public struct ChainReader {
    private var cursor: SegmentCursor
    /// Bytes not read yet.
    public var remaining: Int { cursor.remaining }

    public init(_ chain: DescriptorChain, memory: GuestAddressSpace) {
        cursor = SegmentCursor(chain.readable, memory: memory, writing: false)
    }

    /// Copies up to `buffer.count` bytes; returns how many.
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        cursor.advance(upTo: buffer.count) { piece in
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
        cursor.advance(upTo: count) { pieces.append($0) }
        return pieces
    }

    /// Skips up to `count` bytes.
    public mutating func skip(_ count: Int) {
        cursor.advance(upTo: count) { _ in }
    }
}

/// Writes into a chain's device-writable bytes in order and counts them (the
/// used ring's length).
public struct ChainWriter {
    private var cursor: SegmentCursor
    /// Bytes written so far (what the used ring reports).
    public private(set) var written = 0
    /// Bytes passed so far, written or skipped.
    public private(set) var position = 0
    /// Writable bytes not written yet.
    public var remaining: Int { cursor.remaining }

    public init(_ chain: DescriptorChain, memory: GuestAddressSpace) {
        cursor = SegmentCursor(chain.writable, memory: memory, writing: true)
    }

    /// Copies as many of `bytes` as fit; returns how many.
    @discardableResult
    public mutating func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        var copied = 0
        let count = cursor.advance(upTo: bytes.count) { piece in
            piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[copied..<(copied + piece.count)]))
            copied += piece.count
        }
        written += count
        position += count
        return count
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
        let passed = cursor.advance(upTo: count) { pieces.append($0) }
        written += passed
        position += passed
        return pieces
    }

    /// Moves to byte `target` of the writable part without writing or counting
    /// the bytes in between (they keep what the driver had there).
    public mutating func skip(to target: Int) {
        guard target > position else { return }
        position += cursor.advance(upTo: target - position) { _ in }
    }

    /// Takes back the count of `count` bytes handed out by `take` but not filled.
    public mutating func unwrite(_ count: Int) {
        written -= min(count, written)
    }
}
