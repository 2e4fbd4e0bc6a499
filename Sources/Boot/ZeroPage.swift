/// `struct boot_params` (the zero page) for the 64-bit boot protocol.
public struct ZeroPage: Sendable {
    public static let size = 4096
    /// Offsets in `struct boot_params`.
    public enum Offset {
        public static let acpiRSDPAddress = 0x070
        public static let extendedRamdiskImage = 0x0C0
        public static let extendedRamdiskSize = 0x0C4
        public static let extendedCommandLinePointer = 0x0C8
        public static let e820Entries = 0x1E8
        public static let setupHeader = 0x1F1
        public static let e820Table = 0x2D0
    }
    public static let maximumE820Entries = 128

    public private(set) var bytes = [UInt8](repeating: 0, count: ZeroPage.size)

    /// - Parameters:
    ///   - header: the bzImage's setup header bytes (from 0x1F1), or nil for a
    ///     vmlinux, which gets a minimal header (boot flag, "HdrS", protocol 2.15,
    ///     LOADED_HIGH).
    public init(header: [UInt8]?, commandLine: (address: UInt64, size: Int), initrd: Range<UInt64>?, e820: [E820Entry], rsdp: UInt64 = 0) {
        if let header {
            bytes.replaceSubrange(Offset.setupHeader..<(Offset.setupHeader + header.count), with: header)
        } else {
            bytes.setLittleEndian(UInt16(0xAA55), at: SetupHeader.Offset.bootFlag)
            bytes.setLittleEndian(SetupHeader.magic, at: SetupHeader.Offset.header)
            bytes.setLittleEndian(UInt16(0x020F), at: SetupHeader.Offset.version)
            bytes[SetupHeader.Offset.loadFlags] = SetupHeader.loadedHigh
        }
        bytes[SetupHeader.Offset.typeOfLoader] = 0xFF  // "undefined" boot loader
        bytes.setLittleEndian(rsdp, at: Offset.acpiRSDPAddress)  // acpi_rsdp_addr (protocol 2.14)
        bytes.setLittleEndian(UInt32(truncatingIfNeeded: commandLine.address), at: SetupHeader.Offset.commandLinePointer)
        bytes.setLittleEndian(UInt32(truncatingIfNeeded: commandLine.address >> 32), at: Offset.extendedCommandLinePointer)
        if let initrd {
            let size = UInt64(initrd.count)
            bytes.setLittleEndian(UInt32(truncatingIfNeeded: initrd.lowerBound), at: SetupHeader.Offset.ramdiskImage)
            bytes.setLittleEndian(UInt32(truncatingIfNeeded: size), at: SetupHeader.Offset.ramdiskSize)
            bytes.setLittleEndian(UInt32(truncatingIfNeeded: initrd.lowerBound >> 32), at: Offset.extendedRamdiskImage)
            bytes.setLittleEndian(UInt32(truncatingIfNeeded: size >> 32), at: Offset.extendedRamdiskSize)
        }
        let entries = e820.prefix(Self.maximumE820Entries)
        bytes[Offset.e820Entries] = UInt8(entries.count)
        for (index, entry) in entries.enumerated() {
            let base = Offset.e820Table + 20 * index
            bytes.setLittleEndian(entry.address, at: base)
            bytes.setLittleEndian(entry.size, at: base + 8)
            bytes.setLittleEndian(entry.kind.rawValue, at: base + 16)
        }
    }

    /// `hdr.setup_data`: the first entry of the setup_data chain (protocol 2.09).
    public mutating func setSetupData(_ address: UInt64) {
        bytes.setLittleEndian(address, at: SetupHeader.Offset.setupData)
    }
}
