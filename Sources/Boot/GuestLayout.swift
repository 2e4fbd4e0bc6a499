/// Where Kestrel puts things in a Linux guest's physical memory.
public enum GuestLayout {
    /// GDT for the boot entry.
    public static let gdtAddress: UInt64 = 0x500
    /// PVH `hvm_start_info`, then its module list and memory map.
    public static let pvhStartInfoAddress: UInt64 = 0x6000
    public static let pvhModuleListAddress: UInt64 = 0x6100
    public static let pvhMemoryMapAddress: UInt64 = 0x6200
    /// Pages a confidential boot without firmware hands the guest, below the
    /// PVH start info: the SEV-SNP secrets page, the SNP CPUID page, and the
    /// setup_data chain with the blob it points at. Reserved in the e820 map
    /// of such a boot; unused otherwise.
    public static let confidentialSecretsPageAddress: UInt64 = 0x3000
    public static let confidentialCPUIDPageAddress: UInt64 = 0x4000
    public static let setupDataAddress: UInt64 = 0x5000
    /// The zero page (`struct boot_params`).
    public static let zeroPageAddress: UInt64 = 0x7000
    /// Identity page tables for the 64-bit entry: PML4, PDPT, four page directories.
    public static let pml4Address: UInt64 = 0x9000
    public static let pdptAddress: UInt64 = 0xA000
    public static let pageDirectoryAddress: UInt64 = 0xB000
    /// The kernel command line (up to 64 KiB).
    public static let commandLineAddress: UInt64 = 0x20000
    public static let commandLineLimit = 0x10000
    /// The extended BIOS data area, where the MP table goes.
    public static let ebdaAddress: UInt64 = 0x9FC00
    /// The BIOS area, reserved in the e820 map.
    public static let biosAddress: UInt64 = 0xF0000
    /// Start of memory above 1 MiB.
    public static let highMemoryStart: UInt64 = 0x10_0000
    /// The 32-bit MMIO hole: [3 GiB, 4 GiB) holds the IOAPIC, the local APIC and device MMIO.
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000
    /// Where the kernel goes unless it asks for another place.
    public static let defaultKernelAddress: UInt64 = 0x100_0000

    /// Guest RAM ranges for `memorySize` bytes: below the MMIO hole, and the rest above 4 GiB.
    public static func ramRanges(memorySize: UInt64) -> [Range<UInt64>] {
        if memorySize <= mmioHoleStart { return [0..<memorySize] }
        return [0..<mmioHoleStart, mmioHoleEnd..<(mmioHoleEnd + memorySize - mmioHoleStart)]
    }

    /// The e820 map Kestrel gives the guest.
    public static func e820Map(memorySize: UInt64) -> [E820Entry] {
        let ranges = ramRanges(memorySize: memorySize)
        var map = [
            E820Entry(address: 0, size: ebdaAddress, kind: .ram),
            E820Entry(address: ebdaAddress, size: 0xA0000 - ebdaAddress, kind: .reserved),
            E820Entry(address: biosAddress, size: highMemoryStart - biosAddress, kind: .reserved),
        ]
        if ranges[0].upperBound > highMemoryStart {
            map.append(E820Entry(address: highMemoryStart, size: ranges[0].upperBound - highMemoryStart, kind: .ram))
        }
        if ranges.count > 1 { map.append(E820Entry(address: ranges[1].lowerBound, size: UInt64(ranges[1].count), kind: .ram)) }
        return map
    }
}
