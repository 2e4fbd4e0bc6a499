import GuestMemory
import KVM
import Testing
@testable import VMM

/// The tracker behind Diff snapshots, on this host's KVM: KVM's log and the
/// devices' record are merged per slot, taking starts both over, and pages
/// handed back by a failed snapshot come back in the next take. Without
/// logging, every resident page counts.
@Suite(.timeLimit(.minutes(1))) struct DirtyPageTrackerTests {
    static var kvmAvailable: Bool { KVMSystem.isAvailable() }

    static func pages(_ bitmap: [UInt64]) -> [Int] {
        (0..<(bitmap.count * 64)).filter { bitmap[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
    }

    @Test(.enabled(if: kvmAvailable, "needs /dev/kvm")) func devicePagesAreMergedTakenAndHandedBack() throws {
        let vm = try KVMSystem().createVirtualMachine()
        let memory = GuestAddressSpace()
        try vm.addMemory(slot: 0, at: 0, size: 1 << 20, flags: [.logDirtyPages], to: memory)
        try vm.addMemory(slot: 1, at: 0x10_0000, size: 1 << 20, flags: [.logDirtyPages], to: memory)
        memory.startTrackingWrites()
        let tracker = DirtyPageTracker(virtualMachine: vm, memory: memory, logsWrites: true)
        try memory.write([1], at: 0x3000)
        try memory.store(UInt64(2), at: 0x10_0000 + 0x7_F000)
        let taken = try tracker.take()
        #expect(taken.map(\.region.slot) == [0, 1])
        #expect(taken.map { Self.pages($0.bitmap) } == [[3], [127]])
        #expect(try tracker.take().allSatisfy { Self.pages($0.bitmap).isEmpty }, "taking starts over")
        // A snapshot that failed hands its pages back; the next take has them, with what came since.
        tracker.giveBack(taken)
        try memory.write([3], at: 0x5000)
        #expect(try tracker.take().map { Self.pages($0.bitmap) } == [[3, 5], [127]])
    }

    @Test(.enabled(if: kvmAvailable, "needs /dev/kvm")) func withoutLoggingEveryResidentPageCounts() throws {
        let vm = try KVMSystem().createVirtualMachine()
        let memory = GuestAddressSpace()
        let region = try vm.addMemory(slot: 0, at: 0, size: 1 << 20, to: memory)
        let tracker = DirtyPageTracker(virtualMachine: vm, memory: memory, logsWrites: false)
        #expect(Self.pages(try tracker.take()[0].bitmap).isEmpty, "untouched anonymous RAM has no page")
        region.mapping!.bytes[9 * 4096] = 1
        _ = region.mapping!.bytes[20 * 4096]  // a read maps the shared zero page: present too
        let resident = Self.pages(try tracker.take()[0].bitmap)
        #expect(resident.contains(9) && resident.count <= 2, "\(resident)")
        #expect(Self.pages(try tracker.take()[0].bitmap) == resident, "resident pages stay counted (more than changed, never less)")
    }
}
