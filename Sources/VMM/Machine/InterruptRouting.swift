import KVM

/// The GSI table Kestrel gives the in-kernel irqchip, so that interrupts
/// arrive where the MADT and the MP table say they do.
///
/// Both tables put ISA IRQ 0 (the PIT) on IOAPIC input 2, as PC firmware
/// does. KVM's default table sends GSI 0 to IOAPIC input 0, and its PIT
/// raises GSI 0, so a guest that follows the tables never sees the PIT
/// through its IOAPIC. A guest that keeps the PIT as its clock event device
/// (Linux does when its local APIC timer fails verification, as it can under
/// emulation) then never wakes from a sleep. This table is KVM's default with
/// GSI 0 moved to input 2, as QEMU's is:
/// - GSI 0 to the primary PIC's pin 0 and IOAPIC input 2;
/// - GSI 1 and 3 to 7 to the primary PIC and the IOAPIC input of the same number;
/// - GSI 8 to 15 to the secondary PIC's pins 0 to 7 and IOAPIC inputs 8 to 15;
/// - GSI 16 to 23 to IOAPIC inputs 16 to 23;
/// - GSI 2, the PICs' cascade, to nothing: no device may take it.
public enum InterruptRouting {
    /// IOAPIC inputs (KVM's IOAPIC has 24).
    static let ioapicInputs: UInt32 = 24

    public static let legacyPC: [InterruptRoute] = (0..<ioapicInputs).flatMap { gsi -> [InterruptRoute] in
        switch gsi {
        case 0: [InterruptRoute(gsi: 0, chip: .primaryPIC, pin: 0), InterruptRoute(gsi: 0, chip: .ioapic, pin: 2)]
        case 2: []
        case 1..<8: [InterruptRoute(gsi: gsi, chip: .primaryPIC, pin: gsi), InterruptRoute(gsi: gsi, chip: .ioapic, pin: gsi)]
        case 8..<16: [InterruptRoute(gsi: gsi, chip: .secondaryPIC, pin: gsi - 8), InterruptRoute(gsi: gsi, chip: .ioapic, pin: gsi)]
        default: [InterruptRoute(gsi: gsi, chip: .ioapic, pin: gsi)]
        }
    }
}
