import GuestKit
import GuestMemory
import KVM

extension BasicsSuite {
    /// Where the logged slot lies: 1 MiB (256 pages) right after the 4 MiB
    /// of RAM the harness gives slot 0, inside the first GiB it maps.
    static let loggedSlot: UInt32 = 1
    static let loggedBase: UInt64 = 0x40_0000
    static let loggedPages = 256

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
        let program = GuestProgram()
        let code = program.assembler
        func write(page: Int) {
            code.mov(.rax, loggedBase + UInt64(page) * 4096 + 8)
            code.mov(.at(.rax), immediate: 0x4B45)
        }
        for page in [0, 3, 130] { write(page: page) }
        code.mov(.rax, loggedBase + 5 * 4096)
        code.mov(.rbx, .at(.rax))  // read only
        program.sync(stage: 1)
        write(page: 3)
        write(page: 255)
        program.sync(stage: 2)
        program.done()
        try machine.loadLongMode(program)

        func logged(_ what: String) throws -> [Int] {
            let bitmap = try machine.vm.dirtyLog(slot: loggedSlot, pages: loggedPages)
            try context.expectEqual(bitmap.count, loggedPages / 64, "\(what): bitmap words for \(loggedPages) pages")
            return (0..<loggedPages).filter { bitmap[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
        }
        _ = try machine.expectSync(stage: 1)
        try context.expectEqual(try logged("after the first writes"), [0, 3, 130],
                                "pages logged after the guest wrote pages 0, 3 and 130 and read page 5")
        try context.expectEqual(try logged("a second call"), [], "pages logged by a second call with no guest write between")
        // The host writes page 7 through its own mapping: KVM never sees it.
        try region.mapping.map { mapping in mapping.bytes[7 * 4096] = 0x55 }
        _ = try machine.expectSync(stage: 2)
        try context.expectEqual(try logged("after the second writes"), [3, 255],
                                "pages logged after the guest wrote pages 3 (again) and 255, and the host wrote page 7")
        try machine.expectDone()

        do {
            _ = try machine.vm.dirtyLog(slot: 0, pages: Int(machine.memorySize / 4096))
            throw TestFailure("KVM_GET_DIRTY_LOG on slot 0, which has no KVM_MEM_LOG_DIRTY_PAGES, succeeded")
        } catch let error as SystemCallError {
            try context.expectEqual(error.errno, .noSuchFileOrDirectory, "errno of KVM_GET_DIRTY_LOG on a slot without dirty logging")
        }
    }
}
