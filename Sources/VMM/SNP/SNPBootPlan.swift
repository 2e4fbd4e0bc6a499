import Boot
import Confidential
import GuestMemory
import KVM

/// A direct Linux boot as an SEV-SNP guest, with no firmware in the guest,
/// planned before any VM exists: the boot payload Kestrel already builds,
/// plus what Linux's SNP start-up code looks for (a SETUP_CC_BLOB setup_data
/// entry naming the secrets and CPUID pages, page tables carrying the C-bit,
/// those pages reserved in the e820 map), the SNP_LAUNCH_UPDATE of every RAM
/// page in ascending address order (Linux expects all of its memory validated
/// at entry: the payload as NORMAL pages, the CPUID and secrets pages by
/// type, the rest as ZERO pages), and the VMSA KVM will build for each vCPU
/// at SNP_LAUNCH_FINISH. From these the launch measurement follows, so it
/// can be printed before the launch finishes, or without any SNP host.
public struct SNPBootPlan {
    /// One SNP_LAUNCH_UPDATE.
    public struct Update: Equatable, Sendable {
        public var range: Range<UInt64>
        public var type: SNPPageType

        /// "0x0-0x2fff ZERO (3 pages)".
        public var description: String {
            "0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound - 1, radix: 16)) \(type.name) (\(range.count / 4096) page\(range.count == 4096 ? "" : "s"))"
        }
    }

    public let boot: LinuxBootPlan
    public let memorySize: UInt64
    public let updates: [Update]
    public let cpuidPage: SNPCPUIDPage
    /// BSP first, then each AP, in vCPU id order (the order KVM measures them).
    public let vmsas: [SNPVMSA]
    public let policy: SNPGuestPolicy
    /// The VMSA's SEV_FEATURES: SNPActive plus the features asked for in KVM_SEV_INIT2.
    public let sevFeatures: UInt64
    /// The C-bit position (CPUID 0x8000001F EBX[5:0]).
    public let encryptionBit: Int

    public static let secretsPage = GuestLayout.confidentialSecretsPageAddress
    public static let cpuidPageAddress = GuestLayout.confidentialCPUIDPageAddress
    /// cc_blob_sev_info, after the setup_data chain in its page.
    public static let blobAddress = GuestLayout.setupDataAddress + 0x800
    /// SVM_SEV_FEAT_SNP_ACTIVE, which KVM always sets for an SNP guest.
    public static let snpActive: UInt64 = 1 << 0
    /// RAM an SNP guest may have: one slot below the 32-bit MMIO hole.
    public static let maximumMemory = GuestLayout.mmioHoleStart

    /// Plans the boot of `request` for `cpuid` (the table the vCPUs will be given).
    /// Throws `ConfigurationError` for what an SNP direct boot cannot do and
    /// `BootError` for the payload's own faults.
    public init(request: LinuxBootRequest, cpuid: CPUIDTable, encryptionBit: Int, policy: SNPGuestPolicy = .standard,
                vmsaFeatures: UInt64 = 0) throws {
        guard (32...63).contains(encryptionBit) else {
            throw ConfigurationError("--confidential snp: the C-bit position \(encryptionBit) (CPUID 0x8000001F EBX[5:0]) is not a physical-address bit from 32 to 63")
        }
        guard request.memorySize <= Self.maximumMemory else {
            throw ConfigurationError("--confidential snp: at most \(Self.maximumMemory >> 20) MiB of guest memory (one private slot below the 32-bit MMIO hole), not \(request.memorySize >> 20) MiB")
        }
        guard policy.rawValue & SNPGuestPolicy.reservedMustBeOne != 0 else {
            throw ConfigurationError("--confidential snp: policy 0x\(String(policy.rawValue, radix: 16)) lacks reserved bit 17, which must be one")
        }
        cpuidPage = try SNPCPUIDPage(table: cpuid)
        var request = request
        request.preferPVH = false
        let cBit = UInt64(1) << UInt64(encryptionBit)
        let blob = SNPConfidentialComputingBlob(secretsAddress: Self.secretsPage, cpuidAddress: Self.cpuidPageAddress)
        request.confidential = ConfidentialBootData(
            pageTableMask: cBit,
            reserved: [Self.secretsPage..<(GuestLayout.setupDataAddress + 4096)],
            setupData: [SetupData(type: SetupData.confidentialComputingBlob, payload: Self.littleEndian(UInt32(Self.blobAddress)))],
            writes: [(Self.cpuidPageAddress, cpuidPage.bytes), (Self.blobAddress, blob.bytes)])
        boot = try LinuxBootPlan(request)
        memorySize = request.memorySize
        self.policy = policy
        self.encryptionBit = encryptionBit
        sevFeatures = Self.snpActive | vmsaFeatures
        updates = Self.updates(boot: boot, memorySize: memorySize)

        guard case .longMode(let rip, let zeroPage) = boot.entry else {
            throw ConfigurationError("--confidential snp: the kernel has no 64-bit entry")
        }
        let signature = UInt64(cpuid.entry(function: 1)?.eax ?? 0)
        let features = sevFeatures
        let ap = SNPVMSA.resetState(eip: 0xFFFF_FFF0, sevFeatures: features, signature: signature)
        vmsas = [Self.bootVMSA(rip: rip, zeroPage: zeroPage, cr3: boot.pageTableRoot, sevFeatures: features)]
            + Array(repeating: ap, count: max(request.vcpuCount, 1) - 1)
    }

