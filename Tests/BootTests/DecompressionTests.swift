import CLZMA
import CZlib
import CZstd
@testable import Decompression
import Testing

@Suite(.timeLimit(.minutes(5))) struct DecompressionTests {
    static let text: [UInt8] = Array((0..<5000).flatMap { "line \($0 % 97) of a kernel-like payload\n".utf8 })

    @Test func lz4LegacyBlocksWithLiteralsMatchesAndOverlaps() throws {
        // Block: token 0x54 = 5 literals "abcde", match length 4+4=8 at offset 5 (overlapping),
        // then token 0x30 = 3 final literals "xyz".
        let block: [UInt8] = [0x54] + Array("abcde".utf8) + [5, 0] + [0x30] + Array("xyz".utf8)
        let frame = LZ4Legacy.magic + [UInt8(block.count), 0, 0, 0] + block + [0x10, 0, 0, 0]  // + appended size
        #expect(try LZ4Legacy.decompress(frame[...]) == Array("abcdeabcdeabcxyz".utf8))
        // Extended literal length (15 + 3 = 18).
        let long: [UInt8] = [0xF0, 3] + [UInt8](repeating: 0x41, count: 18)
        #expect(try LZ4Legacy.decompress((LZ4Legacy.magic + [UInt8(long.count), 0, 0, 0] + long)[...]) == [UInt8](repeating: 0x41, count: 18))
    }

    @Test func lz4RefusesCorruptBlocks() {
        let badOffset: [UInt8] = [0x14, 0x61, 9, 0]  // 1 literal, then a match 9 bytes back
        #expect(throws: DecompressionError.self) { try LZ4Legacy.decompress((LZ4Legacy.magic + [4, 0, 0, 0] + badOffset)[...]) }
        #expect(throws: DecompressionError.self) { try LZ4Legacy.decompress((LZ4Legacy.magic + [200, 0, 0, 0, 1, 2])[...]) }
        #expect(throws: DecompressionError.self) { try LZ4Legacy.decompress([1, 2, 3, 4][...]) }
    }

    @Test func gzipRoundTrip() throws {
        let gzip = Self.gzip(Self.text)
        let compressed = gzip + [1, 2, 3, 4]  // the build's appended size
        #expect(PayloadCompression.detect(compressed) == .gzip)
        #expect(try PayloadCompression.gzip.decompress(compressed[...]) == Self.text)
        #expect(throws: DecompressionError.self) { try PayloadCompression.gzip.decompress(compressed.prefix(gzip.count / 2)) }
    }

    @Test func zstdRoundTrip() throws {
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(Self.text.count))
        let size = Self.text.withUnsafeBytes { inBuffer in
            output.withUnsafeMutableBytes { ZSTD_compress($0.baseAddress, $0.count, inBuffer.baseAddress, inBuffer.count, 3) }
        }
        #expect(ZSTD_isError(size) == 0)
        let compressed = Array(output.prefix(size)) + [9, 9, 9, 9]
        #expect(PayloadCompression.detect(compressed) == .zstd)
        #expect(try PayloadCompression.zstd.decompress(compressed[...]) == Self.text)
        #expect(throws: DecompressionError.self) { try PayloadCompression.zstd.decompress(compressed.prefix(size / 2)) }
    }

    @Test func xzRoundTrip() throws {
        var output = [UInt8](repeating: 0, count: Self.text.count + 4096)
        var position = 0
        let status = Self.text.withUnsafeBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer {
                lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, nil, inBuffer.baseAddress, inBuffer.count, $0.baseAddress, &position, $0.count)
            }
        }
        #expect(status == LZMA_OK)
        let compressed = Array(output.prefix(position)) + [0, 0, 0, 0]
        #expect(PayloadCompression.detect(compressed) == .xz)
        #expect(try PayloadCompression.xz.decompress(compressed[...]) == Self.text)
    }

    /// gzip compression of `input` (wrapper for the tests below).
    static func gzip(_ input: [UInt8]) -> [UInt8] {
        var stream = z_stream()
        #expect(deflateInit2_(&stream, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK)
        var source = input
        var output = [UInt8](repeating: 0, count: input.count + 1024)
        let produced: Int = source.withUnsafeMutableBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer { outBuffer in
                stream.next_in = inBuffer.baseAddress
                stream.avail_in = UInt32(inBuffer.count)
                stream.next_out = outBuffer.baseAddress
                stream.avail_out = UInt32(outBuffer.count)
                _ = deflate(&stream, Z_FINISH)
                return outBuffer.count - Int(stream.avail_out)
            }
        }
        deflateEnd(&stream)
        return Array(output.prefix(produced))
    }

    static func zstd(_ input: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let size = input.withUnsafeBytes { inBuffer in
            output.withUnsafeMutableBytes { ZSTD_compress($0.baseAddress, $0.count, inBuffer.baseAddress, inBuffer.count, 3) }
        }
        return Array(output.prefix(size))
    }

    static func xz(_ input: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: input.count + 4096)
        var position = 0
        _ = input.withUnsafeBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer {
                lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, nil, inBuffer.baseAddress, inBuffer.count, $0.baseAddress, &position, $0.count)
            }
        }
        return Array(output.prefix(position))
    }

    /// Highly compressible output several times the first buffer guess (so the
    /// buffer grows), and output of exactly the guessed size (so the last bytes
    /// fill it to the brim).
    @Test(arguments: [PayloadCompression.gzip, .zstd, .xz])
    func outputBufferGrowsAndFillsExactly(_ format: PayloadCompression) throws {
        for size in [5 << 20, 1 << 20] {
            let plain = (0..<size).map { UInt8(truncatingIfNeeded: $0 / 4096) }
            let compressed: [UInt8]
            switch format {
            case .gzip: compressed = Self.gzip(plain)
            case .zstd: compressed = Self.zstd(plain)
            default: compressed = Self.xz(plain)
            }
            #expect(compressed.count * 4 < 1 << 20)  // the guess is the 1 MiB floor
            #expect(try format.decompress((compressed + [0, 0, 0, 0])[...], expectedSize: 0) == plain, "\(format) \(size)")
        }
    }

    @Test func unsupportedFormatsAreNamed() {
        #expect(PayloadCompression.detect([0x42, 0x5A, 0x68, 0x39]) == .bzip2)
        #expect(throws: DecompressionError.unsupported("bzip2")) { try PayloadCompression.bzip2.decompress([0x42][...]) }
    }
}
