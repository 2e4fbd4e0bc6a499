import GuestMemory
import HostSystem
import KVM
import Testing
@testable import GuestKit

/// KVM_PRE_FAULT_MEMORY against this host's KVM (`kestrel run --prefault`).
@Suite(.timeLimit(.minutes(5))) struct PreFaultTests {
    static var supported: Bool {
        guard KVMSystem.isAvailable(), let kvm = try? KVMSystem() else { return false }
        return ((try? kvm.checkExtension(.preFaultMemory)) ?? 0) != 0
    }

    @Test(.enabled(if: supported, "needs /dev/kvm with KVM_CAP_PRE_FAULT_MEMORY (Linux 6.10)"))
    func ramIsPrefaultedAndAddressesOutsideSlotsAreRefused() throws {
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.memory.write([0xF4], at: GuestAddress(0x1000))  // the guest still runs from it afterwards
        try machine.vcpu.preFaultMemory(address: 0, size: machine.memorySize)
        do {
            try machine.vcpu.preFaultMemory(address: 1 << 32, size: 4096)
            Issue.record("a range outside every memory slot was pre-faulted")
        } catch let error as SystemCallError {
            #expect(error.errno == .noSuchFileOrDirectory, "ENOENT outside the slots: \(error)")
        }
        #expect(throws: SystemCallError.self) { try machine.vcpu.preFaultMemory(address: 0x800, size: 4096) }
        try machine.loadRealMode(code: [0xF4], at: 0x1000)
        guard case .halt = try machine.runUntilExit() else { Issue.record("the guest did not reach its HLT after the pre-fault"); return }
    }
}
