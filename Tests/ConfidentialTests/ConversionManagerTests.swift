import Confidential
import Glibc
import GuestMemory
import KVM
import Synchronization
import Testing

/// The conversion manager without KVM: KVM_SET_MEMORY_ATTRIBUTES is a
/// recorder, the guest_memfd is a tmpfs file (fallocate punches holes in it
/// the same way) and shared memory is MAP_SHARED anonymous memory, so every
/// discard is visible as bytes that read zero afterwards.
@Suite(.timeLimit(.minutes(5))) struct ConversionManagerTests {
    struct Busy: Error, CustomStringConvertible { var description: String { "EAGAIN (Resource temporarily unavailable)" } }
    static let page = UInt64(MemoryMapping.pageSize)

    /// Three pieces of RAM: A [0, 64K) and B [64K, 128K) touch, C sits at 1 MiB.
    /// MMIO for a device at [128K, 132K).
    /// The stand-in for KVM_SET_MEMORY_ATTRIBUTES and the log.
    final class Recorder: Sendable {
        let calls = Mutex<[(range: Range<UInt64>, isPrivate: Bool)]>([])
        let failNext = Mutex(false)
        let logged = Mutex<[String]>([])
    }

    final class Fixture: Sendable {
        let memory = GuestAddressSpace()
        let file: Int32
        let pieces: [ConvertibleRAM]
        let recorder = Recorder()
        let manager: ConversionManager
        static let layout: [Range<UInt64>] = [0..<0x10000, 0x10000..<0x20000, 0x100000..<0x110000]

        init() throws {
            var name = Array("/dev/shm/kestrel-conversion-XXXXXX".utf8CString)
            file = mkstemp(&name)
            try #require(file >= 0)
            unlink(String(cString: name))
            try #require(ftruncate(file, 0x30000) == 0)
            var pieces: [ConvertibleRAM] = []
            for (index, range) in Self.layout.enumerated() {
                let shared = try MemoryMapping(anonymousSize: range.count, sharing: .shared)
                try memory.add(shared, at: GuestAddress(range.lowerBound))
                pieces.append(try ConvertibleRAM(range: range, privateFile: file, privateOffset: UInt64(index) * 0x10000,
                                                 shared: shared, keeping: nil))
            }
            self.pieces = pieces
            let recorder = recorder
            manager = try ConversionManager(
                ram: pieces, memory: memory, mmio: [("virtio-blk", 0x20000..<0x21000)],
                setAttributes: { range, isPrivate in
                    if recorder.failNext.withLock({ let fail = $0; $0 = false; return fail }) { throw Busy() }
                    recorder.calls.withLock { $0.append((range, isPrivate)) }
                },
                log: { line in recorder.logged.withLock { $0.append(line) } })
        }

        deinit { close(file) }

        var callCount: Int { recorder.calls.withLock { $0.count } }

        /// Fills shared memory at `address` (through the piece's mapping, which
        /// stays reachable to the test even while the range is private).
        func fillShared(_ address: UInt64, _ length: UInt64, _ value: UInt8) {
            for piece in pieces where piece.range.overlaps(address..<(address + length)) {
                let lower = max(address, piece.range.lowerBound), upper = min(address + length, piece.range.upperBound)
                memset(piece.shared.baseAddress + Int(lower - piece.range.lowerBound), Int32(value), Int(upper - lower))
            }
        }

        func sharedByte(_ address: UInt64) -> UInt8 {
            let piece = pieces.first { $0.range.contains(address) }!
            return piece.shared.baseAddress.load(fromByteOffset: Int(address - piece.range.lowerBound), as: UInt8.self)
        }

        /// Writes the private file at the offset behind `address`.
        func fillPrivate(_ address: UInt64, _ length: Int, _ value: UInt8) {
            let index = Self.layout.firstIndex { $0.contains(address) }!
            let bytes = [UInt8](repeating: value, count: length)
            #expect(pwrite(file, bytes, length, off_t(UInt64(index) * 0x10000 + address - Self.layout[index].lowerBound)) == length)
        }

        func privateByte(_ address: UInt64) -> UInt8 {
            let index = Self.layout.firstIndex { $0.contains(address) }!
            var byte: UInt8 = 0xEE
            _ = pread(file, &byte, 1, off_t(UInt64(index) * 0x10000 + address - Self.layout[index].lowerBound))
            return byte
        }
    }

    @Test func sharedToPrivateAndBackDiscardTheOldBacking() throws {
        let f = try Fixture()
        let p = Self.page
        f.fillShared(2 * p, 2 * p, 0x11)
        #expect(f.manager.convert(address: 2 * p, length: 2 * p, toPrivate: true) == .converted(changed: 2 * p))
        #expect(f.sharedByte(2 * p) == 0 && f.sharedByte(4 * p - 1) == 0, "MADV_REMOVE released the shared pages")
        #expect(f.memory.access(GuestAddress(2 * p), length: 1) == .private)
        #expect(f.memory.access(GuestAddress(p), length: p) == .shared)
        #expect(f.memory.access(GuestAddress(p), length: p + 1) == .private, "an access reaching into the private range")
        #expect(throws: GuestMemoryError.privateMemory(address: 3 * p, length: 8)) { try f.memory.read(at: GuestAddress(3 * p), length: 8) }
        #expect(f.recorder.calls.withLock { $0.map(\.range) } == [2 * p..<4 * p])

        f.fillPrivate(2 * p, Int(2 * p), 0x22)
        #expect(f.manager.convert(address: 2 * p, length: 2 * p, toPrivate: false) == .converted(changed: 2 * p))
        #expect(f.privateByte(2 * p) == 0 && f.privateByte(4 * p - 1) == 0, "the guest_memfd range was punched")
        #expect(f.memory.access(GuestAddress(2 * p), length: 2 * p) == .shared)
        #expect(try f.memory.read(at: GuestAddress(2 * p), length: 1) == [0])
        #expect(f.manager.statistics.toPrivate == 1 && f.manager.statistics.toShared == 1)
        #expect(f.manager.statistics.bytesChanged == 4 * p && f.manager.statistics.discardFailures == 0)
    }

    @Test func badRangesAreRefusedAndChangeNothing() throws {
        let f = try Fixture()
        let p = Self.page
        let cases: [(UInt64, UInt64, String)] = [
            (0x801, p, "not aligned to \(p)-byte pages"),
            (p, 0x800, "not aligned"),
            (p, 0, "the range is empty"),
            (UInt64.max - p + 1, 2 * p, "wraps past 2^64"),
            (0x1F000, 0x2000, "overlaps virtio-blk at [0x20000, 0x21000)"),
            (0x21000, p, "0x21000 is outside convertible RAM"),
            (0x1F000, 0x100000, "overlaps virtio-blk"),
            (0x10F000, 0x2000, "0x110000 is outside convertible RAM"),
            (0x200000, p, "0x200000 is outside convertible RAM"),
        ]
        for (address, length, reason) in cases {
            for toPrivate in [true, false] {
                let outcome = f.manager.convert(address: address, length: length, toPrivate: toPrivate)
                guard case .refused(let text) = outcome else { Issue.record("\(address) +\(length): \(outcome)"); continue }
                #expect(text.contains(reason), "\(text)")
            }
        }
        #expect(f.callCount == 0, "no KVM call for a refused range")
        #expect(f.memory.privateRanges.isEmpty)
        #expect(f.manager.statistics.refused == 2 * cases.count)
        #expect(f.recorder.logged.withLock { $0.count } == 2 * cases.count, "one log line per refusal")
    }

    @Test func aHalfConvertedRangeChangesOnlyTheRestAndARepeatChangesNothing() throws {
        let f = try Fixture()
        let p = Self.page
        #expect(f.manager.convert(address: 0, length: 4 * p, toPrivate: true) == .converted(changed: 4 * p))
        f.fillShared(0, 8 * p, 0x33)
        #expect(f.manager.convert(address: 2 * p, length: 6 * p, toPrivate: true) == .converted(changed: 4 * p))
        #expect(f.sharedByte(2 * p) == 0x33 && f.sharedByte(4 * p - 1) == 0x33, "pages already private are not discarded again")
        #expect(f.sharedByte(4 * p) == 0 && f.sharedByte(8 * p - 1) == 0, "the pages that changed were")
        #expect(f.memory.privateRanges == [0..<8 * p], "merged")
        let calls = f.callCount
        #expect(f.manager.convert(address: p, length: 3 * p, toPrivate: true) == .unchanged)
        #expect(f.manager.convert(address: 9 * p, length: p, toPrivate: false) == .unchanged)
        #expect(f.callCount == calls, "a repeated conversion makes no KVM call")
        #expect(f.manager.convert(address: 6 * p, length: 4 * p, toPrivate: false) == .converted(changed: 2 * p))
        #expect(f.memory.privateRanges == [0..<6 * p])
    }

    @Test func aRangeAcrossTouchingPiecesIsConverted() throws {
        let f = try Fixture()
        let p = Self.page
        f.fillShared(0x10000 - p, 2 * p, 0x44)
        #expect(f.manager.convert(address: 0x10000 - p, length: 2 * p, toPrivate: true) == .converted(changed: 2 * p))
        #expect(f.sharedByte(0x10000 - p) == 0 && f.sharedByte(0x10000) == 0, "both pieces discarded their shared page")
        f.fillPrivate(0x10000 - p, Int(p), 0x55)
        f.fillPrivate(0x10000, Int(p), 0x55)
        #expect(f.manager.convert(address: 0x10000 - p, length: 2 * p, toPrivate: false) == .converted(changed: 2 * p))
        #expect(f.privateByte(0x10000 - p) == 0 && f.privateByte(0x10000) == 0, "each piece punched its own file offset")
    }

    @Test func aKVMFailureLeavesTheStateAsItWas() throws {
        let f = try Fixture()
        let p = Self.page
        #expect(f.manager.convert(address: 0, length: 2 * p, toPrivate: true) == .converted(changed: 2 * p))
        f.fillShared(2 * p, 2 * p, 0x66)
        f.recorder.failNext.withLock { $0 = true }
        guard case .failed(let reason) = f.manager.convert(address: 0, length: 4 * p, toPrivate: true) else {
            Issue.record("a failing KVM_SET_MEMORY_ATTRIBUTES was not reported"); return
        }
        #expect(reason.contains("KVM_SET_MEMORY_ATTRIBUTES: EAGAIN"), "\(reason)")
        #expect(f.memory.privateRanges == [0..<2 * p], "the part that was private stays private, the rest shared")
        #expect(f.sharedByte(2 * p) == 0x66, "nothing was discarded")
        f.recorder.failNext.withLock { $0 = true }
        guard case .failed = f.manager.convert(address: 0, length: 2 * p, toPrivate: false) else { Issue.record("no failure"); return }
        #expect(f.memory.privateRanges == [0..<2 * p])
        #expect(f.manager.statistics.failed == 2)
    }

    @Test func memoryFaultExitsAndMapGPARangeHypercallsConvert() throws {
        let f = try Fixture()
        let p = Self.page
        #expect(f.manager.handle(MemoryFault(flags: .private, guestPhysicalAddress: 5 * p, size: p)) == .converted(changed: p))
        #expect(f.manager.handle(MemoryFault(flags: [], guestPhysicalAddress: 5 * p, size: p)) == .converted(changed: p))
        guard case .refused(let poisoned) = f.manager.handle(MemoryFault(flags: .private, guestPhysicalAddress: 5 * p, size: p, hardwarePoison: true)) else {
            Issue.record("a poisoned page was converted"); return
        }
        #expect(poisoned.contains("poisoned"))

        let encrypted = ConversionManager.mapGPARangeEncrypted
        let good = f.manager.handleMapGPARange(arguments: [0x100000, 4, encrypted])
        #expect(good.outcome == .converted(changed: 4 * p) && good.returnValue == 0)
        #expect(f.memory.privateRanges == [0x100000..<0x100000 + 4 * p])
        #expect(f.manager.handleMapGPARange(arguments: [0x100000, 4, 0x1]).returnValue == 0, "decrypted, with a 2 MiB page-size hint")
        #expect(f.memory.privateRanges.isEmpty)
        let invalid = ConversionManager.hypercallInvalid
        #expect(invalid == UInt64(bitPattern: -22))
        for arguments: [UInt64] in [[0x100000, 0, encrypted], [0x100000, 4, 0x20], [0x100000, 4, 0x3], [0x100000, UInt64.max / 2, encrypted],
                                    [0x100000, 4], [0x100800, 1, encrypted], [0x300000, 1, encrypted]] {
            let answer = f.manager.handleMapGPARange(arguments: arguments)
            #expect(answer.returnValue == invalid && !answer.outcome.succeeded, "\(arguments): \(answer.outcome)")
        }
        #expect(f.memory.privateRanges.isEmpty)
    }

    @Test func twoVCPUsConvertingOverlappingRangesLeaveOneConsistentState() async throws {
        let f = try Fixture()
        let p = Self.page
        await withTaskGroup(of: Void.self) { group in
            for seed in [UInt64(1), 2] {
                group.addTask {
                    var state = seed &* 0x9E37_79B9_7F4A_7C15
                    for _ in 0..<400 {
                        state = state &* 6364136223846793005 &+ 1442695040888963407
                        let first = (state >> 33) % 30, count = 1 + (state >> 20) % 6
                        f.manager.convert(address: first * p, length: min(count, 32 - first) * p, toPrivate: state & 1 == 0)
                    }
                }
            }
        }
        // Replaying the KVM calls in the order they were made gives the map.
        var model = [Bool](repeating: false, count: 32)
        for call in f.recorder.calls.withLock({ $0 }) {
            for index in Int(call.range.lowerBound / p)..<Int(call.range.upperBound / p) { model[index] = call.isPrivate }
        }
        for index in 0..<32 {
            let access = f.memory.access(GuestAddress(UInt64(index) * p), length: p)
            #expect(access == (model[index] ? .private : .shared), "page \(index)")
        }
        #expect(f.manager.statistics.refused == 0 && f.manager.statistics.failed == 0)
    }

    /// The realm rule: shared memory the guest may convert must be MAP_SHARED.
    @Test func mapPrivateSharedMemoryIsRefusedByName() throws {
        let mapping = try MemoryMapping(anonymousSize: 0x10000, sharing: .private)
        #expect(throws: ConversionError.self) {
            try ConvertibleRAM(range: 0..<0x10000, privateFile: -1, privateOffset: 0, shared: mapping, keeping: nil)
        }
        do {
            _ = try ConvertibleRAM(range: 0..<0x10000, privateFile: -1, privateOffset: 0, shared: mapping, keeping: nil)
        } catch {
            #expect("\(error)".contains("is MAP_PRIVATE") && "\(error)".contains("MAP_SHARED"))
        }
        let shared = try MemoryMapping(anonymousSize: 0x10000, sharing: .shared)
        #expect(throws: ConversionError.self) { try ConvertibleRAM(range: 0x800..<0x10800, privateFile: -1, privateOffset: 0, shared: shared, keeping: nil) }
        #expect(throws: ConversionError.self) { try ConvertibleRAM(range: 0..<0x8000, privateFile: -1, privateOffset: 0, shared: shared, keeping: nil) }
        let a = try ConvertibleRAM(range: 0..<0x10000, privateFile: -1, privateOffset: 0, shared: shared, keeping: nil)
        #expect(throws: ConversionError.self) {
            try ConversionManager(ram: [a, a], memory: GuestAddressSpace(), setAttributes: { _, _ in })
        }
    }
}
