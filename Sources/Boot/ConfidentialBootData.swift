/// What a confidential boot without firmware adds to an ordinary 64-bit
/// boot: bits in the identity page tables (SEV's C-bit), e820 ranges kept
/// from the guest's allocator (the pages a secure processor fills), and
/// setup_data entries with the tables they point at. The Boot layer places
/// these; which bits and tables a technology needs is decided above it.
public struct ConfidentialBootData: Sendable {
    /// OR-ed into every entry of the identity page tables, and given back in
    /// `LinuxBootPlan.pageTableRoot` for CR3.
    public var pageTableMask: UInt64
    /// Ranges the e820 map reports as reserved instead of usable.
    public var reserved: [Range<UInt64>]
    /// setup_data entries, chained from `boot_params.hdr.setup_data` in order.
    public var setupData: [SetupData]
    /// Bytes to place besides the boot payload (the tables setup_data names).
    public var writes: [(address: UInt64, bytes: [UInt8])]

    public init(pageTableMask: UInt64 = 0, reserved: [Range<UInt64>] = [], setupData: [SetupData] = [],
                writes: [(address: UInt64, bytes: [UInt8])] = []) {
        self.pageTableMask = pageTableMask
        self.reserved = reserved
        self.setupData = setupData
        self.writes = writes
    }
}

/// One `struct setup_data` of the x86 boot protocol (Documentation/arch/x86/
/// boot.rst): `u64 next; u32 type; u32 len; u8 data[len]`.
public struct SetupData: Equatable, Sendable {
    /// SETUP_CC_BLOB: a `u32` guest-physical address of the confidential
    /// computing blob (for SEV-SNP, `struct cc_blob_sev_info`).
    public static let confidentialComputingBlob: UInt32 = 7

    public var type: UInt32
    public var payload: [UInt8]

    public init(type: UInt32, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    static let headerSize = 16

    /// The entries laid out from `address`, each 8-byte aligned, each `next`
    /// naming the following one and the last 0.
    static func chain(_ entries: [SetupData], at address: UInt64) -> [UInt8] {
        var offsets: [Int] = []
        var size = 0
        for entry in entries {
            offsets.append(size)
            size += (headerSize + entry.payload.count + 7) & ~7
        }
        var bytes = [UInt8](repeating: 0, count: size)
        for (index, entry) in entries.enumerated() {
            let offset = offsets[index]
            let next = index + 1 < entries.count ? address + UInt64(offsets[index + 1]) : 0
            bytes.setLittleEndian(next, at: offset)
            bytes.setLittleEndian(entry.type, at: offset + 8)
            bytes.setLittleEndian(UInt32(entry.payload.count), at: offset + 12)
            bytes.replaceSubrange((offset + headerSize)..<(offset + headerSize + entry.payload.count), with: entry.payload)
        }
        return bytes
    }
}

extension E820Entry {
    /// `map` with `ranges` taken out of its usable entries and reported as
    /// reserved, in address order. Ranges outside usable RAM change nothing.
    public static func reserving(_ ranges: [Range<UInt64>], in map: [E820Entry]) -> [E820Entry] {
        var result: [E820Entry] = []
        for entry in map {
            guard entry.kind == .ram else { result.append(entry); continue }
            var cursor = entry.address
            for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
                let start = max(range.lowerBound, cursor), end = min(range.upperBound, entry.end)
                guard start < end else { continue }
                if start > cursor { result.append(E820Entry(address: cursor, size: start - cursor, kind: .ram)) }
                result.append(E820Entry(address: start, size: end - start, kind: .reserved))
                cursor = end
            }
            if cursor < entry.end { result.append(E820Entry(address: cursor, size: entry.end - cursor, kind: .ram)) }
        }
        return result.sorted { $0.address < $1.address }
    }
}
