@testable import Boot
import Testing

@Suite(.timeLimit(.minutes(5))) struct ACPITablesTests {
    let tables = ACPITables.build(vcpuCount: 3)

    func table(_ signature: String) throws -> [UInt8] {
        try #require(tables.first { $0.bytes.starts(with: Array(signature.utf8)) }).bytes
    }

    @Test func everyTableChecksumsToZeroAndStatesItsLength() throws {
        for (_, bytes) in tables where !bytes.starts(with: Array("RSD PTR ".utf8)) {
            #expect(bytes.reduce(UInt8(0), &+) == 0, "\(String(decoding: bytes.prefix(4), as: UTF8.self))")
            #expect(Int(bytes[4]) | Int(bytes[5]) << 8 == bytes.count)
        }
        let rsdp = try table("RSD PTR ")
        #expect(rsdp.count == 36)
        #expect(rsdp[0..<20].reduce(UInt8(0), &+) == 0)
        #expect(rsdp.reduce(UInt8(0), &+) == 0)
        #expect(rsdp[15] == 2)                                 // revision 2: XSDT
        #expect(Array(rsdp[24..<28]) == [0x40, 0x00, 0x0F, 0x00])  // XSDT at 0xF0040
        #expect(try table("FACP").count == 276)
    }

    @Test func madtListsEveryVCPUAndTheIOAPIC() throws {
        let madt = try table("APIC")
        var position = 44
        var localAPICs: [UInt8] = []
        var ioAPICs = 0
        while position < madt.count {
            let type = madt[position], length = Int(madt[position + 1])
            #expect(length > 0)
            if type == 0 { localAPICs.append(madt[position + 3]); #expect(madt[position + 4] & 1 == 1) }
            if type == 1 { ioAPICs += 1; #expect(Array(madt[(position + 4)..<(position + 8)]) == [0, 0, 0xC0, 0xFE]) }
            position += length
        }
        #expect(position == madt.count)
        #expect(localAPICs == [0, 1, 2])
        #expect(ioAPICs == 1)
    }

    @Test func fadtIsHardwareReducedWithASleepControlPortAndDSDTHasS5() throws {
        let fadt = try table("FACP")
        let flags = (0..<4).reduce(UInt32(0)) { $0 | UInt32(fadt[112 + $1]) << (8 * UInt32($1)) }
        #expect(flags & (1 << 20) != 0)
        #expect(Array(fadt[244..<256]) == [1, 8, 0, 1, 0xC0, 0x03, 0, 0, 0, 0, 0, 0])
        // IAPC_BOOT_ARCH: 8042 present (bit 1), VGA absent (bit 2), CMOS RTC absent
        // (bit 5). Without bit 5 Linux probes the missing RTC for over 5 s.
        #expect(Array(fadt[109..<111]) == [0x26, 0x00])
        let dsdt = try table("DSDT")
        #expect(Array(dsdt[36..<49]) == [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00])
    }

    /// The bytes are what `iasl` (acpica-tools) compiles from the same ASL.
    /// Without COM1 in the DSDT a hardware-reduced guest has no IRQ 4 and
    /// userspace console writes fail (see ACPITables).
    @Test func dsdtDescribesCOM1WithItsPortsAndIRQ4() throws {
        let dsdt = try table("DSDT")
        let expected: [UInt8] = [
            0x10, 0x48, 0x06, 0x5F, 0x53, 0x42, 0x5F,                    // Scope (_SB), PkgLength 0x68 (two bytes)
            0x5B, 0x82, 0x2B, 0x43, 0x4F, 0x4D, 0x31,                    // Device (COM1), PkgLength 0x2B
            0x08, 0x5F, 0x48, 0x49, 0x44, 0x0C, 0x41, 0xD0, 0x05, 0x01,  // Name (_HID, EisaId ("PNP0501"))
            0x08, 0x5F, 0x55, 0x49, 0x44, 0x01,                          // Name (_UID, One)
            0x08, 0x5F, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0A, 0x0D,        // Name (_CRS, Buffer (13) {
            0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08,              //   IO (Decode16, 0x3F8, 0x3F8, 1, 8)
            0x22, 0x10, 0x00,                                            //   IRQNoFlags () {4}
            0x79, 0x00,                                                  //   EndTag })
        ]
        #expect(Array(dsdt[49..<(49 + expected.count)]) == expected)
    }

    /// The i8042 as `iasl` compiles `Device (PS2K) { Name (_HID, EisaId ("PNP0303"))
    /// Name (_UID, Zero) Name (_CRS, ResourceTemplate () { IO (Decode16, 0x60, 0x60, 1, 1)
    /// IO (Decode16, 0x64, 0x64, 1, 1) IRQNoFlags () {1} }) }`. Without it Linux
    /// cannot request IRQ 1 and atkbd finds no keyboard (see ACPITables).
    @Test func dsdtDescribesTheI8042WithItsPortsAndIRQ1() throws {
        let dsdt = try table("DSDT")
        let expected: [UInt8] = [
            0x5B, 0x82, 0x33, 0x50, 0x53, 0x32, 0x4B,                    // Device (PS2K), PkgLength 0x33
            0x08, 0x5F, 0x48, 0x49, 0x44, 0x0C, 0x41, 0xD0, 0x03, 0x03,  // Name (_HID, EisaId ("PNP0303"))
            0x08, 0x5F, 0x55, 0x49, 0x44, 0x00,                          // Name (_UID, Zero)
            0x08, 0x5F, 0x43, 0x52, 0x53, 0x11, 0x18, 0x0A, 0x15,        // Name (_CRS, Buffer (21) {
            0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01,              //   IO (Decode16, 0x60, 0x60, 1, 1)
            0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01,              //   IO (Decode16, 0x64, 0x64, 1, 1)
            0x22, 0x02, 0x00,                                            //   IRQNoFlags () {1}
            0x79, 0x00,                                                  //   EndTag })
        ]
        let start = try #require(dsdt.firstRange(of: Array("PS2K".utf8))).lowerBound - 3
        #expect(Array(dsdt[start...]) == expected, "PS2K follows COM1 and ends the DSDT")
        #expect(dsdt.reduce(UInt8(0), &+) == 0)
    }

    /// A virtio-mmio device as `iasl` compiles `Device (VR00) { Name (_HID, "LNRO0005")
    /// Name (_UID, Zero) Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite,
    /// 0xD0001000, 0x1000) Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5} }) }`.
    @Test func dsdtDescribesVirtioMMIODevicesAsLNRO0005() throws {
        let tables = ACPITables.build(vcpuCount: 1, devices: [.init(base: 0xD000_1000, length: 0x1000, gsi: 5), .init(base: 0xD000_2000, length: 0x1000, gsi: 6)])
        let dsdt = try #require(tables.first { $0.bytes.starts(with: Array("DSDT".utf8)) }).bytes
        let expected: [UInt8] = [
            0x5B, 0x82, 0x3A, 0x56, 0x52, 0x30, 0x30,                    // Device (VR00), PkgLength 0x3A
            0x08, 0x5F, 0x48, 0x49, 0x44, 0x0D, 0x4C, 0x4E, 0x52, 0x4F, 0x30, 0x30, 0x30, 0x35, 0x00,  // Name (_HID, "LNRO0005")
            0x08, 0x5F, 0x55, 0x49, 0x44, 0x00,                          // Name (_UID, Zero)
            0x08, 0x5F, 0x43, 0x52, 0x53, 0x11, 0x1A, 0x0A, 0x17,        // Name (_CRS, Buffer (23) {
            0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00,  // Memory32Fixed
            0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00,        //   Interrupt {5}
            0x79, 0x00,                                                  //   EndTag })
        ]
        let start = try #require(dsdt.firstRange(of: [0x5B, 0x82, 0x3A, 0x56, 0x52, 0x30, 0x30])).lowerBound
        #expect(Array(dsdt[start..<(start + expected.count)]) == expected)
        let second = try #require(dsdt.firstRange(of: Array("VR01".utf8)))
        #expect(Array(dsdt[(second.upperBound + 34)..<(second.upperBound + 38)]) == [0x00, 0x20, 0x00, 0xD0], "second window at 0xD0002000")
        #expect(dsdt.reduce(UInt8(0), &+) == 0)
    }

    @Test func amlPackageLengthsUseTheMultiByteFormAbove63Bytes() {
        #expect(AML.packageLength(0) == [0x01])
        #expect(AML.packageLength(62) == [0x3F])
        #expect(AML.packageLength(63) == [0x41, 0x04])        // 65 = 0x41: low nibble 1, then 0x04
        #expect(AML.packageLength(4093) == [0x4F, 0xFF])      // 4095
        #expect(AML.packageLength(4094) == [0x81, 0x00, 0x01])  // 4097 needs two more bytes
        #expect(AML.eisaID("PNP0303") == [0x0C, 0x41, 0xD0, 0x03, 0x03])
        #expect(AML.integer(0x1234) == [0x0B, 0x34, 0x12])
        #expect(AML.nameString("\\_SB.COM1") == [0x5C, 0x2E, 0x5F, 0x53, 0x42, 0x5F, 0x43, 0x4F, 0x4D, 0x31])
    }

    @Test func tablesStayInTheReservedBIOSArea() {
        for (address, bytes) in tables {
            #expect(address >= GuestLayout.biosAddress && address + UInt64(bytes.count) <= GuestLayout.highMemoryStart)
        }
        let sorted = tables.sorted { $0.address < $1.address }
        for (first, second) in zip(sorted, sorted.dropFirst()) { #expect(first.address + UInt64(first.bytes.count) <= second.address) }
    }
}
