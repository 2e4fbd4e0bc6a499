/// The header of an arm64 Linux `Image` (Documentation/arch/arm64/booting.rst):
/// 64 bytes at the start of the file, with the magic "ARM\x64" at offset 56.
/// The image is placed `textOffset` bytes above a 2 MiB-aligned base in RAM,
/// and needs `imageSize` bytes there (its BSS included).
public struct ARM64Image: Equatable, Sendable {
    public static let headerSize = 64
    /// "ARM\x64", little-endian, at offset 56.
    public static let magic: UInt32 = 0x644D_5241
    /// The placement alignment of the base the image goes above.
    public static let baseAlignment: UInt64 = 2 << 20

    public let textOffset: UInt64
    /// Bytes the kernel occupies from its load address, BSS included.
    public let imageSize: UInt64
    public let flags: UInt64
    /// The kernel's page size from flags bits 2:1 (0 when unspecified).
    public var pageSize: UInt64 {
        switch (flags >> 1) & 3 {
        case 1: return 4 << 10
        case 2: return 16 << 10
        case 3: return 64 << 10
        default: return 0
        }
    }

    /// Parses the header of `bytes` (the file's first bytes at least); `fileSize`
    /// is the whole file's size, for images that predate `imageSize`.
    public init(header bytes: [UInt8], fileSize: UInt64) throws {
        guard bytes.count >= Self.headerSize else {
            throw BootError.truncated(what: "arm64 Image header", needed: Self.headerSize, available: bytes.count)
        }
        let found = bytes.littleEndian(UInt32.self, at: 56)
        guard found == Self.magic else {
            throw BootError.badMagic(what: "arm64 Image", expected: "\"ARM\\x64\" (0x644d5241) at offset 56", found: hex(found))
        }
        let flags = bytes.littleEndian(UInt64.self, at: 24)
        guard flags & 1 == 0 else { throw BootError.notLoadable("the arm64 Image is big-endian (flags bit 0); Kestrel boots little-endian kernels") }
        let size = bytes.littleEndian(UInt64.self, at: 16)
        // Before Linux 3.17 image_size was 0 and text_offset was 0x80000 in practice.
        textOffset = size == 0 ? 0x8_0000 : bytes.littleEndian(UInt64.self, at: 8)
        imageSize = size == 0 ? fileSize : size
        guard imageSize >= fileSize, textOffset < Self.baseAlignment else {
            throw BootError.notLoadable("the arm64 Image header is inconsistent: text_offset \(hex(textOffset)), image_size \(hex(imageSize)) for a \(fileSize)-byte file")
        }
        self.flags = flags
    }
}
