@testable import Boot
import Testing

@Suite struct ACPITablesTests {
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
        let dsdt = try table("DSDT")
        #expect(Array(dsdt[36...]) == [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00])
    }

    @Test func tablesStayInTheReservedBIOSArea() {
        for (address, bytes) in tables {
            #expect(address >= GuestLayout.biosAddress && address + UInt64(bytes.count) <= GuestLayout.highMemoryStart)
        }
        let sorted = tables.sorted { $0.address < $1.address }
        for (first, second) in zip(sorted, sorted.dropFirst()) { #expect(first.address + UInt64(first.bytes.count) <= second.address) }
    }
}
