import CKVM
import Testing
@testable import KVM

/// The arm64 and Arm CCA realm ABI, pinned on this (x86) host: struct
/// layouts from arch/arm64/include/uapi/asm/kvm.h and the v14 realm series,
/// ioctl numbers, and ONE_REG ids checked against the values arm64 VMMs
/// (kvmtool, QEMU) use for the same registers.
@Suite(.timeLimit(.minutes(5))) struct ARM64ABITests {
    @Test func structLayouts() {
        #expect(MemoryLayout<ckvm_vcpu_init>.size == 32)
        #expect(MemoryLayout<ckvm_arm_rmi_populate>.size == 32)
        #expect(MemoryLayout<ckvm_arm_rmi_populate>.offset(of: \.flags) == 24)
        #expect(MemoryLayout<ckvm_arm_rmi_populate>.offset(of: \.reserved) == 28)
        // struct kvm_regs: user_pt_regs (34 words), sp_el1, elr_el1, spsr[5],
        // then the 16-byte-aligned user_fpsimd_state at 336 (528 bytes).
        #expect(MemoryLayout<ckvm_arm64_regs>.offset(of: \.pc) == 256)
        #expect(MemoryLayout<ckvm_arm64_regs>.offset(of: \.sp_el1) == 272)
        #expect(MemoryLayout<ckvm_arm64_regs>.offset(of: \.vregs) == 336)
        #expect(MemoryLayout<ckvm_arm64_regs>.offset(of: \.fpsr) == 848)
        #expect(MemoryLayout<ckvm_arm64_regs>.size == 864)
        #expect(MemoryLayout<ckvm_exit_arm_nisv>.size == 16)
        #expect(MemoryLayout<ckvm_exit_hypercall>.offset(of: \.flags) == 64)
    }

    @Test func ioctlNumbers() {
        #expect(KVMRequest.armVCPUInit.number == 0x4020_AEAE)
        #expect(KVMRequest.armPreferredTarget.number == 0x8020_AEAF)
        #expect(KVMRequest.armVCPUFinalize.number == 0x4004_AEC2)
        #expect(KVMRequest.armRMIPopulate.number == 0xC020_AED7)
    }

    @Test func coreRegisterIDs() {
        typealias ID = OneRegisterID
        #expect(ID.arm64Core(.x(0)).rawValue == 0x6030_0000_0010_0000)
        #expect(ID.arm64Core(.x(30)).rawValue == 0x6030_0000_0010_003C)
        #expect(ID.arm64Core(.sp).rawValue == 0x6030_0000_0010_003E)
        #expect(ID.arm64Core(.pc).rawValue == 0x6030_0000_0010_0040)
        #expect(ID.arm64Core(.pstate).rawValue == 0x6030_0000_0010_0042)
        #expect(ID.arm64Core(.spEL1).rawValue == 0x6030_0000_0010_0044)
        #expect(ID.arm64Core(.elrEL1).rawValue == 0x6030_0000_0010_0046)
        #expect(ID.arm64Core(.spsr(0)).rawValue == 0x6030_0000_0010_0048)
        #expect(ID.arm64Core(.v(0)).rawValue == 0x6040_0000_0010_0054)
        #expect(ID.arm64Core(.v(31)).rawValue == 0x6040_0000_0010_00D0)
        #expect(ID.arm64Core(.fpsr).rawValue == 0x6020_0000_0010_00D4)
        #expect(ID.arm64Core(.fpcr).rawValue == 0x6020_0000_0010_00D5)
        #expect(ID.arm64Core(.v(0)).size == 16 && ID.arm64Core(.fpsr).size == 4 && ID.arm64Core(.pc).size == 8)
    }

    @Test func systemAndFirmwareRegisterIDs() {
        typealias R = OneRegisterID.ARM64SystemRegister
        #expect(R.mpidrEL1.rawValue == 0x6030_0000_0013_C005)
        #expect(R.sctlrEL1.rawValue == 0x6030_0000_0013_C080)
        #expect(R.idAA64DFR0EL1.rawValue == 0x6030_0000_0013_C028)
        // The ABI's swapped timer pair (KVM_REG_ARM_TIMER_CVAL / _CNT).
        #expect(R.timerControl.rawValue == 0x6030_0000_0013_DF19)
        #expect(R.timerCount.rawValue == 0x6030_0000_0013_DF1A)
        #expect(R.timerCompareValue.rawValue == 0x6030_0000_0013_DF02)
        #expect(OneRegisterID.arm64PSCIVersion.rawValue == 0x6030_0000_0014_0000)
    }

    @Test func vcpuInitCarriesTheFeatureWord() {
        let configuration = ARM64VCPUInit(features: [.psci02, .powerOff, .sve])
        let raw = configuration.raw
        #expect(raw.target == 5)
        #expect(raw.features.0 == 0b1_0101)
        #expect(raw.features.1 == 0 && raw.features.6 == 0)
        #expect(ARM64VCPUInit(raw) == configuration)
        #expect("\(ARM64VCPUFeatures(rawValue: 0x204))" == "PSCI_0_2|0x200")
    }

    @Test func machineTypeEncoding() throws {
        let realm = try ARM64MachineType(.realm, ipaBits: 48)
        #expect(realm.rawValue == 0x4000_0030)
        #expect(realm.unprotectedBit == 1 << 47)
        #expect(realm.isProtected(0x4000_0000) && !realm.isProtected(1 << 47 | 0x4000_0000))
        #expect(try ARM64MachineType(.realm).rawValue == 0x4000_0000)
        #expect(try ARM64MachineType(.realm).unprotectedBit == 1 << 39)  // the default 40 bits
        #expect(try ARM64MachineType(.protected, ipaBits: 40).rawValue == 0x8000_0028)
        #expect(throws: KVMUsageError.self) { try ARM64MachineType(.realm, ipaBits: 31) }
        #expect(throws: KVMUsageError.self) { try ARM64MachineType(.realm, ipaBits: 53) }
        #expect(Capability.armRMI.rawValue == 249)
        #expect(realm.description == "KVM_VM_TYPE_ARM_REALM | KVM_VM_TYPE_ARM_IPA_SIZE(48) = 0x40000030")
    }

    @Test func arm64ExitsDecode() {
        let area = RunArea.simulated()
        let smc = area.simulate(.hypercall(number: 0xC400_0003, arguments: [], flags: 1))
        guard case .hypercall(let call) = smc else { Issue.record("\(smc)"); return }
        #expect(call.smcccFunctionID == 0xC400_0003 && call.arm64Flags == .smc)
        let nisv = area.simulate(.armNoISV(syndrome: 0x93, faultIPA: 0x900_0000))
        #expect(nisv.reason == .armNoISV)
        #expect(nisv.description.contains("IPA 0x9000000") && nisv.description.contains("KVM_EXIT_ARM_NISV"))
        let reset = area.simulate(.systemEvent(type: .reset, data: [1]))
        guard case .systemEvent(let event) = reset else { Issue.record("\(reset)"); return }
        #expect(event.isPSCIReset2)
        let second = area.simulate(.systemEvent(type: .reset, data: [0]))
        guard case .systemEvent(let plain) = second else { Issue.record("\(second)"); return }
        #expect(!plain.isPSCIReset2)
    }

    /// Off arm64 the arm64 ioctls are unknown to KVM: the error names the call.
    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func arm64IoctlsAreRefusedOnX86() throws {
        #if arch(x86_64)
        let vm = try KVMSystem().createVirtualMachine()
        do {
            _ = try vm.preferredARM64Target()
            Issue.record("KVM_ARM_PREFERRED_TARGET succeeded on x86")
        } catch let error as SystemCallError {
            #expect(error.errno == .inappropriateIOCTLForDevice)
            #expect("\(error)".contains("KVM_ARM_PREFERRED_TARGET"))
        }
        #endif
    }
}
