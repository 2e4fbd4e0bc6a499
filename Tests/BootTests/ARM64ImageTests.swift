import Testing
@testable import Boot

/// The arm64 Image header (Documentation/arch/arm64/booting.rst).
@Suite(.timeLimit(.minutes(5))) struct ARM64ImageTests {
    /// A header: code0, code1, text_offset, image_size, flags, three reserved words, magic, res5.
    static func header(textOffset: UInt64 = 0, imageSize: UInt64 = 0x200_0000, flags: UInt64 = 0xA, magic: UInt32 = ARM64Image.magic) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes.setLittleEndian(UInt32(0xFA40_5A4D), at: 0)
        bytes.setLittleEndian(textOffset, at: 8)
        bytes.setLittleEndian(imageSize, at: 16)
        bytes.setLittleEndian(flags, at: 24)
        bytes.setLittleEndian(magic, at: 56)
        return bytes
    }

    @Test func parsesTheHeader() throws {
        let image = try ARM64Image(header: Self.header(), fileSize: 0x180_0000)
        #expect(image.textOffset == 0 && image.imageSize == 0x200_0000 && image.pageSize == 4096)
        #expect(try ARM64Image(header: Self.header(flags: 0x4), fileSize: 1).pageSize == 16 << 10)
    }

    @Test func oldImagesGetTheHistoricTextOffset() throws {
        let image = try ARM64Image(header: Self.header(textOffset: 0x1234, imageSize: 0), fileSize: 0x80_0000)
        #expect(image.textOffset == 0x8_0000 && image.imageSize == 0x80_0000)
    }

    @Test func refusals() {
        #expect(throws: BootError.truncated(what: "arm64 Image header", needed: 64, available: 10)) {
            try ARM64Image(header: Array(Self.header().prefix(10)), fileSize: 10)
        }
        #expect(throws: BootError.self) { try ARM64Image(header: Self.header(magic: 0x5344_5241), fileSize: 64) }
        #expect(throws: BootError.self) { try ARM64Image(header: Self.header(flags: 1), fileSize: 64) }  // big-endian
        #expect(throws: BootError.self) { try ARM64Image(header: Self.header(imageSize: 0x1000), fileSize: 0x2000) }  // smaller than the file
        #expect(throws: BootError.self) { try ARM64Image(header: Self.header(textOffset: 0x20_0000), fileSize: 64) }
    }
}
