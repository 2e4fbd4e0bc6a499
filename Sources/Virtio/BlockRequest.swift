/// A virtio-blk request header (virtio 1.2, section 5.2.6): what the driver
/// asks for, parsed from the first 16 device-readable bytes.
public struct BlockRequestHeader: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case read, write, flush, getID, discard, writeZeroes
        case unsupported(UInt32)

        init(_ raw: UInt32) {
            switch raw {
            case 0: self = .read
            case 1: self = .write
            case 4: self = .flush
            case 8: self = .getID
            case 11: self = .discard
            case 13: self = .writeZeroes
            default: self = .unsupported(raw)
            }
        }
    }

    public let kind: Kind
    /// In 512-byte sectors, whatever the block size.
    public let sector: UInt64

    public static let size = 16

    /// Parses a header; nil when fewer than 16 bytes are given.
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= Self.size else { return nil }
        kind = Kind(bytes.littleEndian(at: 0, as: UInt32.self))
        sector = bytes.littleEndian(at: 8)
    }
}

/// One range of a discard or write-zeroes request (struct
/// virtio_blk_discard_write_zeroes).
public struct BlockRange: Equatable, Sendable {
    public let sector: UInt64
    public let sectorCount: UInt32
    /// Bit 0: the device may unmap (write zeroes only); the other bits are reserved.
    public let flags: UInt32

    public static let size = 16

    public init?(_ bytes: ArraySlice<UInt8>) {
        guard bytes.count >= Self.size else { return nil }
        sector = bytes.littleEndian(at: 0)
        sectorCount = bytes.littleEndian(at: 8)
        flags = bytes.littleEndian(at: 12)
    }
}

/// The status byte a request ends with.
public enum BlockStatus: UInt8, Sendable {
    case ok = 0, ioError = 1, unsupported = 2
}
