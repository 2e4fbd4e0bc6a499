@testable import Boot
import Testing

/// The MP table a guest with `acpi=off` reads, and the command line's
/// virtio-mmio entries for it.
@Suite(.timeLimit(.minutes(5))) struct MPTableTests {
    static func word(_ bytes: [UInt8], _ offset: Int) -> Int { Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 }
    static func doubleWord(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    /// The floating pointer points at the table; both checksum to zero; the
    /// entries are the vCPUs (the first the bootstrap processor), the ISA
    /// bus, the IOAPIC with the vCPU count as its id, IRQ 0 on INTIN 2 and
    /// every other line on its own pin, then ExtINT and NMI.
    @Test func theTableListsTheVCPUsTheIOAPICAndItsLines() throws {
        let tables = MPTable.build(vcpuCount: 3)
        let (pointerAddress, pointer) = tables[0], (tableAddress, table) = tables[1]
        #expect(pointerAddress == 0x9FC00 && pointer.count == 16 && pointer.starts(with: Array("_MP_".utf8)))
        #expect(pointer.reduce(UInt8(0), &+) == 0 && pointer[8] == 1 && pointer[9] == 4 && pointer[11...].allSatisfy { $0 == 0 })
        #expect(UInt64(Self.doubleWord(pointer, 4)) == tableAddress)
        #expect(table.starts(with: Array("PCMP".utf8)) && Self.word(table, 4) == table.count && table.reduce(UInt8(0), &+) == 0)
        #expect(Self.doubleWord(table, 36) == 0xFEE0_0000)
        var position = 44, entries = 0
        var processors: [(id: UInt8, flags: UInt8)] = [], lines: [UInt8: UInt8] = [:], local: [(UInt8, UInt8)] = []
        var ioAPIC: (id: UInt8, address: UInt32)?
        while position < table.count {
            entries += 1
            switch table[position] {
            case 0:
                processors.append((table[position + 1], table[position + 3]))
                position += 20
            case 1:
                #expect(Array(table[(position + 2)..<(position + 8)]) == Array("ISA   ".utf8))
                position += 8
            case 2:
                ioAPIC = (table[position + 1], Self.doubleWord(table, position + 4))
                #expect(table[position + 3] & 1 == 1, "enabled")
                position += 8
            case 3:
                #expect(table[position + 1] == 0 && table[position + 4] == 0 && table[position + 6] == 3)
                lines[table[position + 5]] = table[position + 7]
                position += 8
            case 4:
                local.append((table[position + 1], table[position + 7]))
                position += 8
            default:
                Issue.record("unknown entry type \(table[position]) at \(position)")
                return
            }
        }
        #expect(position == table.count && entries == Self.word(table, 34))
        #expect(processors.map(\.id) == [0, 1, 2] && processors.map(\.flags) == [3, 1, 1])
        #expect(ioAPIC?.id == 3 && ioAPIC?.address == 0xFEC0_0000)
        #expect(lines[0] == 2 && lines[2] == nil && lines.count == 23 && (1..<24).allSatisfy { $0 == 2 || lines[UInt8($0)] == UInt8($0) })
        #expect(local.map(\.0) == [3, 1] && local.map(\.1) == [0, 1], "ExtINT on LINT0, NMI on LINT1")
    }

    /// Room for Kestrel's largest vCPU count, clear of the ACPI tables, below 1 MiB.
    @Test func theTablesFitBetweenTheACPITablesAndTheEndOfTheBIOSArea() {
        let table = MPTable.build(vcpuCount: 255)[1]
        #expect(table.address + UInt64(table.bytes.count) <= GuestLayout.highMemoryStart)
        let acpi = ACPITables.build(vcpuCount: 255, devices: (0..<19).map { .init(base: 0xD000_0000 + UInt32($0) * 0x1000, length: 0x1000, gsi: 5 + UInt32($0)) })
        #expect(acpi.allSatisfy { $0.address + UInt64($0.bytes.count) <= MPTable.configurationTableAddress })
    }

    /// `virtio_mmio.device=` entries only with `acpi=off`, before the init's `--`.
    @Test func deviceEntriesJoinACommandLineThatTurnsACPIOff() {
        let devices: [ACPITables.MMIODevice] = [.init(base: 0xD000_0000, length: 0x1000, gsi: 5), .init(base: 0xD000_1000, length: 0x1000, gsi: 6)]
        #expect(LinuxBootPlan.withDeviceEntries("console=ttyS0", devices) == "console=ttyS0")
        #expect(LinuxBootPlan.withDeviceEntries("console=ttyS0 acpi=off", []) == "console=ttyS0 acpi=off")
        #expect(LinuxBootPlan.withDeviceEntries("console=ttyS0 acpi=off", devices)
                == "console=ttyS0 acpi=off virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
        #expect(LinuxBootPlan.withDeviceEntries("acpi=off -- init-arg", devices)
                == "acpi=off virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 -- init-arg")
        #expect(LinuxBootPlan.withDeviceEntries("quiet -- acpi=off", devices) == "quiet -- acpi=off", "an init's argument is not the kernel's")
        #expect(LinuxBootPlan.withDeviceEntries("a=\"x  y\"\tacpi=off", [devices[0]]) == "a=\"x  y\"\tacpi=off virtio_mmio.device=4K@0xd0000000:5",
                "the user's text is kept as it was")
    }
}
