/// A bzImage: the real-mode setup, then the protected-mode kernel, whose
/// compressed payload (the vmlinux ELF) the header locates.
public struct BzImage: Sendable {
    public let header: SetupHeader
    /// The protected-mode kernel (with the kernel's own decompressor).
    public let protectedModeKernel: ArraySlice<UInt8>
    /// The compressed vmlinux, inside `protectedModeKernel`.
    public let payload: ArraySlice<UInt8>
    public let image: [UInt8]

    public init(_ image: [UInt8]) throws {
        header = try SetupHeader(image: image)
        let setupSize = (header.setupSectors + 1) * 512
        guard setupSize < image.count else {
            throw BootError.truncated(what: "the bzImage", needed: setupSize + 1, available: image.count)
        }
        protectedModeKernel = image[setupSize...]
        let payloadStart = setupSize + Int(header.payloadOffset)
        let payloadEnd = payloadStart + Int(header.payloadLength)
        guard header.payloadLength > 0, payloadEnd <= image.count else {
            throw BootError.truncated(what: "the bzImage payload", needed: payloadEnd, available: image.count)
        }
        payload = image[payloadStart..<payloadEnd]
        self.image = image
    }

    /// Whether `bytes` starts like a bzImage (boot flag and "HdrS").
    public static func looksLikeBzImage(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 0x206 && bytes[0x1FE] == 0x55 && bytes[0x1FF] == 0xAA && bytes[0x202..<0x206].elementsEqual([0x48, 0x64, 0x72, 0x53])
    }
}
