// Fuzz target: the arm64 Image header a user's kernel file gives
// `kestrel run --confidential realm`.
import Boot

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzARM64Image(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let image = try? ARM64Image(header: bytes, fileSize: UInt64(size)) {
        precondition(image.textOffset < ARM64Image.baseAlignment && image.imageSize >= UInt64(size))
        _ = image.pageSize
    }
    return 0
}