    static func littleEndian(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    /// Every RAM page once, ascending: pages the payload writes are NORMAL,
    /// the CPUID and secrets pages have their own types, the rest are ZERO.
    static func updates(boot: LinuxBootPlan, memorySize: UInt64) -> [Update] {
        let page: UInt64 = 4096
        var measured: [Range<UInt64>] = boot.writes.filter { !$0.bytes.isEmpty }
            .map { $0.address..<($0.address + UInt64($0.bytes.count)) } + boot.zeroFills
        let pageMask = ~(page - 1)
        measured = measured.map { range -> Range<UInt64> in
            // Whole pages, inside RAM (a write past its end leaves an empty range).
            let lower = range.lowerBound & pageMask
            let upper = min((range.upperBound + page - 1) & pageMask, memorySize)
            return lower..<max(lower, upper)
        }.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        var typed: [Update] = []
        func add(_ range: Range<UInt64>, _ type: SNPPageType) {
            guard !range.isEmpty else { return }
            if let last = typed.last, last.type == type, last.range.upperBound == range.lowerBound {
                typed[typed.count - 1].range = last.range.lowerBound..<range.upperBound
            } else {
                typed.append(Update(range: range, type: type))
            }
        }
        let special: [(Range<UInt64>, SNPPageType)] = [(secretsPage..<(secretsPage + page), .secrets),
                                                         (cpuidPageAddress..<(cpuidPageAddress + page), .cpuid)]
        var cursor: UInt64 = 0
        var index = 0
        // Walk the pages once, page by page only across the measured ranges'
        // ends; each page gets the first type that claims it.
        while cursor < memorySize {
            if let (range, type) = special.first(where: { $0.0.contains(cursor) }) {
                add(cursor..<range.upperBound, type)
                cursor = range.upperBound
                continue
            }
            while index < measured.count, measured[index].upperBound <= cursor { index += 1 }
            let nextSpecial = special.map(\.0.lowerBound).filter { $0 > cursor }.min() ?? memorySize
            if index < measured.count, measured[index].lowerBound <= cursor {
                let end = min(measured[index].upperBound, nextSpecial)
                add(cursor..<end, .normal)
                cursor = end
            } else {
                let end = min(index < measured.count ? measured[index].lowerBound : memorySize, nextSpecial, memorySize)
                add(cursor..<end, .zero)
                cursor = end
            }
        }
        return typed
    }

    /// The boot vCPU's VMSA as KVM builds it from the state `BootCPU` sets:
    /// flat long-mode segments from the boot GDT, paging on with CR3 carrying
    /// the C-bit; KVM adds EFER.SVME and the host's CR4.MCE.
    static func bootVMSA(rip: UInt64, zeroPage: UInt64, cr3: UInt64, sevFeatures: UInt64) -> SNPVMSA {
        let data = SNPVMSA.Segment(selector: BootGDT.dataSelector, attributes: 0xC93, limit: 0xFFFF_FFFF, base: 0)
        var vmsa = SNPVMSA(es: data, cs: SNPVMSA.Segment(selector: BootGDT.codeSelector64, attributes: 0xA9B, limit: 0xFFFF_FFFF, base: 0),
                           ss: data, ds: data, fs: data, gs: data,
                           gdtr: SNPVMSA.Segment(selector: 0, attributes: 0, limit: UInt32(BootGDT.entries.count * 8 - 1), base: GuestLayout.gdtAddress),
                           ldtr: SNPVMSA.Segment(selector: 0, attributes: 0x82, limit: 0xFFFF, base: 0),
                           idtr: SNPVMSA.Segment(selector: 0, attributes: 0, limit: 0, base: 0),
                           tr: SNPVMSA.Segment(selector: 0, attributes: 0x8B, limit: 0xFFFF, base: 0))
        vmsa.efer = 0x1500          // LME, LMA, SVME
        vmsa.cr4 = 0x60             // PAE, MCE (the host's)
        vmsa.cr3 = cr3
        vmsa.cr0 = 0x8000_0011      // PG, ET, PE
        vmsa.rip = rip
        vmsa.rsi = zeroPage
        vmsa.sevFeatures = sevFeatures
        return vmsa
    }

    /// The launch measurement for the payload as written in `image` (guest
    /// memory holding `boot`): the PAGE_INFO chain over every update, then
    /// one VMSA page per vCPU.
    public func measurement(image: GuestAddressSpace) throws -> SNPLaunchDigest {
        var digest = SNPLaunchDigest()
        for update in updates {
            switch update.type {
            case .normal:
                for gpa in stride(from: update.range.lowerBound, to: update.range.upperBound, by: 4096) {
                    digest.update(.normal, at: gpa, contents: try image.read(at: GuestAddress(gpa), length: 4096))
                }
            case .zero: digest.update(.zero, at: update.range.lowerBound, pages: update.range.count / 4096)
            case .unmeasured: digest.update(.unmeasured, at: update.range.lowerBound, pages: update.range.count / 4096)
            case .secrets: digest.update(.secrets, at: update.range.lowerBound, pages: update.range.count / 4096)
            case .cpuid: digest.update(.cpuid, at: update.range.lowerBound, pages: update.range.count / 4096)
            }
        }
        for vmsa in vmsas { digest.update(.vmsa, at: SNPLaunchDigest.vmsaGuestPhysicalAddress, contents: vmsa.bytes) }
        return digest
    }

    /// What `kestrel run --confidential snp --dry-run` prints.
    public func render(measurement: SNPLaunchDigest) -> String {
        var lines = ["SEV-SNP direct Linux boot (no guest firmware)",
                     "  policy 0x\(String(policy.rawValue, radix: 16)), SEV_FEATURES 0x\(String(sevFeatures, radix: 16)), C-bit \(encryptionBit)",
                     "  \(boot.kind); \(boot.entry); CR3 0x\(String(boot.pageTableRoot, radix: 16))",
                     "  setup_data SETUP_CC_BLOB at 0x\(String(GuestLayout.setupDataAddress, radix: 16)) -> cc_blob_sev_info at 0x\(String(Self.blobAddress, radix: 16)): secrets page 0x\(String(Self.secretsPage, radix: 16)), CPUID page 0x\(String(Self.cpuidPageAddress, radix: 16)) (\(cpuidPage.entries.count) entries)",
                     "  e820:"]
        lines += boot.e820.map { "    \($0)" }
        lines.append("  SNP_LAUNCH_UPDATE, \(updates.count) calls in address order:")
        lines += updates.map { "    \($0.description)" }
        lines.append("  SNP_LAUNCH_FINISH measures \(vmsas.count) VMSA page\(vmsas.count == 1 ? "" : "s") (the boot vCPU at RIP 0x\(String(vmsas[0].rip, radix: 16))\(vmsas.count > 1 ? ", \(vmsas.count - 1) AP\(vmsas.count == 2 ? "" : "s") in reset state" : ""))")
        lines.append("  expected measurement \(measurement.hex)")
        return lines.joined(separator: "\n")
    }
}

extension SNPPageType {
    /// The ABI's name: NORMAL, ZERO, UNMEASURED, SECRETS, CPUID.
    public var name: String {
        switch self {
        case .normal: return "NORMAL"
        case .zero: return "ZERO"
        case .unmeasured: return "UNMEASURED"
        case .secrets: return "SECRETS"
        case .cpuid: return "CPUID"
        }
    }
}
