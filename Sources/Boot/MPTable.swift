/// An Intel MultiProcessor Specification 1.4 table, for a guest that boots
/// with `acpi=off` (Kata Containers passes it to every Firecracker guest):
/// such a kernel finds its vCPUs and the IOAPIC here, or it runs on one vCPU
/// with the 8259s alone. It says what the MADT says: every vCPU's local APIC
/// (APIC ids 0..<count, the first the bootstrap processor), one ISA bus, the
/// IOAPIC (its id the vCPU count), ISA IRQ 0 on INTIN 2 and every other line
/// 1 to 23 on its own INTIN, ExtINT on LINT0 and NMI on LINT1.
///
/// The floating pointer is in the EBDA's first kilobyte, where Linux looks
/// (smp_scan_config); the configuration table sits in the BIOS segment,
/// above the ACPI tables, so any vCPU count fits.
public enum MPTable {
    public static let floatingPointerAddress: UInt64 = GuestLayout.ebdaAddress
    public static let configurationTableAddress: UInt64 = 0xF8000
    /// The IOAPIC's input lines (KVM's in-kernel IOAPIC has 24).
    public static let ioAPICPins: UInt8 = 24

    /// Entry types (MP spec 1.4, section 4.3).
    enum Entry: UInt8 {
        case processor = 0, bus = 1, ioAPIC = 2, ioInterrupt = 3, localInterrupt = 4
    }

    /// Interrupt types of the interrupt assignment entries.
    enum InterruptType: UInt8 {
        case vectored = 0, nmi = 1, externalPIC = 3
    }

    /// The floating pointer and the configuration table, as (guest address, bytes).
    public static func build(vcpuCount: Int) -> [(address: UInt64, bytes: [UInt8])] {
        [(floatingPointerAddress, floatingPointer()), (configurationTableAddress, configurationTable(vcpuCount: vcpuCount))]
    }

    /// "_MP_", the table's address, length 1 (16 bytes), revision 1.4,
    /// checksum, and feature bytes of zero: a configuration table is present,
    /// and the IMCR is absent (virtual wire mode).
    static func floatingPointer() -> [UInt8] {
        var bytes = Array("_MP_".utf8) + ACPITables.littleEndian(UInt32(configurationTableAddress)) + [1, 4, 0] + [UInt8](repeating: 0, count: 5)
        ACPITables.checksum(&bytes, at: 10)
        return bytes
    }

    static func configurationTable(vcpuCount: Int) -> [UInt8] {
        let le = { (value: UInt32) in ACPITables.littleEndian(value) }
        let ioAPICID = UInt8(truncatingIfNeeded: vcpuCount)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        for index in 0..<vcpuCount {
            // Enabled, and the first is the bootstrap processor; local APIC
            // version 0x14; signature family 6; features FPU and APIC.
            let flags: UInt8 = index == 0 ? 0b11 : 0b01
            entries += [Entry.processor.rawValue, UInt8(truncatingIfNeeded: index), 0x14, flags] + le(0x600) + le(1 << 0 | 1 << 9)
            entries += [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [Entry.bus.rawValue, 0] + Array("ISA   ".utf8)
        entries += [Entry.ioAPIC.rawValue, ioAPICID, 0x11, 1] + le(ACPITables.ioAPICAddress)
        count += 2
        // Polarity and trigger "conform to the bus" (flags 0): edge, active high on ISA.
        for line in 0..<ioAPICPins where line != 2 {
            entries += [Entry.ioInterrupt.rawValue, InterruptType.vectored.rawValue, 0, 0, 0, line, ioAPICID, line == 0 ? 2 : line]
            count += 1
        }
        entries += [Entry.localInterrupt.rawValue, InterruptType.externalPIC.rawValue, 0, 0, 0, 0, 0xFF, 0]
        entries += [Entry.localInterrupt.rawValue, InterruptType.nmi.rawValue, 0, 0, 0, 0, 0xFF, 1]
        count += 2
        var bytes = Array("PCMP".utf8) + ACPITables.littleEndian(UInt16(44 + entries.count)) + [4, 0]
        bytes += Array("KESTREL ".utf8) + Array("KESTREL VM  ".utf8)
        bytes += le(0) + ACPITables.littleEndian(UInt16(0)) + ACPITables.littleEndian(count) + le(ACPITables.localAPICAddress)
        bytes += ACPITables.littleEndian(UInt16(0)) + [0, 0]
        bytes += entries
        ACPITables.checksum(&bytes, at: 7)
        return bytes
    }
}
