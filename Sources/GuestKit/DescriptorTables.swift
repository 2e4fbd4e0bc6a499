/// Encodings of the x86-64 descriptor tables a test guest needs.
public enum DescriptorTables {
    /// The GDT: null, flat 64-bit code (0x08), flat data (0x10).
    public static let gdtEntries: [UInt64] = [
        0,
        0x00AF_9B00_0000_FFFF,  // code: present, DPL 0, execute/read, accessed, L=1, G=1
        0x00CF_9300_0000_FFFF,  // data: present, DPL 0, read/write, accessed, D/B=1, G=1
    ]

    /// A 16-byte 64-bit interrupt gate (present, DPL 0, type 0xE, IST 0).
    public static func interruptGate(handler: UInt64, selector: UInt16) -> [UInt8] {
        var bytes: [UInt8] = []
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
        put(UInt16(truncatingIfNeeded: handler))
        put(selector)
        put(UInt8(0))  // IST
        put(UInt8(0x8E))  // present, DPL 0, 64-bit interrupt gate
        put(UInt16(truncatingIfNeeded: handler >> 16))
        put(UInt32(truncatingIfNeeded: handler >> 32))
        put(UInt32(0))
        return bytes
    }
}

/// Identity-mapping page tables with 2 MiB pages.
public enum PageTables {
    public static let present: UInt64 = 1 << 0
    public static let writable: UInt64 = 1 << 1
    public static let largePage: UInt64 = 1 << 7

    /// A page directory mapping the 1 GiB starting at `base` with 2 MiB pages.
    public static func identityPageDirectory(base: UInt64) -> [UInt64] {
        (0..<512).map { base + UInt64($0) << 21 | present | writable | largePage }
    }
}
