import KVM

/// The SEV-SNP CPUID page (SNP firmware ABI, "CPUID_FUNCTION" table; Linux's
/// `struct snp_cpuid_table`): a count, then up to 64 entries of 48 bytes,
/// `{u32 eax_in, ecx_in; u64 xcr0_in, xss_in; u32 eax, ebx, ecx, edx; u64
/// reserved}`. The VMM fills it, SNP_LAUNCH_UPDATE hands it to the firmware
/// as a CPUID page, and the firmware checks each value against its policy.
/// A rejected page comes back corrected in the source buffer; `init(parsing:)`
/// reads that page, which is firmware-written but on the VMM's side
/// untrusted bytes (it has a fuzz target).
public struct SNPCPUIDPage: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public var function: UInt32
        public var index: UInt32
        public var xcr0In: UInt64
        public var xssIn: UInt64
        public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

        public init(function: UInt32, index: UInt32, xcr0In: UInt64 = 0, xssIn: UInt64 = 0,
                    eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
            (self.function, self.index, self.xcr0In, self.xssIn) = (function, index, xcr0In, xssIn)
            (self.eax, self.ebx, self.ecx, self.edx) = (eax, ebx, ecx, edx)
        }

        /// "0x7.0", "0xd.1 (XCR0 0x1)".
        public var leafName: String {
            "0x\(String(function, radix: 16)).\(index)" + (xcr0In != 0 || xssIn != 0 ? " (XCR0 0x\(String(xcr0In, radix: 16)), XSS 0x\(String(xssIn, radix: 16)))" : "")
        }
    }

    public static let size = 4096
    public static let maximumEntries = 64
    static let headerSize = 16
    static let entrySize = 48

    public var entries: [Entry]

    public init(entries: [Entry]) throws {
        guard entries.count <= Self.maximumEntries else {
            throw SNPLaunchError.invalidArgument("the SNP CPUID page holds at most \(Self.maximumEntries) entries; this table has \(entries.count)")
        }
        self.entries = entries
    }

    /// The page for a vCPU's CPUID table: one entry per KVM entry, the
    /// sub-leaf kept only where KVM marks it significant. Leaf 0xD sub-leaves
    /// 0 and 1 describe the legacy XSAVE area (XCR0 = x87, XSS = 0), the only
    /// ones Linux's SNP CPUID code accepts for them. Entries whose four
    /// registers are all zero are left out: Linux answers a leaf missing from
    /// the page with zeros, as for an out-of-range leaf, so they cost one of
    /// the 64 slots for nothing (KVM's tables list many empty sub-leaves).
    public init(table: CPUIDTable) throws {
        try self.init(entries: table.entries.filter { $0.eax | $0.ebx | $0.ecx | $0.edx != 0 }.map { entry in
            let indexed = entry.flags & CPUIDEntry.significantIndexFlag != 0
            let legacyXSAVE = entry.function == 0xD && (entry.index == 0 || entry.index == 1)
            return Entry(function: entry.function, index: indexed ? entry.index : 0, xcr0In: legacyXSAVE ? 1 : 0,
                         eax: entry.eax, ebx: entry.ebx, ecx: entry.ecx, edx: entry.edx)
        })
    }

    /// Reads a page; refuses a wrong size or a count above 64, naming it.
    public init(parsing page: [UInt8]) throws {
        guard page.count == Self.size else {
            throw SNPLaunchError.invalidArgument("an SNP CPUID page is \(Self.size) bytes, not \(page.count)")
        }
        let count = Int(page.load32(0))
        guard count <= Self.maximumEntries else {
            throw SNPLaunchError.invalidArgument("the SNP CPUID page claims \(count) entries; at most \(Self.maximumEntries) fit")
        }
        entries = (0..<count).map { index in
            let base = Self.headerSize + index * Self.entrySize
            return Entry(function: page.load32(base), index: page.load32(base + 4), xcr0In: page.load64(base + 8),
                         xssIn: page.load64(base + 16), eax: page.load32(base + 24), ebx: page.load32(base + 28),
                         ecx: page.load32(base + 32), edx: page.load32(base + 36))
        }
    }

    /// The page's 4096 bytes.
    public var bytes: [UInt8] {
        var page = [UInt8](repeating: 0, count: Self.size)
        page.store(UInt32(entries.count), at: 0)
        for (index, entry) in entries.enumerated() {
            let base = Self.headerSize + index * Self.entrySize
            page.store(entry.function, at: base)
            page.store(entry.index, at: base + 4)
            page.store(entry.xcr0In, at: base + 8)
            page.store(entry.xssIn, at: base + 16)
            page.store(entry.eax, at: base + 24)
            page.store(entry.ebx, at: base + 28)
            page.store(entry.ecx, at: base + 32)
            page.store(entry.edx, at: base + 36)
        }
        return page
    }

    /// What the firmware changed, one phrase per entry, for a rejected page:
    /// "0x7.0: ebx 0x... → 0x...".
    public func differences(from corrected: SNPCPUIDPage) -> [String] {
        var phrases: [String] = []
        if corrected.entries.count != entries.count {
            phrases.append("\(entries.count) entries sent, \(corrected.entries.count) returned")
        }
        for (sent, back) in zip(entries, corrected.entries) {
            guard sent != back else { continue }
            var fields: [String] = []
            for (name, a, b) in [("eax", sent.eax, back.eax), ("ebx", sent.ebx, back.ebx), ("ecx", sent.ecx, back.ecx), ("edx", sent.edx, back.edx)]
            where a != b {
                fields.append("\(name) 0x\(String(a, radix: 16)) → 0x\(String(b, radix: 16))")
            }
            if sent.function != back.function || sent.index != back.index { fields.append("returned as leaf \(back.leafName)") }
            phrases.append("\(sent.leafName): " + (fields.isEmpty ? "inputs changed" : fields.joined(separator: ", ")))
        }
        return phrases
    }
}

/// `struct cc_blob_sev_info` (Linux, arch/x86/include/asm/sev.h): how a guest
/// booted without firmware finds its SNP secrets and CPUID pages. Named by a
/// SETUP_CC_BLOB setup_data entry.
public struct SNPConfidentialComputingBlob: Equatable, Sendable {
    /// "AMDE" as a little-endian u32 (CC_BLOB_SEV_HDR_MAGIC).
    public static let magic: UInt32 = 0x4544_4D41
    public static let size = 40

    public var secretsAddress: UInt64
    public var cpuidAddress: UInt64

    public init(secretsAddress: UInt64, cpuidAddress: UInt64) {
        self.secretsAddress = secretsAddress
        self.cpuidAddress = cpuidAddress
    }

    /// magic, version 0, secrets page and length, CPUID page and length.
    public var bytes: [UInt8] {
        var blob = [UInt8](repeating: 0, count: Self.size)
        blob.store(Self.magic, at: 0)
        blob.store(secretsAddress, at: 8)
        blob.store(UInt32(4096), at: 16)
        blob.store(cpuidAddress, at: 24)
        blob.store(UInt32(4096), at: 32)
        return blob
    }
}

extension Array where Element == UInt8 {
    fileprivate func load32(_ offset: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(self[offset + $1]) << (8 * UInt32($1)) }
    }

    fileprivate func load64(_ offset: Int) -> UInt64 {
        UInt64(load32(offset)) | UInt64(load32(offset + 4)) << 32
    }

    fileprivate mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}
