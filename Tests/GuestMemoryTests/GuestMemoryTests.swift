import HostSystem
import Foundation
import Testing
@testable import GuestMemory

@Suite(.timeLimit(.minutes(5))) struct GuestAddressSpaceTests {
    func space() throws -> GuestAddressSpace {
        let space = GuestAddressSpace()
        try space.add(MemoryMapping(anonymousSize: 0x2000), at: 0x1000)
        try space.add(MemoryMapping(anonymousSize: 0x1000), at: 0x10000)
        return space
    }

    @Test func privateRangesMergeSplitAndRefuseAccess() throws {
        let space = GuestAddressSpace()
        try space.add(try MemoryMapping(anonymousSize: 0x10000), at: 0x10000)
        space.setPrivate(0x11000..<0x12000, true)
        space.setPrivate(0x12000..<0x14000, true)
        space.setPrivate(0x18000..<0x19000, true)
        #expect(space.privateRanges == [0x11000..<0x14000, 0x18000..<0x19000], "touching ranges merge")
        space.setPrivate(0x12000..<0x13000, false)
        #expect(space.privateRanges == [0x11000..<0x12000, 0x13000..<0x14000, 0x18000..<0x19000], "a hole splits")
        #expect(space.privateParts(of: 0x11800..<0x18800) == [0x11800..<0x12000, 0x13000..<0x14000, 0x18000..<0x18800])
        #expect(space.access(GuestAddress(0x12000), length: 0x1000) == .shared)
        #expect(space.access(GuestAddress(0x12FFF), length: 2) == .private)
        #expect(space.access(GuestAddress(0x1F000), length: 0x2000) == .outside)
        #expect(throws: GuestMemoryError.privateMemory(address: 0x10FFC, length: 8)) { try space.load(UInt64.self, at: GuestAddress(0x10FFC)) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x1FFFC, length: 8)) { try space.load(UInt64.self, at: GuestAddress(0x1FFFC)) }
        try space.store(UInt64(7), at: GuestAddress(0x12000))
        #expect(space.contains(GuestAddress(0x11000), length: 0x1000), "private memory is still guest RAM")
        space.setPrivate(0x10000..<0x20000, false)
        #expect(space.privateRanges.isEmpty)
        #expect(try space.load(UInt64.self, at: GuestAddress(0x10FFC)) == 0)
    }

    /// Host writes are recorded per page while tracked: stores, writes and
    /// mutable views count; loads, reads and read-only views do not; taking
    /// a bitmap starts it over; a region added later is tracked too.
    @Test func hostWritesAreRecordedByPageWhileTracked() throws {
        let memory = try space()
        try memory.store(UInt8(1), at: 0x1000)
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == nil, "nothing is recorded before tracking starts")
        memory.startTrackingWrites()
        #expect(memory.tracksWrites)
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == [0], "tracking starts empty")
        _ = try memory.load(UInt64.self, at: 0x1ff8)
        _ = try memory.read(at: 0x1000, length: 0x2000)
        _ = try memory.string(at: 0x1000)
        _ = try memory.buffer(at: 0x2000, length: 16, writing: false)
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == [0], "reads mark nothing")
        try memory.store(UInt32(7), at: 0x1ffe)  // straddles the region's two pages
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == [0b11])
        try memory.write([1, 2, 3], at: 0x2800)
        _ = try memory.buffer(at: 0x10000, length: 1)
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == [0b10])
        #expect(memory.takeWrittenPages(regionStart: 0x10000) == [0b1], "a mutable view counts as written")
        memory.markWritten(0x1000, length: 0x1000)
        memory.markWritten(0x40000, length: 0x1000)  // outside RAM: nothing
        #expect(memory.takeWrittenPages(regionStart: 0x1000) == [0b1])
        try memory.add(MemoryMapping(anonymousSize: 0x41000), at: 0x100000)
        try memory.store(UInt8(1), at: 0x100000 + 0x40000)
        #expect(memory.takeWrittenPages(regionStart: 0x100000) == [0, 0b1], "page 64 of a region added while tracking")
        memory.stopTrackingWrites()
        #expect(!memory.tracksWrites && memory.takeWrittenPages(regionStart: 0x1000) == nil)
    }

    @Test func loadsAndStoresInsideARegion() throws {
        let memory = try space()
        try memory.store(UInt64(0x1122_3344_5566_7788), at: 0x1ff8)
        #expect(try memory.load(UInt64.self, at: 0x1ff8) == 0x1122_3344_5566_7788)
        #expect(try memory.read(at: 0x1ff8, length: 2) == [0x88, 0x77])
        try memory.write([1, 2, 3], at: 0x10000)
        #expect(try memory.load(UInt8.self, at: 0x10002) == 3)
    }

    @Test func refusesAccessesOutsideOrAcrossRegions() throws {
        let memory = try space()
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x0, length: 1)) { try memory.read(at: 0, length: 1) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x2ffc, length: 8)) { try memory.load(UInt64.self, at: 0x2ffc) }
        #expect(throws: GuestMemoryError.outOfBounds(address: 0x3000, length: 1)) { try memory.read(at: 0x3000, length: 1) }
        #expect(throws: GuestMemoryError.self) { try memory.read(at: GuestAddress(UInt64.max), length: 2) }
        #expect(!memory.contains(0x2000, length: 0x1001))
        #expect(memory.contains(0x2000, length: 0x1000))
    }

    @Test func refusesOverlapsAndWraparound() throws {
        let memory = try space()
        #expect(throws: GuestMemoryError.overlap(address: 0x2000, size: 0x1000)) {
            try memory.add(MemoryMapping(anonymousSize: 0x1000), at: 0x2000)
        }
        #expect(throws: GuestMemoryError.self) {
            try memory.add(MemoryMapping(anonymousSize: 0x2000), at: GuestAddress(UInt64.max - 0xfff))
        }
        #expect(throws: GuestMemoryError.invalidSize(0)) { try MemoryMapping(anonymousSize: 0) }
    }

    @Test func stringsAreBounded() throws {
        let memory = try space()
        try memory.write(Array("hello".utf8) + [0], at: 0x1000)
        #expect(try memory.string(at: 0x1000) == "hello")
        // No terminator before the region ends: the string stops there.
        try memory.write([UInt8](repeating: 0x41, count: 0x1000), at: 0x10000)
        #expect(try memory.string(at: 0x10ff0).count == 16)
        #expect(try memory.string(at: 0x10000, limit: 4) == "AAAA")
    }
}

