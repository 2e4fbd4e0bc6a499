import Decompression
import GuestMemory

/// How the vCPU enters the kernel.
public enum KernelEntry: Equatable, Sendable, CustomStringConvertible {
    /// 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    case longMode(rip: UInt64, zeroPage: UInt64)
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    case pvh(eip: UInt32, startInfo: UInt64)

    /// For people: "PVH entry at 0x1000850, start info at 0x6000".
    public var description: String {
        switch self {
        case .longMode(let rip, let zeroPage): return "64-bit entry at \(hex(rip)), zero page at \(hex(zeroPage))"
        case .pvh(let eip, let startInfo): return "PVH entry at \(hex(eip)), start info at \(hex(startInfo))"
        }
    }
}

/// What to boot. `kernel` is a bzImage or a vmlinux ELF.
public struct LinuxBootRequest: Sendable {
    public var kernel: [UInt8]
    public var initrd: [UInt8]?
    public var commandLine: String
    public var memorySize: UInt64
    /// For a bzImage: decompress the payload on the host and boot the vmlinux
    /// inside it (skipping the guest's own decompressor).
    public var decompressOnHost: Bool
    /// For a vmlinux with a PVH note: enter through PVH (otherwise the 64-bit entry).
    public var preferPVH: Bool
    /// vCPUs the ACPI tables announce.
    public var vcpuCount: Int
    /// virtio-mmio devices the DSDT describes.
    public var mmioDevices: [ACPITables.MMIODevice] = []
    /// For a confidential boot without firmware: page-table bits, reserved
    /// pages and setup_data. Needs the 64-bit entry.
    public var confidential: ConfidentialBootData?

    public init(kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "", memorySize: UInt64,
                decompressOnHost: Bool = false, preferPVH: Bool = true, vcpuCount: Int = 1) {
        self.vcpuCount = vcpuCount
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.memorySize = memorySize
        self.decompressOnHost = decompressOnHost
        self.preferPVH = preferPVH
    }
}

/// A checked plan for booting Linux: every byte to write and where, and the
/// entry. Building it refuses bad images and layouts; writing it cannot fail
/// for a guest of the planned size.
public struct LinuxBootPlan: Sendable {
    public enum KernelKind: Equatable, Sendable, CustomStringConvertible {
        case bzImage
        case bzImageDecompressedOnHost(PayloadCompression)
        case vmlinux

        /// For people: "bzImage, lz4 payload decompressed on the host".
        public var description: String {
            switch self {
            case .bzImage: return "bzImage, decompressed by its own code in the guest"
            case .bzImageDecompressedOnHost(let compression): return "bzImage, \(compression.rawValue) payload decompressed on the host"
            case .vmlinux: return "vmlinux ELF"
            }
        }
    }

    public let kind: KernelKind
    public let entry: KernelEntry
    public let e820: [E820Entry]
    public let kernelRange: Range<UInt64>
    public let initrdRange: Range<UInt64>?
    public let commandLine: [UInt8]
    /// (guest address, bytes) in write order.
    public let writes: [(address: UInt64, bytes: ArraySlice<UInt8>)]
    /// Ranges to zero (ELF .bss).
    public let zeroFills: [Range<UInt64>]
    /// Time spent decompressing on the host, in seconds (0 otherwise).
    public let decompressionSeconds: Double
    /// CR3 for the 64-bit entry: the PML4's address with the confidential page-table mask.
    public let pageTableRoot: UInt64

