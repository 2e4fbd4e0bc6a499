import Decompression
import GuestMemory

/// How the vCPU enters the kernel.
public enum KernelEntry: Equatable, Sendable {
    /// 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    case longMode(rip: UInt64, zeroPage: UInt64)
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    case pvh(eip: UInt32, startInfo: UInt64)
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
    public enum KernelKind: Equatable, Sendable {
        case bzImage
        case bzImageDecompressedOnHost(PayloadCompression)
        case vmlinux
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

    public init(_ request: LinuxBootRequest) throws {
        let memorySize = request.memorySize
        guard memorySize >= 32 << 20 else {
            throw BootError.notLoadable("guest memory of \(memorySize >> 20) MiB is too small to boot Linux (at least 32 MiB)")
        }
        let ram = GuestLayout.ramRanges(memorySize: memorySize)
        let lowEnd = ram[0].upperBound
        e820 = GuestLayout.e820Map(memorySize: memorySize)

        var writes: [(address: UInt64, bytes: ArraySlice<UInt8>)] = []
        var zeroFills: [Range<UInt64>] = []
        var header: [UInt8]? = nil
        var initrdMax: UInt64 = 0x7FFF_FFFF
        var commandLineLimit = GuestLayout.commandLineLimit - 1
        var entryKind: KernelEntry
        var seconds = 0.0

        func checkInside(_ what: String, _ range: Range<UInt64>) throws {
            guard ram.contains(where: { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound }),
                  range.lowerBound >= GuestLayout.highMemoryStart else {
                throw BootError.outsideGuestMemory(what: what, address: range.lowerBound, size: UInt64(range.count), memorySize: memorySize)
            }
        }

        func planELF(_ elf: ELFKernel) throws -> (Range<UInt64>, KernelEntry) {
            for segment in elf.segments {
                let range = segment.physicalAddress..<(segment.physicalAddress + segment.memorySize)
                try checkInside("ELF segment", range)
                writes.append((segment.physicalAddress, elf.bytes[segment.fileOffset..<(segment.fileOffset + segment.fileSize)]))
                if segment.memorySize > UInt64(segment.fileSize) {
                    zeroFills.append((segment.physicalAddress + UInt64(segment.fileSize))..<range.upperBound)
                }
            }
            if request.preferPVH, let pvh = elf.pvhEntry {
                return (elf.physicalRange, .pvh(eip: pvh, startInfo: GuestLayout.pvhStartInfoAddress))
            }
            return (elf.physicalRange, .longMode(rip: elf.entry, zeroPage: GuestLayout.zeroPageAddress))
        }

        if BzImage.looksLikeBzImage(request.kernel) {
            let image = try BzImage(request.kernel)
            header = image.header.bytes
            initrdMax = UInt64(image.header.initrdAddressMax)
            commandLineLimit = min(commandLineLimit, Int(image.header.commandLineSize))
            if request.decompressOnHost {
                let compression = PayloadCompression.detect(image.payload)
                let clock = ContinuousClock()
                let start = clock.now
                let vmlinux = try compression.decompress(image.payload, expectedSize: Int(image.header.initSize))
                let elapsed = clock.now - start
                seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                let elf = try ELFKernel(vmlinux)
                let planned = try planELF(elf)
                kernelRange = planned.0
                // The 64-bit entry of the vmlinux inside a bzImage still wants the
                // bzImage's setup header in the zero page.
                entryKind = planned.1
                kind = .bzImageDecompressedOnHost(compression)
            } else {
                let alignment = UInt64(image.header.kernelAlignment)
                var address = max(image.header.preferredAddress, GuestLayout.defaultKernelAddress)
                address = (address + alignment - 1) & ~(alignment - 1)
                let size = max(UInt64(image.protectedModeKernel.count), UInt64(image.header.initSize))
                kernelRange = address..<(address + size)
                try checkInside("the kernel (init_size \(hex(image.header.initSize)))", kernelRange)
                writes.append((address, image.protectedModeKernel))
                entryKind = .longMode(rip: address + 0x200, zeroPage: GuestLayout.zeroPageAddress)
                kind = .bzImage
            }
        } else if ELFKernel.looksLikeELF(request.kernel) {
            let planned = try planELF(try ELFKernel(request.kernel))
            kernelRange = planned.0
            entryKind = planned.1
            kind = .vmlinux
        } else {
            throw BootError.badMagic(what: "kernel image", expected: "a bzImage (0xaa55 at 0x1FE, \"HdrS\" at 0x202) or an ELF vmlinux", found: request.kernel.prefix(4).map { String($0, radix: 16) }.joined(separator: " "))
        }

        // Command line, NUL-terminated.
        let line = Array(request.commandLine.utf8)
        guard line.count <= commandLineLimit else { throw BootError.commandLineTooLong(length: line.count, maximum: commandLineLimit) }
        guard !line.contains(0) else { throw BootError.notLoadable("the command line contains a NUL byte") }
        commandLine = line + [0]
        writes.append((GuestLayout.commandLineAddress, commandLine[...]))

        // The initrd: as high as allowed, page-aligned, above the kernel.
        if let initrd = request.initrd {
            let size = UInt64(initrd.count)
            let top = min(initrdMax + 1, lowEnd)
            guard size > 0, size <= top, (top - size) & ~0xFFF >= kernelRange.upperBound else {
                throw BootError.initrdDoesNotFit(size: size, below: top)
            }
            let start = (top - size) & ~0xFFF
            initrdRange = start..<(start + size)
            writes.append((start, initrd[...]))
        } else {
            initrdRange = nil
        }

        // Boot information for the entry.
        switch entryKind {
        case .longMode:
            let zeroPage = ZeroPage(header: header, commandLine: (GuestLayout.commandLineAddress, commandLine.count), initrd: initrdRange, e820: e820, rsdp: ACPITables.rsdpAddress)
            writes.append((GuestLayout.zeroPageAddress, zeroPage.bytes[...]))
            writes.append((GuestLayout.pml4Address, PageTableImage.identity4GiB()[...]))
        case .pvh:
            let map = PVHStartInfo.memoryMap(e820)
            writes.append((GuestLayout.pvhStartInfoAddress, PVHStartInfo.startInfo(
                commandLine: GuestLayout.commandLineAddress, modules: initrdRange == nil ? 0 : 1,
                moduleList: GuestLayout.pvhModuleListAddress, memoryMap: GuestLayout.pvhMemoryMapAddress,
                memoryMapEntries: e820.count, rsdp: ACPITables.rsdpAddress)[...]))
            if let initrdRange { writes.append((GuestLayout.pvhModuleListAddress, PVHStartInfo.module(initrdRange)[...])) }
            writes.append((GuestLayout.pvhMemoryMapAddress, map[...]))
        }
        writes.append((GuestLayout.gdtAddress, BootGDT.bytes[...]))
        guard (1...255).contains(request.vcpuCount) else { throw BootError.notLoadable("the ACPI tables describe 1 to 255 vCPUs, not \(request.vcpuCount)") }
        for table in ACPITables.build(vcpuCount: request.vcpuCount) { writes.append((table.address, table.bytes[...])) }
        entry = entryKind
        self.writes = writes
        self.zeroFills = zeroFills
        decompressionSeconds = seconds
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
    public static func identity4GiB() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 6 * 4096)
        let flags: UInt64 = 0x3  // present, writable
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
