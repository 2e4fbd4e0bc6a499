import Decompression

/// Where a kernel image goes in guest memory and how it is entered: the part
/// of a boot plan that depends on the image format. `bzImage` and `elf` are
/// the two planners; `LinuxBootPlan` adds the command line, the initrd and the
/// boot information around what they return.
struct KernelPlacement {
    var kind: LinuxBootPlan.KernelKind
    var entry: KernelEntry
    var kernelRange: Range<UInt64>
    /// (guest address, bytes) of the kernel itself.
    var writes: [(address: UInt64, bytes: ArraySlice<UInt8>)] = []
    /// Ranges to zero (ELF .bss).
    var zeroFills: [Range<UInt64>] = []
    /// The bzImage setup header, which the zero page carries.
    var setupHeader: [UInt8]?
    /// The highest address the initrd may end at (initrd_addr_max).
    var initrdAddressMax: UInt64 = 0x7FFF_FFFF
    /// The longest command line the kernel takes, without the NUL.
    var commandLineLimit = GuestLayout.commandLineLimit - 1
    var decompressionSeconds = 0.0

    /// Guest RAM as the planners see it: ranges below and above the MMIO hole.
    struct RAM {
        let ranges: [Range<UInt64>]
        let memorySize: UInt64

        init(memorySize: UInt64) {
            ranges = GuestLayout.ramRanges(memorySize: memorySize)
            self.memorySize = memorySize
        }

        /// Refuses `range` unless it lies in one RAM range above low memory.
        func checkInside(_ what: String, _ range: Range<UInt64>) throws {
            guard ranges.contains(where: { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound }),
                  range.lowerBound >= GuestLayout.highMemoryStart else {
                throw BootError.outsideGuestMemory(what: what, address: range.lowerBound, size: UInt64(range.count), memorySize: memorySize)
            }
        }
    }

    /// Plans a vmlinux ELF: its PT_LOAD segments at their physical addresses,
    /// entered through PVH when it has the note and `preferPVH`, else at its
    /// 64-bit entry.
    static func elf(_ elf: ELFKernel, preferPVH: Bool, ram: RAM) throws -> KernelPlacement {
        var writes: [(address: UInt64, bytes: ArraySlice<UInt8>)] = []
        var zeroFills: [Range<UInt64>] = []
        for segment in elf.segments {
            let range = segment.physicalAddress..<(segment.physicalAddress + segment.memorySize)
            try ram.checkInside("ELF segment", range)
            writes.append((segment.physicalAddress, elf.bytes[segment.fileOffset..<(segment.fileOffset + segment.fileSize)]))
            if segment.memorySize > UInt64(segment.fileSize) {
                zeroFills.append((segment.physicalAddress + UInt64(segment.fileSize))..<range.upperBound)
            }
        }
        let entry: KernelEntry = if preferPVH, let pvh = elf.pvhEntry {
            .pvh(eip: pvh, startInfo: GuestLayout.pvhStartInfoAddress)
        } else {
            .longMode(rip: elf.entry, zeroPage: GuestLayout.zeroPageAddress)
        }
        return KernelPlacement(kind: .vmlinux, entry: entry, kernelRange: elf.physicalRange, writes: writes, zeroFills: zeroFills)
    }

    /// Plans a bzImage: its protected-mode kernel at the preferred, aligned
    /// address with the 64-bit entry 0x200 past it; or, with
    /// `decompressOnHost`, the vmlinux inside it, decompressed here and placed
    /// as an ELF (its 64-bit entry still reads the bzImage's setup header).
    static func bzImage(_ image: BzImage, decompressOnHost: Bool, preferPVH: Bool, ram: RAM) throws -> KernelPlacement {
        var placement: KernelPlacement
        if decompressOnHost {
            let compression = PayloadCompression.detect(image.payload)
            let start = ContinuousClock.now
            let vmlinux = try compression.decompress(image.payload, expectedSize: Int(image.header.initSize))
            let elapsed = ContinuousClock.now - start
            placement = try elf(try ELFKernel(vmlinux), preferPVH: preferPVH, ram: ram)
            placement.kind = .bzImageDecompressedOnHost(compression)
            placement.decompressionSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        } else {
            let alignment = UInt64(image.header.kernelAlignment)
            var address = max(image.header.preferredAddress, GuestLayout.defaultKernelAddress)
            address = (address + alignment - 1) & ~(alignment - 1)
            let size = max(UInt64(image.protectedModeKernel.count), UInt64(image.header.initSize))
            let range = address..<(address + size)
            try ram.checkInside("the kernel (init_size \(hex(image.header.initSize)))", range)
            placement = KernelPlacement(kind: .bzImage, entry: .longMode(rip: address + 0x200, zeroPage: GuestLayout.zeroPageAddress),
                                        kernelRange: range, writes: [(address, image.protectedModeKernel)])
        }
        placement.setupHeader = image.header.bytes
        placement.initrdAddressMax = UInt64(image.header.initrdAddressMax)
        placement.commandLineLimit = min(placement.commandLineLimit, Int(image.header.commandLineSize))
        return placement
    }
}