    /// Plans the boot: the kernel (by its format), the command line, the
    /// initrd, the boot information for the entry, the GDT and the ACPI tables.
    public init(_ request: LinuxBootRequest) throws {
        let memorySize = request.memorySize
        guard memorySize >= 32 << 20 else {
            throw BootError.notLoadable("guest memory of \(memorySize >> 20) MiB is too small to boot Linux (at least 32 MiB)")
        }
        guard (1...255).contains(request.vcpuCount) else {
            throw BootError.notLoadable("the ACPI tables describe 1 to 255 vCPUs, not \(request.vcpuCount)")
        }
        let ram = KernelPlacement.RAM(memorySize: memorySize)
        let kernel = try Self.placeKernel(request, ram: ram)
        if request.confidential != nil, case .pvh = kernel.entry {
            throw BootError.notLoadable("a confidential boot uses the 64-bit entry (its page tables carry the encryption bit); PVH has none")
        }
        e820 = E820Entry.reserving(request.confidential?.reserved ?? [], in: GuestLayout.e820Map(memorySize: memorySize))
        var writes = kernel.writes

        commandLine = try Self.commandLine(Self.withDeviceEntries(request.commandLine, request.mmioDevices), limit: kernel.commandLineLimit)
        writes.append((GuestLayout.commandLineAddress, commandLine[...]))

        initrdRange = try request.initrd.map {
            try Self.placeInitrd(size: UInt64($0.count), below: min(kernel.initrdAddressMax + 1, ram.ranges[0].upperBound), above: kernel.kernelRange)
        }
        if let initrd = request.initrd, let initrdRange { writes.append((initrdRange.lowerBound, initrd[...])) }

        writes += BootInformation.writes(for: kernel.entry, setupHeader: kernel.setupHeader, commandLineLength: commandLine.count,
                                         initrd: initrdRange, e820: e820, confidential: request.confidential)
        for write in request.confidential?.writes ?? [] { writes.append((write.address, write.bytes[...])) }
        writes.append((GuestLayout.gdtAddress, BootGDT.bytes[...]))
        for table in ACPITables.build(vcpuCount: request.vcpuCount, devices: request.mmioDevices) { writes.append((table.address, table.bytes[...])) }
        for table in MPTable.build(vcpuCount: request.vcpuCount) { writes.append((table.address, table.bytes[...])) }

        kind = kernel.kind
        entry = kernel.entry
        pageTableRoot = GuestLayout.pml4Address | (request.confidential?.pageTableMask ?? 0)
        kernelRange = kernel.kernelRange
        self.writes = writes
        zeroFills = kernel.zeroFills
        decompressionSeconds = kernel.decompressionSeconds
    }

    /// The kernel's placement, by its format.
    private static func placeKernel(_ request: LinuxBootRequest, ram: KernelPlacement.RAM) throws -> KernelPlacement {
        if BzImage.looksLikeBzImage(request.kernel) {
            return try KernelPlacement.bzImage(try BzImage(request.kernel), decompressOnHost: request.decompressOnHost,
                                               preferPVH: request.preferPVH, ram: ram)
        }
        if ELFKernel.looksLikeELF(request.kernel) {
            return try KernelPlacement.elf(try ELFKernel(request.kernel), preferPVH: request.preferPVH, ram: ram)
        }
        throw BootError.badMagic(what: "kernel image", expected: "a bzImage (0xaa55 at 0x1FE, \"HdrS\" at 0x202) or an ELF vmlinux",
                                 found: request.kernel.prefix(4).map { String($0, radix: 16) }.joined(separator: " "))
    }

    /// `text`, and when it turns ACPI off (`acpi=off`, as Kata Containers
    /// boots every guest) a `virtio_mmio.device=<size>K@<base>:<gsi>` entry for
    /// each device, as Firecracker writes them: such a kernel cannot read the
    /// DSDT, and finds virtio-mmio devices only there (with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES). They go before a `--` that starts
    /// the init's own arguments. With ACPI on they are left out: the DSDT has
    /// the devices, and a kernel that read both would claim each window twice.
    static func withDeviceEntries(_ text: String, _ devices: [ACPITables.MMIODevice]) -> String {
        // The kernel's part ends at the first word that is exactly "--".
        let words = text.split(whereSeparator: \.isWhitespace)
        let separator = words.first { $0 == "--" }
        let kernelWords = separator.map { words[..<words.firstIndex(of: $0)!] } ?? words[...]
        guard !devices.isEmpty, kernelWords.contains("acpi=off") else { return text }
        let entries = devices.map { "virtio_mmio.device=\($0.length / 1024)K@0x\(String($0.base, radix: 16)):\($0.gsi)" }.joined(separator: " ")
        // The text is kept as it is; the entries go just before "--", or at the end.
        guard let separator else { return text + " " + entries }
        return String(text[..<separator.startIndex]) + entries + " " + String(text[separator.startIndex...])
    }