@Suite(.timeLimit(.minutes(5))) struct GuardedAccessTests {
    @Test func ordinaryMemoryCompletes() throws {
        let mapping = try MemoryMapping(anonymousSize: 8192)
        #expect(GuardedAccess.fill(mapping.bytes, with: 0x5A) == .completed)
        let (bytes, outcome) = GuardedAccess.read(UnsafeRawBufferPointer(mapping.bytes))
        #expect(outcome == .completed)
        #expect(bytes.allSatisfy { $0 == 0x5A })
    }

    @Test func sigbusBeyondEndOfFileIsReportedNotFatal() throws {
        let path = NSTemporaryDirectory() + "kestrel-sigbus-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        let page = MemoryMapping.pageSize
        #expect(ftruncate(fd, off_t(page)) == 0)
        let mapping = try MemoryMapping(fileDescriptor: fd, size: 2 * page, sharing: .shared)
        #expect(GuardedAccess.fill(mapping.bytes, with: 1) == .sigbus(offset: page))
        let (bytes, outcome) = GuardedAccess.read(UnsafeRawBufferPointer(rebasing: mapping.bytes[(page - 2)...]))
        #expect(outcome == .sigbus(offset: 2))
        #expect(bytes == [1, 1])
    }
}

@Suite(.timeLimit(.minutes(5))) struct AlignedMappingTests {
    @Test func anonymousMappingsStartAtTheRequestedAlignmentAndAreUsable() throws {
        for size in [4096, 3 << 20, (2 << 20) + 4096] {
            let mapping = try MemoryMapping(anonymousSize: size, alignment: MemoryMapping.hugePageAlignment)
            #expect(mapping.address % UInt64(MemoryMapping.hugePageAlignment) == 0)
            #expect(mapping.size == size)
            mapping.bytes[0] = 0x5A
            mapping.bytes[size - 1] = 0xA5
            #expect(mapping.bytes[0] == 0x5A && mapping.bytes[size - 1] == 0xA5)
            try mapping.advise(MADV_HUGEPAGE)
        }
        #expect(throws: GuestMemoryError.self) { try MemoryMapping(anonymousSize: 4096, alignment: 3 << 20) }
    }
}

@Suite(.timeLimit(.minutes(5))) struct GuestAddressTests {
    @Test func arithmeticIsCheckedWhereItCouldWrap() {
        let address: GuestAddress = 0x1000
        #expect(address.adding(0x10) == GuestAddress(0x1010))
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
        #expect(GuestAddress(0x3000) - address == 0x2000)
        #expect(address.isAligned(to: 4096) && !GuestAddress(0x1001).isAligned(to: 2))
        #expect(GuestAddress(0x5000).pageFrameNumber == 5)
        #expect("\(GuestAddress(0xFEE0_0000))" == "0xfee00000")
    }
}
