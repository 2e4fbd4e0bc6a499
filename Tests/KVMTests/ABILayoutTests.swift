import CKVM
import Testing
@testable import KVM

/// Struct sizes and offsets pinned to the kernel's x86-64 ABI
/// (the Linux tree's include/uapi/linux/kvm.h).
@Suite(.timeLimit(.minutes(5))) struct ABILayoutTests {
    @Test func structSizesMatchTheKernelABI() {
        #expect(MemoryLayout<ckvm_regs>.size == 144)
        #expect(MemoryLayout<ckvm_segment>.size == 24)
        #expect(MemoryLayout<ckvm_dtable>.size == 16)
        #expect(MemoryLayout<ckvm_sregs>.size == 312)
        #expect(MemoryLayout<ckvm_fpu>.size == 416)
        #expect(MemoryLayout<ckvm_msr_entry>.size == 16)
        #expect(MemoryLayout<ckvm_msrs_header>.size == 8)
        #expect(MemoryLayout<ckvm_msr_list_header>.size == 4)
        #expect(MemoryLayout<ckvm_cpuid_entry2>.size == 40)
        #expect(MemoryLayout<ckvm_cpuid2_header>.size == 8)
        #expect(MemoryLayout<ckvm_reg_list_header>.size == 8)
        #expect(MemoryLayout<ckvm_one_reg>.size == 16)
        #expect(MemoryLayout<ckvm_vcpu_events>.size == 64)
        #expect(MemoryLayout<ckvm_mp_state>.size == 4)
        #expect(MemoryLayout<ckvm_xcrs>.size == 392)
        #expect(MemoryLayout<ckvm_userspace_memory_region>.size == 32)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.size == 160)
        #expect(MemoryLayout<ckvm_create_guest_memfd>.size == 64)
        #expect(MemoryLayout<ckvm_pre_fault_memory>.size == 64)
        #expect(MemoryLayout<ckvm_guest_debug>.size == 72)
        #expect(MemoryLayout<ckvm_debug_exit>.size == 32)
        #expect(MemoryLayout<ckvm_memory_attributes>.size == 32)
        #expect(MemoryLayout<ckvm_dirty_log>.size == 16)
        #expect(MemoryLayout<ckvm_dirty_log>.offset(of: \.dirty_bitmap) == 8)
        #expect(MemoryLayout<ckvm_clear_dirty_log>.size == 24)
        #expect(MemoryLayout<ckvm_clear_dirty_log>.offset(of: \.first_page) == 8)
        #expect(MemoryLayout<ckvm_dirty_gfn>.size == 16)
        #expect(MemoryLayout<ckvm_device_attr>.size == 24)
        #expect(MemoryLayout<ckvm_irqfd>.size == 32)
        #expect(MemoryLayout<ckvm_irq_routing_header>.size == 8)
        #expect(MemoryLayout<ckvm_irq_routing_entry>.size == 48)
        #expect(MemoryLayout<ckvm_irq_routing_entry>.offset(of: \.irqchip) == 16)
        #expect(MemoryLayout<ckvm_ioeventfd>.size == 64)
        #expect(MemoryLayout<ckvm_ioeventfd>.offset(of: \.fd) == 20)
        #expect(MemoryLayout<ckvm_exit_info>.size == 256)
        #expect(MemoryLayout<ckvm_irqchip>.size == 520)
        #expect(MemoryLayout<ckvm_pit_channel_state>.size == 24)
        #expect(MemoryLayout<ckvm_pit_channel_state>.offset(of: \.count_load_time) == 16)
        #expect(MemoryLayout<ckvm_pit_state2>.size == 112)
        #expect(MemoryLayout<ckvm_pit_state2>.offset(of: \.flags) == 72)
        #expect(MemoryLayout<ckvm_clock_data>.size == 48)
        #expect(MemoryLayout<ckvm_clock_data>.offset(of: \.realtime) == 16)
    }

    @Test func runAreaLayout() {
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.immediate_exit) == 1)
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.exit_reason) == 8)
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.cr8) == 16)
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.exit) == 32)
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.kvm_valid_regs) == 288)
        #expect(MemoryLayout<ckvm_run>.offset(of: \ckvm_run.sync_regs) == 304)
        #expect(MemoryLayout<ckvm_run>.size == 2352)
    }

    @Test func exitPayloadOffsets() {
        #expect(MemoryLayout<ckvm_exit_io>.offset(of: \ckvm_exit_io.port) == 2)
        #expect(MemoryLayout<ckvm_exit_io>.offset(of: \ckvm_exit_io.data_offset) == 8)
        #expect(MemoryLayout<ckvm_exit_mmio>.offset(of: \ckvm_exit_mmio.len) == 16)
        #expect(MemoryLayout<ckvm_exit_internal>.offset(of: \ckvm_exit_internal.data) == 8)
        #expect(MemoryLayout<ckvm_exit_memory_fault>.size == 24)
        #expect(MemoryLayout<ckvm_exit_snp_req_certs>.offset(of: \ckvm_exit_snp_req_certs.ret) == 16)
        #expect(MemoryLayout<ckvm_exit_hypercall>.offset(of: \ckvm_exit_hypercall.ret) == 56)
        #expect(MemoryLayout<ckvm_vcpu_events>.offset(of: \ckvm_vcpu_events.exception_payload) == 56)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \ckvm_userspace_memory_region2.guest_memfd) == 40)
    }

    @Test func sevStructLayoutsArePinned() {
        #expect(MemoryLayout<ckvm_sev_cmd>.size == 24)
        #expect(MemoryLayout<ckvm_sev_cmd>.offset(of: \.data) == 8)
        #expect(MemoryLayout<ckvm_sev_cmd>.offset(of: \.error) == 16)
        #expect(MemoryLayout<ckvm_sev_cmd>.offset(of: \.sev_fd) == 20)
        #expect(MemoryLayout<ckvm_sev_init>.size == 48)
        #expect(MemoryLayout<ckvm_sev_init>.offset(of: \.ghcb_version) == 12)
        #expect(MemoryLayout<ckvm_sev_snp_launch_start>.size == 64)
        #expect(MemoryLayout<ckvm_sev_snp_launch_start>.offset(of: \.gosvw) == 8)
        #expect(MemoryLayout<ckvm_sev_snp_launch_start>.offset(of: \.flags) == 24)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.size == 64)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.offset(of: \.len) == 16)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.offset(of: \.type) == 24)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.offset(of: \.flags) == 26)
        #expect(MemoryLayout<ckvm_sev_snp_launch_update>.offset(of: \.pad2) == 32)
        #expect(MemoryLayout<ckvm_sev_snp_launch_finish>.size == 88)
        #expect(MemoryLayout<ckvm_sev_snp_launch_finish>.offset(of: \.host_data) == 19)
        #expect(MemoryLayout<ckvm_sev_snp_launch_finish>.offset(of: \.flags) == 54)
        #expect(MemoryLayout<ckvm_sev_snp_launch_finish>.offset(of: \.pad1) == 56)
    }

    @Test func enableCapabilityLayout() {
        #expect(MemoryLayout<ckvm_enable_cap>.size == 104)
        #expect(MemoryLayout<ckvm_enable_cap>.offset(of: \.args) == 8)
        #expect(MemoryLayout<ckvm_enable_cap>.offset(of: \.pad) == 40)
    }

    @Test func vmgexitLayoutMatchesTheV15Structure() {
        #expect(MemoryLayout<ckvm_exit_vmgexit>.size == 32)
        #expect(MemoryLayout<ckvm_exit_vmgexit>.offset(of: \.data_gpa) == 8)
        #expect(MemoryLayout<ckvm_exit_vmgexit>.offset(of: \.data_npages) == 16)
        #expect(MemoryLayout<ckvm_exit_vmgexit>.offset(of: \.ret) == 24)
        #expect(MemoryLayout<ckvm_exit_vmgexit>.offset(of: \.flags) == 28)
        #expect(MemoryLayout<ckvm_exit_vmgexit>.offset(of: \.status) == 29)
        #expect(ckvm_run_vmgexit_offset() == 32)
    }
}