    /// The command line, NUL-terminated, refused when too long or holding a NUL.
    private static func commandLine(_ text: String, limit: Int) throws -> [UInt8] {
        let line = Array(text.utf8)
        guard line.count <= limit else { throw BootError.commandLineTooLong(length: line.count, maximum: limit) }
        guard !line.contains(0) else { throw BootError.notLoadable("the command line contains a NUL byte") }
        return line + [0]
    }

    /// The initrd's range: as high as allowed (below `top`), page-aligned, and
    /// above the kernel.
    private static func placeInitrd(size: UInt64, below top: UInt64, above kernel: Range<UInt64>) throws -> Range<UInt64> {
        guard size > 0, size <= top, (top - size) & ~0xFFF >= kernel.upperBound else {
            throw BootError.initrdDoesNotFit(size: size, below: top)
        }
        let start = (top - size) & ~0xFFF
        return start..<(start + size)
    }

    /// What the plan did, without the image bytes (which can then be freed).
    public var summary: LinuxBootSummary {
        LinuxBootSummary(kind: kind, entry: entry, e820: e820, kernelRange: kernelRange, initrdRange: initrdRange,
                         commandLine: String(decoding: commandLine.dropLast(), as: UTF8.self), decompressionSeconds: decompressionSeconds)
    }

    /// Writes the plan into guest memory.
    public func write(into memory: GuestAddressSpace) throws {
        for range in zeroFills {
            let buffer = try memory.buffer(at: GuestAddress(range.lowerBound), length: range.count)
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
        }
        for write in writes { try memory.write(write.bytes, at: GuestAddress(write.address)) }
    }
}

/// The boot GDT: null, null, a 64-bit code segment at 0x10 (__BOOT_CS), a data
/// segment at 0x18 (__BOOT_DS), and a 32-bit code segment at 0x20 for PVH.
public enum BootGDT {
    public static let entries: [UInt64] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_9B00_0000_FFFF]
    public static let codeSelector64: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let codeSelector32: UInt16 = 0x20
    public static var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: entries.count * 8)
        for (index, entry) in entries.enumerated() { bytes.setLittleEndian(entry, at: index * 8) }
        return bytes
    }
}

/// Identity page tables for the first 4 GiB with 2 MiB pages, laid out from
/// `GuestLayout.pml4Address`: PML4, PDPT, then four page directories.
public enum PageTableImage {
    /// `mask` is OR-ed into every entry (SEV's C-bit marks the tables and
    /// the memory they map as encrypted).
    public static func identity4GiB(mask: UInt64 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 6 * 4096)
        let flags: UInt64 = 0x3 | mask  // present, writable
        bytes.setLittleEndian(GuestLayout.pdptAddress | flags, at: 0)
        for directory in 0..<4 {
            bytes.setLittleEndian((GuestLayout.pageDirectoryAddress + UInt64(directory) * 4096) | flags, at: 4096 + directory * 8)
            for entry in 0..<512 {
                let address = (UInt64(directory) << 30) | (UInt64(entry) << 21)
                bytes.setLittleEndian(address | flags | 0x80, at: 2 * 4096 + directory * 4096 + entry * 8)
            }
        }
        return bytes
    }
}

/// A boot plan's facts, for reports.
public struct LinuxBootSummary: Sendable {
    public let kind: LinuxBootPlan.KernelKind
    public let entry: KernelEntry
    public let e820: [E820Entry]
    public let kernelRange: Range<UInt64>
    public let initrdRange: Range<UInt64>?
    public let commandLine: String
    public let decompressionSeconds: Double
}
