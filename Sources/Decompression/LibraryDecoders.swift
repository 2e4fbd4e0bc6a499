import CLZMA
import CZlib
import CZstd

/// The output buffer of a streaming decoder: starts at a size guess and
/// doubles when full, up to `decompressionLimit`.
struct DecoderOutput {
    var bytes: [UInt8]
    var produced = 0

    init(expectedSize: Int, inputSize: Int) {
        bytes = [UInt8](repeating: 0, count: max(expectedSize, inputSize * 4, 1 << 20))
    }

    /// Makes room for more output; false when the limit is reached.
    mutating func makeRoom() -> Bool {
        guard produced == bytes.count else { return true }
        guard bytes.count < decompressionLimit else { return false }
        bytes += [UInt8](repeating: 0, count: bytes.count)
        return true
    }

    /// The bytes produced.
    mutating func finished() -> [UInt8] {
        bytes.removeLast(bytes.count - produced)
        return bytes
    }
}

/// gzip through zlib.
enum Inflate {
    static func gunzip(_ input: ArraySlice<UInt8>, expectedSize: Int) throws -> [UInt8] {
        var stream = z_stream()
        // windowBits 15 + 16: gzip wrapper only.
        guard inflateInit2_(&stream, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DecompressionError.corrupt(format: "gzip", reason: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        var output = DecoderOutput(expectedSize: expectedSize, inputSize: input.count)
        var source = Array(input)
        let status: Int32 = source.withUnsafeMutableBufferPointer { inBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = UInt32(inBuffer.count)
            while true {
                guard output.makeRoom() else { return Z_BUF_ERROR }
                let produced = output.produced
                let (result, written): (Int32, Int) = output.bytes.withUnsafeMutableBufferPointer { outBuffer in
                    // Sound: zlib writes at most avail_out bytes from next_out.
                    stream.next_out = outBuffer.baseAddress! + produced
                    stream.avail_out = UInt32(min(outBuffer.count - produced, Int(UInt32.max)))
                    let before = stream.avail_out
                    let result = inflate(&stream, Z_NO_FLUSH)
                    return (result, Int(before - stream.avail_out))
                }
                output.produced += written
                if result != Z_OK { return result }
                // Input used up with room left over: the stream is truncated.
                if stream.avail_in == 0 && stream.avail_out > 0 { return Z_DATA_ERROR }
            }
        }
        guard status == Z_STREAM_END else {
            throw DecompressionError.corrupt(format: "gzip", reason: status == Z_BUF_ERROR ? "output limit reached" : "zlib status \(status)")
        }
        return output.finished()
    }
}

/// zstd through libzstd's streaming decoder (the stream ends before the
/// build's appended size).
enum ZstdStream {
    static func decompress(_ input: ArraySlice<UInt8>, expectedSize: Int) throws -> [UInt8] {
        guard let context = ZSTD_createDStream() else { throw DecompressionError.corrupt(format: "zstd", reason: "no decoder") }
        defer { ZSTD_freeDStream(context) }
        ZSTD_initDStream(context)
        var output = DecoderOutput(expectedSize: expectedSize, inputSize: input.count)
        let source = Array(input)
        var consumed = 0
        while true {
            guard output.makeRoom() else { throw DecompressionError.tooLarge(limit: decompressionLimit) }
            let produced = output.produced
            let (remaining, inPosition, outPosition): (Int, Int, Int) = source.withUnsafeBufferPointer { inBuffer in
                output.bytes.withUnsafeMutableBufferPointer { outBuffer in
                    var inDescriptor = ZSTD_inBuffer(src: inBuffer.baseAddress, size: inBuffer.count, pos: consumed)
                    var outDescriptor = ZSTD_outBuffer(dst: outBuffer.baseAddress, size: outBuffer.count, pos: produced)
                    let result = ZSTD_decompressStream(context, &outDescriptor, &inDescriptor)
                    return (ZSTD_isError(result) != 0 ? -1 : Int(result), inDescriptor.pos, outDescriptor.pos)
                }
            }
            guard remaining >= 0 else { throw DecompressionError.corrupt(format: "zstd", reason: "decoder error at input offset \(inPosition)") }
            consumed = inPosition
            output.produced = outPosition
            if remaining == 0 { break }  // frame complete
            if consumed == source.count && outPosition < output.bytes.count {
                throw DecompressionError.corrupt(format: "zstd", reason: "input ends inside the frame")
            }
        }
        return output.finished()
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
        var output = DecoderOutput(expectedSize: expectedSize, inputSize: input.count)
        let source = Array(input)
        let status: lzma_ret = source.withUnsafeBufferPointer { inBuffer in
            stream.next_in = inBuffer.baseAddress
            stream.avail_in = inBuffer.count
            while true {
                guard output.makeRoom() else { return LZMA_MEMLIMIT_ERROR }
                let produced = output.produced
                let (result, written): (lzma_ret, Int) = output.bytes.withUnsafeMutableBufferPointer { outBuffer in
                    // Sound: liblzma writes at most avail_out bytes from next_out.
                    stream.next_out = outBuffer.baseAddress! + produced
                    stream.avail_out = outBuffer.count - produced
                    let before = stream.avail_out
                    let result = lzma_code(&stream, stream.avail_in == 0 ? LZMA_FINISH : LZMA_RUN)
                    return (result, before - stream.avail_out)
                }
                output.produced += written
                if result != LZMA_OK { return result }
                if stream.avail_in == 0 && stream.avail_out > 0 { return LZMA_BUF_ERROR }
            }
        }
        guard status == LZMA_STREAM_END else {
            throw DecompressionError.corrupt(format: "xz", reason: "liblzma status \(status.rawValue)")
        }
        return output.finished()
    }
}
