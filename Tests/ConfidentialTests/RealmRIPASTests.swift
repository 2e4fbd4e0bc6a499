import Confidential
import Glibc
import GuestMemory
import KVM
import Synchronization
import Testing

/// A realm's RIPAS change requests, as KVM hands them over (synthetic
/// KVM_EXIT_MEMORY_FAULT exits in a simulated run area), through the
/// conversion manager. KVM_SET_MEMORY_ATTRIBUTES is a recorder; the
/// guest_memfd is a tmpfs file and the shared memory MAP_SHARED, so the
/// discards show as bytes that read zero.
@Suite(.timeLimit(.minutes(5))) struct RealmRIPASTests {
    static let ram: Range<UInt64> = 0x4000_0000..<0x4010_0000
    static let device = RealmConfiguration.Device(name: "virtio-net", range: 0x0A00_0000..<0x0A00_1000)

    final class Calls: Sendable {
        let list = Mutex<[(Range<UInt64>, Bool)]>([])
        func withLock<T>(_ body: (inout [(Range<UInt64>, Bool)]) -> T) -> T { list.withLock { body(&$0) } }
    }

    final class Fixture: Sendable {
        let calls = Calls()
        let memory = GuestAddressSpace()
        let shared: MemoryMapping
        let file: Int32
        let handler: RealmRIPASHandler
        let area = RunArea.simulated()

        init() throws {
            var name = Array("/dev/shm/kestrel-ripas-XXXXXX".utf8CString)
            file = mkstemp(&name)
            try #require(file >= 0)
            unlink(String(cString: name))
            try #require(ftruncate(file, off_t(RealmRIPASTests.ram.count)) == 0)
            shared = try MemoryMapping(anonymousSize: RealmRIPASTests.ram.count, sharing: .shared)
            try memory.add(shared, at: GuestAddress(RealmRIPASTests.ram.lowerBound))
            let calls = self.calls
            let manager = try ConversionManager(
                ram: [try ConvertibleRAM(range: RealmRIPASTests.ram, privateFile: file, privateOffset: 0, shared: shared, keeping: nil)],
                memory: memory, mmio: [("virtio-net", RealmRIPASTests.device.range)],
                setAttributes: { range, isPrivate in calls.withLock { $0.append((range, isPrivate)) } })
            handler = RealmRIPASHandler(machineType: try ARM64MachineType(.realm, ipaBits: 40), manager: manager,
                                        ram: [RealmRIPASTests.ram], devices: [RealmRIPASTests.device])
        }

        deinit { close(file) }

        /// The handler's decision for a KVM_EXIT_MEMORY_FAULT of a RIPAS change.
        func request(toRAM: Bool, _ address: UInt64, _ size: UInt64) -> RealmRIPASHandler.Decision {
            guard case .memoryFault(let fault) = area.simulate(.memoryFault(flags: toRAM ? .private : [], address: address, size: size)) else {
                return .stop("not a memory fault")
            }
            return handler.handle(fault)
        }

        var callCount: Int { calls.withLock { $0.count } }
    }

    @Test func ripasRAMThenEmptyConvertsAndDiscards() throws {
        let fixture = try Fixture()
        let base = Self.ram.lowerBound
        fixture.shared.bytes[0] = 0x5A
        #expect(fixture.request(toRAM: true, base, 0x2000) == .resume(converted: 0x2000))
        #expect(fixture.memory.privateRanges == [base..<(base + 0x2000)])
        #expect(fixture.shared.bytes[0] == 0, "the shared page the realm gave up was released")
        #expect(fixture.request(toRAM: true, base, 0x2000) == .resume(converted: 0), "a repeat changes nothing")
        #expect(fixture.callCount == 1)
        #expect(fixture.request(toRAM: false, base + 0x1000, 0x1000) == .resume(converted: 0x1000))
        #expect(fixture.memory.privateRanges == [base..<(base + 0x1000)])
        #expect(fixture.calls.withLock { $0.map(\.1) } == [true, false])
    }

    @Test func ripasEmptyOverUnbackedSpaceNeedsNoChange() throws {
        let fixture = try Fixture()
        #expect(fixture.request(toRAM: false, 0x2000_0000, 0x10_0000) == .resume(converted: 0))
        #expect(fixture.request(toRAM: false, Self.device.range.lowerBound, 0x1000) == .resume(converted: 0), "a device window is EMPTY already")
        #expect(fixture.callCount == 0)
    }

    @Test func ripasEmptyAcrossTheEndOfRAMConvertsOnlyTheRAMPart() throws {
        let fixture = try Fixture()
        let last = Self.ram.upperBound - 0x1000
        #expect(fixture.request(toRAM: true, last, 0x1000) == .resume(converted: 0x1000))
        #expect(fixture.request(toRAM: false, last, 0x3000) == .resume(converted: 0x1000))
        #expect(fixture.calls.withLock { $0.last.map { $0.0 } } == last..<Self.ram.upperBound)
    }

    @Test func refusals() throws {
        let fixture = try Fixture()
        func stopped(_ decision: RealmRIPASHandler.Decision, _ words: String) -> Bool {
            if case .stop(let reason) = decision { return reason.contains(words) }
            return false
        }
        #expect(stopped(fixture.request(toRAM: true, 0x2000_0000, 0x1000), "no RAM"))
        #expect(stopped(fixture.request(toRAM: true, Self.ram.upperBound - 0x1000, 0x2000), "no RAM at part"))
        #expect(stopped(fixture.request(toRAM: true, Self.device.range.lowerBound, 0x1000), "overlaps device virtio-net"))
        #expect(stopped(fixture.request(toRAM: true, 0x80_4000_0000, 0x1000), "unprotected alias"))
        #expect(stopped(fixture.request(toRAM: true, Self.ram.lowerBound, 0), "empty"))
        #expect(stopped(fixture.request(toRAM: true, UInt64.max - 0xFFF, 0x2000), "wraps"))
        #expect(stopped(fixture.request(toRAM: true, Self.ram.lowerBound + 0x800, 0x1000), "not aligned"))
        #expect(fixture.callCount == 0, "no refused request reached KVM_SET_MEMORY_ATTRIBUTES")
        #expect(fixture.memory.privateRanges.isEmpty)
    }
}
