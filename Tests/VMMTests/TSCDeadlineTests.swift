import KVM
import Testing
import X86
@testable import VMM

/// TSC-deadline mode is offered wherever the in-kernel local APIC emulates
/// it, whether or not KVM_GET_SUPPORTED_CPUID lists it.
@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct TSCDeadlineTests {
    @Test func aMachinesCPUIDHasTSCDeadlineWhenKVMEmulatesIt() throws {
        let kvm = try KVMSystem()
        let emulated = try kvm.checkExtension(.tscDeadlineTimer) > 0
        let listed = CPUFeature.tscDeadline.isPresent(in: try kvm.supportedCPUID())
        let offered = CPUFeature.tscDeadline.isPresent(in: try MachineBuilder.supportedCPUID(kvm))
        #expect(offered == (emulated || listed), "KVM_CAP_TSC_DEADLINE_TIMER \(emulated), listed by KVM \(listed)")
        print("this host: KVM_CAP_TSC_DEADLINE_TIMER \(emulated), listed in KVM_GET_SUPPORTED_CPUID \(listed), offered \(offered)")
    }
}
