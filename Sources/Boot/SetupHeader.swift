/// The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst), read
/// from a bzImage at offset 0x1F1. Field offsets are from the image start.
public struct SetupHeader: Equatable, Sendable {
    /// Offsets of the fields Kestrel uses.
    public enum Offset {
        public static let setupSectors = 0x1F1
        public static let bootFlag = 0x1FE
        public static let jump = 0x200
        public static let header = 0x202
        public static let version = 0x206
        public static let typeOfLoader = 0x210
        public static let loadFlags = 0x211
        public static let code32Start = 0x214
        public static let ramdiskImage = 0x218
        public static let ramdiskSize = 0x21C
        public static let heapEndPointer = 0x224
        public static let commandLinePointer = 0x228
        public static let initrdAddressMax = 0x22C
        public static let kernelAlignment = 0x230
        public static let relocatableKernel = 0x234
        public static let minimumAlignment = 0x235
        public static let xloadFlags = 0x236
        public static let commandLineSize = 0x238
        public static let payloadOffset = 0x248
        public static let payloadLength = 0x24C
        public static let setupData = 0x250
        public static let preferredAddress = 0x258
        public static let initSize = 0x260
    }

    /// loadflags bits.
    public static let loadedHigh: UInt8 = 1 << 0
    public static let canUseHeap: UInt8 = 1 << 7
    /// xloadflags bits.
    public static let kernel64: UInt16 = 1 << 0
    public static let canBeLoadedAbove4G: UInt16 = 1 << 1

    /// "HdrS".
    public static let magic: UInt32 = 0x5372_6448
    /// Boot protocol 2.12: xloadflags (the 64-bit entry flag) and everything before it.
    public static let minimumVersion: UInt16 = 0x020C

    public let setupSectors: Int
    public let version: UInt16
    public let loadFlags: UInt8
    public let code32Start: UInt32
    public let initrdAddressMax: UInt32
    public let kernelAlignment: UInt32
    public let relocatable: Bool
    public let xloadFlags: UInt16
    public let commandLineSize: UInt32
    public let payloadOffset: UInt32
    public let payloadLength: UInt32
    public let preferredAddress: UInt64
    public let initSize: UInt32
    /// The header's own bytes (0x1F1 up to the end the jump at 0x200 gives), copied into the zero page.
    public let bytes: [UInt8]

    /// Reads and checks the header: boot flag 0xAA55, "HdrS", protocol 2.12+,
    /// LOADED_HIGH, XLF_KERNEL_64, a power-of-two kernel_alignment.
    public init(image: [UInt8]) throws {
        guard image.count >= 0x270 else {
            throw BootError.truncated(what: "the bzImage setup header", needed: 0x270, available: image.count)
        }
        let bootFlag = image.littleEndian(UInt16.self, at: Offset.bootFlag)
        guard bootFlag == 0xAA55 else { throw BootError.badMagic(what: "boot sector flag at 0x1FE", expected: "0xaa55", found: hex(bootFlag)) }
        let header = image.littleEndian(UInt32.self, at: Offset.header)
        guard header == Self.magic else { throw BootError.badMagic(what: "setup header at 0x202", expected: "\"HdrS\"", found: hex(header)) }
        version = image.littleEndian(UInt16.self, at: Offset.version)
        guard version >= Self.minimumVersion else { throw BootError.protocolTooOld(version: version, minimum: Self.minimumVersion) }
        let sectors = Int(image[Offset.setupSectors])
        setupSectors = sectors == 0 ? 4 : sectors
        loadFlags = image[Offset.loadFlags]
        guard loadFlags & Self.loadedHigh != 0 else { throw BootError.notLoadable("the kernel is not a bzImage (loadflags LOADED_HIGH is clear)") }
        code32Start = image.littleEndian(UInt32.self, at: Offset.code32Start)
        initrdAddressMax = image.littleEndian(UInt32.self, at: Offset.initrdAddressMax)
        kernelAlignment = image.littleEndian(UInt32.self, at: Offset.kernelAlignment)
        guard kernelAlignment != 0, kernelAlignment & (kernelAlignment - 1) == 0 else {
            throw BootError.notLoadable("kernel_alignment \(hex(kernelAlignment)) is not a power of two")
        }
        relocatable = image[Offset.relocatableKernel] != 0
        xloadFlags = image.littleEndian(UInt16.self, at: Offset.xloadFlags)
        guard xloadFlags & Self.kernel64 != 0 else { throw BootError.notSixtyFourBit("xloadflags XLF_KERNEL_64 is clear") }
        commandLineSize = image.littleEndian(UInt32.self, at: Offset.commandLineSize)
        payloadOffset = image.littleEndian(UInt32.self, at: Offset.payloadOffset)
        payloadLength = image.littleEndian(UInt32.self, at: Offset.payloadLength)
        preferredAddress = image.littleEndian(UInt64.self, at: Offset.preferredAddress)
        initSize = image.littleEndian(UInt32.self, at: Offset.initSize)
        let end = 0x202 + Int(image[Offset.jump + 1])  // the jump's 8-bit displacement ends the header
        guard end <= image.count, end > Offset.setupSectors else {
            throw BootError.truncated(what: "the setup header", needed: end, available: image.count)
        }
        bytes = Array(image[Offset.setupSectors..<end])
    }
}
