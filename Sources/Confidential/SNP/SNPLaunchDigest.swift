/// The SEV-SNP launch digest, as the firmware extends it for each page of
/// SNP_LAUNCH_UPDATE (SNP firmware ABI, "PAGE_INFO structure"): the new
/// digest is SHA-384 over a 112-byte PAGE_INFO holding the current digest,
/// the page's contents digest (SHA-384 of the page for NORMAL and VMSA
/// pages, zeros for the others), the structure's length, the page type and
/// the GPA. A VMM that computes it before SNP_LAUNCH_FINISH can print the
/// measurement the guest's attestation report will carry.
public struct SNPLaunchDigest: Equatable, Sendable {
    public static let pageSize = 4096
    static let pageInfoLength: UInt16 = 0x70
    /// The GPA the firmware records for VMSA pages: (u64)-1, page-aligned,
    /// bits above 51 clear.
    public static let vmsaGuestPhysicalAddress: UInt64 = 0xFFFF_FFFF_F000

    /// PAGE_TYPE values: those of SNP_LAUNCH_UPDATE, plus VMSA (2), which
    /// KVM measures for each vCPU at SNP_LAUNCH_FINISH.
    public enum PageType: UInt8, Sendable {
        case normal = 1, vmsa = 2, zero = 3, unmeasured = 4, secrets = 5, cpuid = 6
    }

    public private(set) var bytes: [UInt8]

    /// A digest starting from `seed` (48 zero bytes for a launch without an ID block).
    public init(seed: [UInt8] = [UInt8](repeating: 0, count: SHA384.digestSize)) {
        precondition(seed.count == SHA384.digestSize, "a launch digest is 48 bytes")
        bytes = seed
    }

    public var hex: String { bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }

    /// Extends the digest with one page of `type` at `gpa`; `contents` is
    /// the page's 4096 bytes for NORMAL and VMSA pages and ignored for the rest.
    public mutating func update(_ type: PageType, at gpa: UInt64, contents: [UInt8] = []) {
        let contentsDigest: [UInt8]
        switch type {
        case .normal, .vmsa:
            precondition(contents.count == Self.pageSize, "a measured page is \(Self.pageSize) bytes")
            contentsDigest = SHA384.hash(contents)
        case .zero, .unmeasured, .secrets, .cpuid:
            contentsDigest = [UInt8](repeating: 0, count: SHA384.digestSize)
        }
        var pageInfo = bytes + contentsDigest
        pageInfo += [UInt8(truncatingIfNeeded: Self.pageInfoLength), UInt8(Self.pageInfoLength >> 8), type.rawValue, 0]  // length, type, IMI_PAGE 0
        pageInfo += [0, 0, 0, 0]  // VMPL3, VMPL2 and VMPL1 permissions 0, reserved
        pageInfo += (0..<8).map { UInt8(truncatingIfNeeded: gpa >> UInt64(8 * $0)) }
        assert(pageInfo.count == Int(Self.pageInfoLength))
        bytes = SHA384.hash(pageInfo)
    }

    /// Extends the digest with `data` (a whole number of pages) as NORMAL
    /// pages from `gpa` on, one page at a time, as SNP_LAUNCH_UPDATE does.
    public mutating func updateNormal(at gpa: UInt64, data: [UInt8]) {
        precondition(data.count % Self.pageSize == 0, "NORMAL pages are whole pages")
        for offset in stride(from: 0, to: data.count, by: Self.pageSize) {
            update(.normal, at: gpa + UInt64(offset), contents: Array(data[offset..<(offset + Self.pageSize)]))
        }
    }

    /// Extends the digest with `count` pages of a type without contents (ZERO, UNMEASURED).
    public mutating func update(_ type: PageType, at gpa: UInt64, pages count: Int) {
        for page in 0..<count { update(type, at: gpa + UInt64(page * Self.pageSize)) }
    }
}
