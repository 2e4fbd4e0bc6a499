/// The compression of a bzImage payload, recognised by its magic bytes, and
/// host-side decompression of it.
public enum PayloadCompression: String, Equatable, Sendable, CaseIterable {
    case gzip, lz4, zstd, xz, bzip2, lzma, lzo, none

    /// Recognises the format from the first bytes.
    public static func detect<C: Collection>(_ bytes: C) -> PayloadCompression where C.Element == UInt8 {
        let head = Array(bytes.prefix(6))
        func starts(_ magic: [UInt8]) -> Bool { head.starts(with: magic) }
        if starts([0x1F, 0x8B]) { return .gzip }
        if starts([0x02, 0x21, 0x4C, 0x18]) { return .lz4 }
        if starts([0x28, 0xB5, 0x2F, 0xFD]) { return .zstd }
        if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return .xz }
        if starts([0x42, 0x5A, 0x68]) { return .bzip2 }
        if starts([0x5D, 0x00, 0x00]) { return .lzma }
        if starts([0x89, 0x4C, 0x5A, 0x4F]) { return .lzo }
        if starts([0x7F, 0x45, 0x4C, 0x46]) { return .none }
        return .none
    }

    /// Whether Kestrel can decompress this format.
    public var isSupported: Bool { [.gzip, .lz4, .zstd, .xz, .none].contains(self) }

    /// Decompresses a kernel payload. `expectedSize` is a hint for the output
    /// buffer; the kernel build appends the uncompressed size after the stream,
    /// which the decoders stop before.
    public func decompress(_ input: ArraySlice<UInt8>, expectedSize: Int = 0) throws -> [UInt8] {
        switch self {
        case .lz4: return try LZ4Legacy.decompress(input)
        case .gzip: return try Inflate.gunzip(input, expectedSize: expectedSize)
        case .zstd: return try ZstdStream.decompress(input, expectedSize: expectedSize)
        case .xz: return try XZStream.decompress(input, expectedSize: expectedSize)
        case .none: return Array(input)
        default: throw DecompressionError.unsupported(rawValue)
        }
    }
}

public enum DecompressionError: Error, Equatable, CustomStringConvertible, Sendable {
    case unsupported(String)
    case corrupt(format: String, reason: String)
    case tooLarge(limit: Int)

    public var description: String {
        switch self {
        case .unsupported(let name): return "\(name) payloads are not supported (Kestrel decompresses gzip, LZ4, zstd and xz)"
        case .corrupt(let format, let reason): return "the \(format) stream is corrupt: \(reason)"
        case .tooLarge(let limit): return "the decompressed kernel exceeds \(limit >> 20) MiB"
        }
    }
}

/// Largest decompressed kernel Kestrel accepts.
let decompressionLimit = 1 << 30
