@testable import Boot
import GuestMemory
import Testing

@Suite(.timeLimit(.minutes(5))) struct LoaderTests {
    let memorySize: UInt64 = 128 << 20

    @Test func bzImageZeroPageByteForByte() throws {
        let image = CraftedImages.bzImage()
        let initrd = [UInt8](repeating: 0xCD, count: 10_000)
        let plan = try LinuxBootPlan(LinuxBootRequest(kernel: image, initrd: initrd, commandLine: "console=ttyS0", memorySize: memorySize))
        #expect(plan.kind == .bzImage)
        #expect(plan.entry == .longMode(rip: 0x100_0200, zeroPage: 0x7000))
        let zero = try #require(plan.writes.first { $0.address == GuestLayout.zeroPageAddress }).bytes
        let page = Array(zero)
        #expect(page.count == 4096)
        // The setup header is copied from 0x1F1 to its end (0x26C) ...
        #expect(Array(page[0x1F1..<0x210]) == Array(image[0x1F1..<0x210]))
        #expect(Array(page[0x212..<0x218]) == Array(image[0x212..<0x218]))
        #expect(Array(page[0x22C..<0x26C]) == Array(image[0x22C..<0x26C]))
        // ... with the loader's fields filled in.
        #expect(page[0x210] == 0xFF)                                       // type_of_loader
        #expect(page[0x211] == 0x01)                                       // loadflags as the kernel gave them
        #expect(Array(page[0x218..<0x220]) == [0x00, 0xD0, 0xFF, 0x07, 0x10, 0x27, 0x00, 0x00])  // ramdisk 0x7ffd000, 10000 bytes
        #expect(Array(page[0x228..<0x22C]) == [0x00, 0x00, 0x02, 0x00])  // cmd_line_ptr 0x20000
        #expect(Array(page[0x0C0..<0x0CC]) == [UInt8](repeating: 0, count: 12))  // ext_ramdisk_image/size, ext_cmd_line_ptr
        #expect(page[0x1E8] == 4)                                          // e820_entries
        let expected: [(UInt64, UInt64, UInt32)] = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x10_0000, memorySize - 0x10_0000, 1)]
        for (index, entry) in expected.enumerated() {
            var raw = [UInt8](repeating: 0, count: 20)
            CraftedImages.put(entry.0, at: 0, in: &raw)
            CraftedImages.put(entry.1, at: 8, in: &raw)
            CraftedImages.put(entry.2, at: 16, in: &raw)
            #expect(Array(page[(0x2D0 + 20 * index)..<(0x2D0 + 20 * index + 20)]) == raw)
        }
        // Everything not named above is zero.
        #expect(Array(page[0x070..<0x078]) == [0x00, 0x00, 0x0F, 0x00, 0, 0, 0, 0])  // acpi_rsdp_addr 0xF0000
        var named = Set(0x1F1..<0x26C).union(0x0C0..<0x0CC).union([0x1E8]).union(0x2D0..<(0x2D0 + 80)).union(0x070..<0x078)
        named.formUnion(0x218..<0x220)
        for index in 0..<4096 where !named.contains(index) { #expect(page[index] == 0, "byte 0x\(String(index, radix: 16))") }
        // The command line is NUL-terminated at 0x20000 and the initrd sits page-aligned under memory's end.
        #expect(plan.writes.contains { $0.address == 0x20000 && Array($0.bytes) == Array("console=ttyS0".utf8) + [0] })
        #expect(plan.initrdRange?.lowerBound == 0x7FF_D000)
        #expect(plan.initrdRange?.upperBound == 0x7FF_D000 + 10_000)
        #expect(plan.kernelRange.lowerBound == 0x100_0000 && plan.kernelRange.upperBound == 0x140_0000)  // init_size
    }

    @Test func initrdStaysUnderInitrdAddressMax() throws {
        let image = CraftedImages.bzImage(initrdAddressMax: 0x37FF_FFFF)
        let plan = try LinuxBootPlan(LinuxBootRequest(kernel: image, initrd: [1, 2, 3], memorySize: 2 << 30))
        #expect(plan.initrdRange!.upperBound <= 0x3800_0000)
        #expect(plan.initrdRange!.lowerBound % 4096 == 0)
    }

    @Test func refusals() {
        let good = CraftedImages.bzImage()
        #expect(throws: BootError.truncated(what: "the bzImage setup header", needed: 0x270, available: 0x240)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: Array(good.prefix(0x240)) + [], memorySize: memorySize))
        }
        var badFlag = good
        badFlag[0x1FE] = 0
        #expect(throws: BootError.self) { try LinuxBootPlan(LinuxBootRequest(kernel: badFlag, memorySize: memorySize)) }
        var badMagic = good
        badMagic[0x202] = 0x41
        #expect(throws: BootError.badMagic(what: "kernel image", expected: "a bzImage (0xaa55 at 0x1FE, \"HdrS\" at 0x202) or an ELF vmlinux", found: "0 0 0 0")) {
            try LinuxBootPlan(LinuxBootRequest(kernel: badMagic, memorySize: memorySize))
        }
        #expect(throws: BootError.badMagic(what: "setup header at 0x202", expected: "\"HdrS\"", found: "0x53726441")) { try SetupHeader(image: badMagic) }
        #expect(throws: BootError.protocolTooOld(version: 0x0206, minimum: 0x020C)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: CraftedImages.bzImage(version: 0x0206), memorySize: memorySize))
        }
        #expect(throws: BootError.notSixtyFourBit("xloadflags XLF_KERNEL_64 is clear")) {
            try LinuxBootPlan(LinuxBootRequest(kernel: CraftedImages.bzImage(xloadflags: 0), memorySize: memorySize))
        }
        #expect(throws: BootError.self) {
            try LinuxBootPlan(LinuxBootRequest(kernel: CraftedImages.bzImage(loadflags: 0), memorySize: memorySize))
        }
        #expect(throws: BootError.outsideGuestMemory(what: "the kernel (init_size 0x8000000)", address: 0x100_0000, size: 0x800_0000, memorySize: memorySize)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: CraftedImages.bzImage(initSize: 0x800_0000), memorySize: memorySize))
        }
        #expect(throws: BootError.initrdDoesNotFit(size: 120 << 20, below: memorySize)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: good, initrd: [UInt8](repeating: 0, count: 120 << 20), memorySize: memorySize))
        }
        #expect(throws: BootError.commandLineTooLong(length: 3000, maximum: 2047)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: good, commandLine: String(repeating: "x", count: 3000), memorySize: memorySize))
        }
        #expect(throws: BootError.self) { try LinuxBootPlan(LinuxBootRequest(kernel: good, memorySize: 16 << 20)) }
        // A truncated payload (payload_length past the end of the file).
        var truncated = good
        CraftedImages.put(UInt32(1 << 20), at: 0x24C, in: &truncated)
        #expect(throws: BootError.self) { try BzImage(truncated) }
    }

    @Test func vmlinuxThroughPVHAndThroughTheSixtyFourBitEntry() throws {
        let text = [UInt8](repeating: 0x90, count: 300)
        let elf = CraftedImages.elf(entry: 0x100_0000, segments: [(0x100_0000, text, 0x2000), (0x120_0000, [1, 2], 2)], pvhEntry: 0x100_0040)
        let kernel = try ELFKernel(elf)
        #expect(kernel.pvhEntry == 0x100_0040)
        #expect(kernel.physicalRange == 0x100_0000..<0x120_0002)
        let pvh = try LinuxBootPlan(LinuxBootRequest(kernel: elf, initrd: [7, 7], commandLine: "a b", memorySize: memorySize))
        #expect(pvh.kind == .vmlinux)
        #expect(pvh.entry == .pvh(eip: 0x100_0040, startInfo: 0x6000))
        #expect(pvh.zeroFills == [(0x100_0000 + 300)..<0x100_2000])
        let info = Array(try #require(pvh.writes.first { $0.address == 0x6000 }).bytes)
        #expect(Array(info[0..<4]) == [0x78, 0xC5, 0x6E, 0x33])   // magic 0x336ec578
        #expect(info[4] == 1 && info[12] == 1)                     // version 1, one module
        #expect(Array(info[24..<32]) == [0, 0, 2, 0, 0, 0, 0, 0])  // cmdline at 0x20000
        #expect(info[48] == 4)                                      // memory map entries
        let module = Array(try #require(pvh.writes.first { $0.address == 0x6100 }).bytes)
        #expect(Array(module[8..<16]) == [2, 0, 0, 0, 0, 0, 0, 0])

        let direct = try LinuxBootPlan(LinuxBootRequest(kernel: elf, memorySize: memorySize, preferPVH: false))
        #expect(direct.entry == .longMode(rip: 0x100_0000, zeroPage: 0x7000))
        let page = Array(try #require(direct.writes.first { $0.address == 0x7000 }).bytes)
        #expect(Array(page[0x1FE..<0x200]) == [0x55, 0xAA])
        #expect(Array(page[0x202..<0x206]) == Array("HdrS".utf8))

        let memory = GuestAddressSpace()
        try memory.add(try MemoryMapping(anonymousSize: Int(memorySize)), at: 0)
        try memory.write([UInt8](repeating: 0xEE, count: 0x2000), at: 0x100_0000)
        try pvh.write(into: memory)
        #expect(try memory.read(at: 0x100_0000, length: 300) == text)
        #expect(try memory.read(at: 0x100_0000 + 300, length: 0x2000 - 300).allSatisfy { $0 == 0 })  // bss zeroed
    }

    @Test func elfRefusals() {
        #expect(throws: BootError.self) { try ELFKernel([0x7F, 0x45, 0x4C, 0x46]) }
        var wrongMachine = CraftedImages.elf(segments: [(0x100_0000, [1], 1)])
        wrongMachine[18] = 3
        #expect(throws: BootError.badELF("machine 3 is not x86-64 (62)")) { try ELFKernel(wrongMachine) }
        let outside = CraftedImages.elf(segments: [(0x7F0_0000, [1], 0x20_0000)])
        #expect(throws: BootError.outsideGuestMemory(what: "ELF segment", address: 0x7F0_0000, size: 0x20_0000, memorySize: memorySize)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: outside, memorySize: memorySize))
        }
        let overlapping = CraftedImages.elf(segments: [(0x100_0000, [1], 0x1000), (0x100_0800, [1], 0x1000)])
        #expect(throws: BootError.overlap(first: "ELF segment at 0x1000000", second: "ELF segment at 0x1000800")) { try ELFKernel(overlapping) }
        var truncated = CraftedImages.elf(segments: [(0x100_0000, [UInt8](repeating: 1, count: 100), 100)])
        truncated.removeLast(50)
        #expect(throws: BootError.self) { try ELFKernel(truncated) }
        let lowInitrd = CraftedImages.elf(segments: [(0x100_0000, [1], 0x6E0_0000)])
        #expect(throws: BootError.initrdDoesNotFit(size: 0x30_0000, below: memorySize)) {
            try LinuxBootPlan(LinuxBootRequest(kernel: lowInitrd, initrd: [UInt8](repeating: 0, count: 0x30_0000), memorySize: memorySize))
        }
    }

    @Test func e820AroundTheMMIOHole() {
        let map = GuestLayout.e820Map(memorySize: 4 << 30)
        #expect(map.last == E820Entry(address: 1 << 32, size: 1 << 30, kind: .ram))
        #expect(map[3] == E820Entry(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, kind: .ram))
        #expect(map[0].description == "[mem 0x0000000000000000-0x000000000009fbff] usable")
    }

    @Test func pageTablesMapTheFirstFourGiB() {
        let tables = PageTableImage.identity4GiB()
        func entry(_ offset: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(tables[offset + $1]) << (8 * UInt64($1)) } }
        #expect(entry(0) == 0xA003)
        #expect(entry(4096 + 24) == 0xE003)
        #expect(entry(2 * 4096 + 8) == 0x20_0083)
        #expect(entry(5 * 4096 + 511 * 8) == 0xFFE0_0083)
    }
}

@Suite(.timeLimit(.minutes(5))) struct BootDescriptionTests {
    /// `kestrel run --verbose` prints these: words and hex addresses, never
    /// Swift's debug descriptions.
    @Test func entriesAndKindsReadAsWords() {
        #expect("\(KernelEntry.pvh(eip: 16_779_344, startInfo: 24_576))" == "PVH entry at 0x1000850, start info at 0x6000")
        #expect("\(KernelEntry.longMode(rip: 0x100_0200, zeroPage: 0x7000))" == "64-bit entry at 0x1000200, zero page at 0x7000")
        #expect("\(LinuxBootPlan.KernelKind.bzImageDecompressedOnHost(.lz4))" == "bzImage, lz4 payload decompressed on the host")
        #expect("\(LinuxBootPlan.KernelKind.vmlinux)" == "vmlinux ELF")
    }
}
