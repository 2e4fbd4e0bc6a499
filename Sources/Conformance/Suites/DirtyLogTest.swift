import GuestKit
import GuestMemory
import KVM

extension BasicsSuite {
    /// Where the logged slot lies: 1 MiB (256 pages) right after the 4 MiB
    /// of RAM the harness gives slot 0, inside the first GiB it maps.
    static let loggedSlot: UInt32 = 1
    static let loggedBase: UInt64 = 0x40_0000
    static let loggedPages = 256

    /// A guest that writes the logged slot's pages `first` (in that order)
    /// and reads its page 5, syncs (stage 1), writes the pages `second`,
    /// syncs (stage 2) and ends.
    static func loggedSlotWriter(first: [Int], second: [Int]) -> GuestProgram {
        let program = GuestProgram()
        let code = program.assembler
        func write(page: Int) {
            code.mov(.rax, loggedBase + UInt64(page) * 4096 + 8)
            code.mov(.at(.rax), immediate: 0x4B45)
        }
        first.forEach(write)
        code.mov(.rax, loggedBase + 5 * 4096)
        code.mov(.rbx, .at(.rax))  // read only
        program.sync(stage: 1)
        second.forEach(write)
        program.sync(stage: 2)
        program.done()
        return program
    }

    /// After the kernel's dirty_log_test: KVM_GET_DIRTY_LOG reports the
    /// pages the guest wrote and only those (not a page it only read, not a
    /// page the host wrote through its own mapping), starts over with each
    /// call, logs a page written again after that, and refuses a slot
    /// without KVM_MEM_LOG_DIRTY_PAGES with ENOENT. Diff snapshots rely on
    /// all of it, and on the host's own writes being missing, which Kestrel
    /// records itself.
    static let dirtyLog = ConformanceTest(
        suite: name, name: "dirty_log",
        summary: "KVM_GET_DIRTY_LOG reports exactly the pages the guest wrote since the last call (not pages only read, "
            + "not the host's writes) and refuses a slot without KVM_MEM_LOG_DIRTY_PAGES with ENOENT"
    ) { context in
        let machine = try GuestMachine(kvm: context.kvm)
        let region = try machine.vm.addMemory(slot: loggedSlot, at: GuestAddress(loggedBase), size: loggedPages * 4096,
                                              flags: [.logDirtyPages], to: machine.memory)
        try machine.loadLongMode(loggedSlotWriter(first: [0, 3, 130], second: [3, 255]))

        func logged(_ what: String) throws -> [Int] {
            let bitmap = try machine.vm.dirtyLog(slot: loggedSlot)
            try context.expectEqual(bitmap.count, loggedPages / 64, "\(what): bitmap words for \(loggedPages) pages")
            return (0..<loggedPages).filter { bitmap[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
        }
        _ = try machine.expectSync(stage: 1)
        try context.expectEqual(try logged("after the first writes"), [0, 3, 130],
                                "pages logged after the guest wrote pages 0, 3 and 130 and read page 5")
        try context.expectEqual(try logged("a second call"), [], "pages logged by a second call with no guest write between")
        // The host writes page 7 through its own mapping: KVM never sees it.
        region.mapping.map { mapping in mapping.bytes[7 * 4096] = 0x55 }
        _ = try machine.expectSync(stage: 2)
        try context.expectEqual(try logged("after the second writes"), [3, 255],
                                "pages logged after the guest wrote pages 3 (again) and 255, and the host wrote page 7")
        try machine.expectDone()

        do {
            _ = try machine.vm.dirtyLog(slot: 0)
            throw TestFailure("KVM_GET_DIRTY_LOG on slot 0, which has no KVM_MEM_LOG_DIRTY_PAGES, succeeded")
        } catch let error as SystemCallError {
            try context.expectEqual(error.errno, .noSuchFileOrDirectory, "errno of KVM_GET_DIRTY_LOG on a slot without dirty logging")
        }
    }
}

extension BasicsSuite {
    /// After dirty_log_test's ring mode and api.rst's KVM_CAP_DIRTY_LOG_RING:
    /// with dirty rings on, the vCPU's ring gets an entry for each page the
    /// guest wrote in a logged slot, in order; once harvested and reset
    /// (KVM_RESET_DIRTY_RINGS) the pages are protected again and a new write
    /// logs them again; a page only read logs nothing; and the bitmap
    /// interface is refused while rings are on.
    static let dirtyRing = ConformanceTest(
        suite: name, name: "dirty_ring",
        summary: "with KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) the vCPU's ring logs each page the guest writes, in order, "
            + "and logs it again after KVM_RESET_DIRTY_RINGS; KVM_GET_DIRTY_LOG is refused meanwhile",
        requires: [.capability(.dirtyLogRing)]
    ) { context in
        var ringBytes = 0
        var acquireRelease = false
        let machine = try GuestMachine(kvm: context.kvm, beforeVCPU: { vm in
            let limit = try vm.dirtyRingLimit()
            ringBytes = min(limit.bytes, 1 << 16)
            acquireRelease = limit.acquireRelease
            try vm.enableDirtyRings(bytes: ringBytes)
        })
        context.note("dirty ring: \(ringBytes) bytes (\(ringBytes / 16) entries), \(acquireRelease ? "KVM_CAP_DIRTY_LOG_RING_ACQ_REL" : "KVM_CAP_DIRTY_LOG_RING")")
        try machine.vm.addMemory(slot: loggedSlot, at: GuestAddress(loggedBase), size: loggedPages * 4096, flags: [.logDirtyPages], to: machine.memory)
        let ring = try machine.vcpu.mapDirtyRing(bytes: ringBytes)
        try machine.loadLongMode(loggedSlotWriter(first: [130, 0, 3, 0], second: [3, 255]))

        func harvested(_ what: String) throws -> [UInt64] {
            let entries = ring.harvest()
            try context.expect(entries.allSatisfy { $0.slot == loggedSlot }, "\(what): entries outside slot \(loggedSlot): \(entries)")
            let reset = try machine.vm.resetDirtyRings()
            context.note("\(what): pages \(entries.map(\.page)) harvested, KVM_RESET_DIRTY_RINGS reset \(reset)")
            // The ring may hold a page twice (KVM pushes one for every time it
            // marks the page, and its own writes mark it each time); the pages
            // in order of first appearance are what it promises.
            var seen = Set<UInt64>()
            return entries.map(\.page).filter { seen.insert($0).inserted }
        }
        _ = try machine.expectSync(stage: 1)
        try context.expectEqual(try harvested("stage 1"), [130, 0, 3],
                                "pages in the ring after the guest wrote pages 130, 0, 3 and 0 again and read page 5")
        try context.expectEqual(try harvested("again"), [], "pages in the ring with no guest write since the reset")
        _ = try machine.expectSync(stage: 2)
        try context.expectEqual(try harvested("stage 2"), [3, 255], "pages in the ring after the guest wrote pages 3 (again, after the reset) and 255")
        try machine.expectDone()
        do {
            _ = try machine.vm.dirtyLog(slot: loggedSlot)
            throw TestFailure("KVM_GET_DIRTY_LOG succeeded while dirty rings are on")
        } catch let error as SystemCallError {
            context.note("KVM_GET_DIRTY_LOG with rings on: \(error.errno)")
        }
    }
}