@Suite(.timeLimit(.minutes(5))) struct IoctlNumberTests {
    static let expectedNumbers: [(IoctlRequest, UInt)] = [
        (KVMRequest.setUserMemoryRegion2, 0x40A0_AE49),
        (KVMRequest.createGuestMemfd, 0xC040_AED4),
        (KVMRequest.preFaultMemory, 0xC040_AED5),
        (KVMRequest.setGuestDebug, 0x4048_AE9B),
        (KVMRequest.setMemoryAttributes, 0x4020_AED2),
        (KVMRequest.getDirtyLog, 0x4010_AE42),
        (KVMRequest.clearDirtyLog, 0xC018_AEC0),
        (KVMRequest.resetDirtyRings, 0xAEC7),
        (KVMRequest.enableCapability, 0x4068_AEA3),
        (KVMRequest.getOneRegister, 0x4010_AEAB),
        (KVMRequest.setOneRegister, 0x4010_AEAC),
        (KVMRequest.memoryEncryptOperation, 0xC008_AEBA),
        (KVMRequest.getAPIVersion, 0xAE00),
        (KVMRequest.irqfd, 0x4020_AE76),
        (KVMRequest.setGSIRouting, 0x4008_AE6A),
        (KVMRequest.ioeventfd, 0x4040_AE79),
        (KVMRequest.createVM, 0xAE01),
        (KVMRequest.checkExtension, 0xAE03),
        (KVMRequest.run, 0xAE80),
        (KVMRequest.getRegisters, 0x8090_AE81),
        (KVMRequest.setSpecialRegisters, 0x4138_AE84),
        (KVMRequest.getFPU, 0x81A0_AE8C),
        (KVMRequest.getMSRs, 0xC008_AE88),
        (KVMRequest.setMSRs, 0x4008_AE89),
        (KVMRequest.setCPUID2, 0x4008_AE90),
        (KVMRequest.getSupportedCPUID, 0xC008_AE05),
        (KVMRequest.getVCPUEvents, 0x8040_AE9F),
        (KVMRequest.getXCRs, 0x8188_AEA6),
        (KVMRequest.setUserMemoryRegion, 0x4020_AE46),
        (KVMRequest.getRegisterList, 0xC008_AEB0),
        (KVMRequest.hasDeviceAttribute, 0x4018_AEE3),
        (KVMRequest.getInterruptController, 0xC208_AE62),
        (KVMRequest.setInterruptController, 0x8208_AE63),
        (KVMRequest.getPIT2, 0x8070_AE9F),
        (KVMRequest.setPIT2, 0x4070_AEA0),
        (KVMRequest.getClock, 0x8030_AE7C),
        (KVMRequest.setClock, 0x4030_AE7B),
        (KVMRequest.getXSAVE, 0x9000_AEA4),
        (KVMRequest.setXSAVE, 0x5000_AEA5),
        (KVMRequest.getXSAVE2, 0x9000_AECF),
        (KVMRequest.getDebugRegisters, 0x8080_AEA1),
        (KVMRequest.setDebugRegisters, 0x4080_AEA2),
        (KVMRequest.getLocalAPIC, 0x8400_AE8E),
    ]

    @Test(arguments: IoctlNumberTests.expectedNumbers)
    func requestNumber(_ request: IoctlRequest, _ expected: UInt) {
        #expect(request.number == expected, "\(request.name)")
    }

    @Test func oneRegisterIDs() {
        #expect(OneRegisterID.msr(0x6A0).rawValue == 0x2030_0002_0000_06A0)
        #expect(OneRegisterID.guestSSP.rawValue == 0x2030_0003_0000_0000)
        #expect(OneRegisterID.msr(0x6A0).size == 8)
    }

    @Test func vmTypesFromMask() {
        #expect(VMType.types(inMask: 0x1) == [.default])
        #expect(VMType.types(inMask: 0x13).map(\.rawValue) == [0, 1, 4])
        #expect(VMType.sevSNP.name == "KVM_X86_SNP_VM")
    }

    @Test func errorsNameTheCallAndErrno() {
        let error = SystemCallError(operation: "KVM_CREATE_GUEST_MEMFD", errno: .invalidArgument)
        #expect(error.description.hasPrefix("KVM_CREATE_GUEST_MEMFD failed: EINVAL"))
        #expect(SystemCallError(operation: "x", errno: .init(rawValue: 25)).description.contains("ENOTTY"))
    }
}

@Suite(.timeLimit(.minutes(5))) struct HotPathOffsetTests {
    @Test func constantOffsetsMatchTheLayout() {
        #expect(ckvm_run_exit_offset() == MemoryLayout<ckvm_run>.offset(of: \ckvm_run.exit))
        #expect(ckvm_run_mmio_data_offset()
                == MemoryLayout<ckvm_run>.offset(of: \ckvm_run.exit)! + MemoryLayout<ckvm_exit_mmio>.offset(of: \ckvm_exit_mmio.data)!)
    }
}
