import GuestKit
import GuestMemory
import HostSystem
import KVM

/// Suite `private_mem`: the kernel's private_mem_kvm_exits_test and
/// private_mem_conversions_test (tools/testing/selftests/kvm/x86/) on a
/// KVM_X86_SW_PROTECTED_VM, then Kestrel's conversion manager driven by a
/// guest (`PrivateMemoryManagerTests`). Every case needs the VM type, which
/// only kernels built with CONFIG_KVM_SW_PROTECTED_VM offer (the lab's
/// `6.12-sw-protected`); elsewhere they SKIP naming it.
public enum PrivateMemorySuite {
    public static let name = "private_mem"
    static let page: UInt64 = 4096
    static let hugePage: UInt64 = 2 << 20

    static let base: [Requirement] = [.vmType(.softwareProtected), .capability(.guestMemfd), .capability(.userMemory2),
                                      .capabilityBits(.memoryAttributes, mask: Int(MemoryAttributes.private.rawValue), vmType: .softwareProtected)]
    static let withHypercalls = base + [.capabilityBits(.exitHypercall, mask: 1 << 12, vmType: .softwareProtected)]

    public static func tests() -> [ConformanceTest] {
        [
            ConformanceTest(
                suite: name, name: "kvm_exits.memslot_not_private",
                summary: "a guest read of a PRIVATE page whose slot has no guest_memfd ends KVM_RUN in EFAULT with "
                    + "KVM_EXIT_MEMORY_FAULT (flags PRIVATE, the page's gpa, size 4096)",
                requires: base
            ) { context in try memorySlotNotPrivate(context) },
            ConformanceTest(
                suite: name, name: "kvm_exits.memslot_deleted",
                summary: "deleting the guest_memfd slot of a PRIVATE page while the guest reads it in a loop ends KVM_RUN "
                    + "with KVM_EXIT_MEMORY_FAULT (flags PRIVATE, gpa, size 4096)",
                requires: base
            ) { context in try memorySlotDeleted(context) },
        ] + ConversionsTest.tests() + PrivateMemoryManagerTests.tests()
    }

    // MARK: private_mem_kvm_exits_test

    /// Where the exits tests put their page (as upstream: 3 GiB, slot 10).
    static let exitsAddress: UInt64 = 0xC000_0000
    static let exitsSlot: UInt32 = 10

    /// The guest: read the page at RDI forever.
    static func repeatedlyRead() -> GuestProgram {
        let program = GuestProgram()
        let a = program.assembler
        let loop = a.here()
        a.mov(.rax, .at(.rdi))
        a.jmp(loop)
        return program
    }

    static func expectPrivateFault(_ context: TestContext, _ exit: VCPUExit, _ machine: GuestMachine) throws {
        guard case .memoryFault(let fault) = exit else { throw machine.unexpected(exit) }
        try context.expectEqual(fault.flags, .private, "KVM_EXIT_MEMORY_FAULT flags (\(fault))")
        try context.expectEqualHex(fault.guestPhysicalAddress, exitsAddress, "KVM_EXIT_MEMORY_FAULT gpa")
        try context.expectEqualHex(fault.size, page, "KVM_EXIT_MEMORY_FAULT size")
    }

    static func memorySlotNotPrivate(_ context: TestContext) throws {
        let machine = try GuestMachine(kvm: context.kvm, type: .softwareProtected)
        let memory = try MemoryMapping(anonymousSize: Int(page), sharing: .private)
        try machine.vm.install(MemoryRegion(slot: exitsSlot, start: GuestAddress(exitsAddress), mapping: memory))
        try machine.mapGigabyte(containing: exitsAddress)
        try machine.vm.setMemoryAttributes(address: exitsAddress, size: page, attributes: .private)
        try machine.loadLongMode(repeatedlyRead(), arguments: [exitsAddress])
        try expectPrivateFault(context, try machine.runUntilExit(), machine)
    }

    static func memorySlotDeleted(_ context: TestContext) throws {
        let machine = try GuestMachine(kvm: context.kvm, type: .softwareProtected)
        let memfd = try machine.vm.createGuestMemfd(size: page)
        let shared = try MemoryMapping(anonymousSize: Int(page), sharing: .private)
        try machine.vm.install(MemoryRegion(slot: exitsSlot, start: GuestAddress(exitsAddress), mapping: shared, guestMemfd: memfd))
        try machine.mapGigabyte(containing: exitsAddress)
        try machine.vm.setMemoryAttributes(address: exitsAddress, size: page, attributes: .private)
        try machine.loadLongMode(repeatedlyRead(), arguments: [exitsAddress])
        // As upstream: the vCPU runs on its own thread while this one deletes
        // the slot; the guest's next fault on the page finds no slot.
        let runner = VCPURunner(machine)
        let thread = try POSIXThread.start { runner.run(timeout: 10) }
        try machine.vm.removeRegion(slot: exitsSlot)
        thread.join()
        try expectPrivateFault(context, try runner.result.get(), machine)
    }
}

/// Runs a machine's vCPU to its next exit on another thread and keeps the
/// result. Unchecked: the machine is used by that thread alone until `join`.
final class VCPURunner: @unchecked Sendable {
    private let machine: GuestMachine
    private(set) var result: Result<VCPUExit, any Error> = .failure(TestFailure("the vCPU thread did not run"))

    init(_ machine: GuestMachine) { self.machine = machine }

    func run(timeout: Double) { result = Result { try machine.runUntilExit(timeout: timeout) } }
}
