@testable import Lab
import Testing

@Suite struct KernelModuleTests {
    @Test func moduleNamesUseUnderscores() {
        #expect(KernelModule.moduleName(fileName: "kernel/arch/x86/kvm/kvm-amd.ko.xz") == "kvm_amd")
        #expect(KernelModule.moduleName(fileName: "irqbypass.ko") == "irqbypass")
    }
}
