import CLZMA
import CZlib
import CZstd

/// gzip through zlib.
enum Inflate {
    static func gunzip(_ input: ArraySlice<UInt8>, expectedSize: Int) throws -> [UInt8] {
        var stream = z_stream()
        // windowBits 15 + 16: gzip wrapper only.
        guard inflateInit2_(&stream, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DecompressionError.corrupt(format: "gzip", reason: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: max(expectedSize, input.count * 4, 1 << 20))
        var produced = 0
        var source = Array(input)
        let status: Int32 = source.withUnsafeMutableBufferPointer { inBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = UInt32(inBuffer.count)
            while true {
                if produced == output.count {
                    if output.count >= decompressionLimit { return Z_BUF_ERROR }
                    output += [UInt8](repeating: 0, count: output.count)
                }
                let result: Int32 = output.withUnsafeMutableBufferPointer { outBuffer in
                    // Sound: zlib writes at most avail_out bytes from next_out.
                    stream.next_out = outBuffer.baseAddress! + produced
                    stream.avail_out = UInt32(min(outBuffer.count - produced, Int(UInt32.max)))
                    let before = stream.avail_out
                    let result = inflate(&stream, Z_NO_FLUSH)
                    produced += Int(before - stream.avail_out)
                    return result
                }
                if result == Z_STREAM_END { return Z_STREAM_END }
                if result != Z_OK { return result }
                if stream.avail_in == 0 { return Z_DATA_ERROR }
            }
        }
        guard status == Z_STREAM_END else {
            throw DecompressionError.corrupt(format: "gzip", reason: status == Z_BUF_ERROR ? "output limit reached" : "zlib status \(status)")
        }
        output.removeLast(output.count - produced)
        return output
    }
}

/// zstd through libzstd's streaming decoder (the stream ends before the
/// build's appended size).
enum ZstdStream {
    static func decompress(_ input: ArraySlice<UInt8>, expectedSize: Int) throws -> [UInt8] {
        guard let context = ZSTD_createDStream() else { throw DecompressionError.corrupt(format: "zstd", reason: "no decoder") }
        defer { ZSTD_freeDStream(context) }
        ZSTD_initDStream(context)
        var output = [UInt8](repeating: 0, count: max(expectedSize, input.count * 4, 1 << 20))
        var produced = 0
        let source = Array(input)
        var consumed = 0
        while true {
            if produced == output.count {
                guard output.count < decompressionLimit else { throw DecompressionError.tooLarge(limit: decompressionLimit) }
                output += [UInt8](repeating: 0, count: output.count)
            }
            let (remaining, inPosition, outPosition): (Int, Int, Int) = source.withUnsafeBufferPointer { inBuffer in
                output.withUnsafeMutableBufferPointer { outBuffer in
                    var inDescriptor = ZSTD_inBuffer(src: inBuffer.baseAddress, size: inBuffer.count, pos: consumed)
                    var outDescriptor = ZSTD_outBuffer(dst: outBuffer.baseAddress, size: outBuffer.count, pos: produced)
                    let result = ZSTD_decompressStream(context, &outDescriptor, &inDescriptor)
                    return (ZSTD_isError(result) != 0 ? -1 : Int(result), inDescriptor.pos, outDescriptor.pos)
                }
            }
            guard remaining >= 0 else { throw DecompressionError.corrupt(format: "zstd", reason: "decoder error at input offset \(inPosition)") }
            consumed = inPosition
            produced = outPosition
            if remaining == 0 { break }  // frame complete
            if consumed == source.count && produced < output.count {
                throw DecompressionError.corrupt(format: "zstd", reason: "input ends inside the frame")
            }
        }
        output.removeLast(output.count - produced)
        return output
    }
}

/// xz through liblzma (the stream ends before the build's appended size).
enum XZStream {
    static func decompress(_ input: ArraySlice<UInt8>, expectedSize: Int) throws -> [UInt8] {
        var stream = lzma_stream()
        guard lzma_stream_decoder(&stream, UInt64.max, 0) == LZMA_OK else {
            throw DecompressionError.corrupt(format: "xz", reason: "liblzma could not start")
        }
        defer { lzma_end(&stream) }
        var output = [UInt8](repeating: 0, count: max(expectedSize, input.count * 4, 1 << 20))
        var produced = 0
        let source = Array(input)
        let status: lzma_ret = source.withUnsafeBufferPointer { inBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = inBuffer.count
            while true {
                if produced == output.count {
                    if output.count >= decompressionLimit { return LZMA_MEMLIMIT_ERROR }
                    output += [UInt8](repeating: 0, count: output.count)
                }
                let result: lzma_ret = output.withUnsafeMutableBufferPointer { outBuffer in
                    stream.next_out = outBuffer.baseAddress! + produced
                    stream.avail_out = outBuffer.count - produced
                    let before = stream.avail_out
                    let result = lzma_code(&stream, stream.avail_in == 0 ? LZMA_FINISH : LZMA_RUN)
                    produced += before - stream.avail_out
                    return result
                }
                if result != LZMA_OK { return result }
                if stream.avail_in == 0 && stream.avail_out > 0 { return LZMA_BUF_ERROR }
            }
        }
        guard status == LZMA_STREAM_END else {
            throw DecompressionError.corrupt(format: "xz", reason: "liblzma status \(status.rawValue)")
        }
        output.removeLast(output.count - produced)
        return output
    }
}
