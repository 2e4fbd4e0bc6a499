/// LZ4 in the legacy frame format the kernel build uses (`lz4 -l`): magic
/// 0x184C2102, then blocks of `u32 compressed size` + an LZ4 block, each
/// decompressing on its own to at most 8 MiB. Our own decoder.
public enum LZ4Legacy {
    public static let magic: [UInt8] = [0x02, 0x21, 0x4C, 0x18]
    static let maximumBlockOutput = 8 << 20

    public static func decompress(_ input: ArraySlice<UInt8>) throws -> [UInt8] {
        let bytes = Array(input)
        guard bytes.starts(with: magic) else { throw DecompressionError.corrupt(format: "LZ4", reason: "no legacy-frame magic") }
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count * 4)
        var position = 4
        while bytes.count - position >= 4 {
            let size = Int(bytes[position]) | Int(bytes[position + 1]) << 8 | Int(bytes[position + 2]) << 16 | Int(bytes[position + 3]) << 24
            if size == 0x184C_2102 { position += 4; continue }  // concatenated frames
            // What follows the last block is the build's appended size: stop there.
            guard size > 0, size <= bytes.count - position - 4 else {
                if bytes.count - position == 4 { break }
                throw DecompressionError.corrupt(format: "LZ4", reason: "block of \(size) bytes at offset \(position) runs past the input")
            }
            position += 4
            try decodeBlock(bytes, from: position, to: position + size, into: &output)
            position += size
            guard output.count <= decompressionLimit else { throw DecompressionError.tooLarge(limit: decompressionLimit) }
        }
        return output
    }

    /// Decodes one LZ4 block (sequences of literals and back-references).
    static func decodeBlock(_ input: [UInt8], from start: Int, to end: Int, into output: inout [UInt8]) throws {
        let blockStart = output.count
        var position = start
        func fail(_ reason: String) -> DecompressionError { .corrupt(format: "LZ4", reason: "\(reason) at input offset \(position)") }
        while position < end {
            let token = input[position]
            position += 1
            var literals = Int(token >> 4)
            if literals == 15 {
                while true {
                    guard position < end else { throw fail("literal length runs past the block") }
                    let byte = input[position]
                    position += 1
                    literals += Int(byte)
                    if byte != 255 { break }
                }
            }
            guard literals <= end - position else { throw fail("literals run past the block") }
            output.append(contentsOf: input[position..<(position + literals)])
            position += literals
            if position == end { break }  // the last sequence has literals only
            guard end - position >= 2 else { throw fail("truncated match offset") }
            let offset = Int(input[position]) | Int(input[position + 1]) << 8
            position += 2
            guard offset > 0, offset <= output.count - blockStart else { throw fail("match offset \(offset) points before the block") }
            var length = Int(token & 0xF) + 4
            if token & 0xF == 15 {
                while true {
                    guard position < end else { throw fail("match length runs past the block") }
                    let byte = input[position]
                    position += 1
                    length += Int(byte)
                    if byte != 255 { break }
                }
            }
            guard output.count - blockStart + length <= maximumBlockOutput else { throw fail("block output exceeds 8 MiB") }
            let from = output.count - offset
            if offset >= length {
                // Sound: the source range lies wholly inside the bytes already written,
                // and reserving first keeps the copy from reading storage being reallocated.
                output.reserveCapacity(output.count + length)
                let count = output.count
                output.append(contentsOf: repeatElement(0, count: length))
                output.withUnsafeMutableBufferPointer { buffer in
                    let base = buffer.baseAddress!
                    (base + count).update(from: base + from, count: length)
                }
            } else {
                for index in 0..<length { output.append(output[from + index]) }  // overlapping copy
            }
        }
    }
}
