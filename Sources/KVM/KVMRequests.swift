import CKVM

/// The KVM ioctl requests Kestrel issues, encoded from our own ABI structs.
public enum KVMRequest {
    // System (/dev/kvm)
    public static let getAPIVersion = IoctlRequest("KVM_GET_API_VERSION", .none, 0x00)
    public static let createVM = IoctlRequest("KVM_CREATE_VM", .none, 0x01)
    public static let getMSRIndexList = IoctlRequest(
        "KVM_GET_MSR_INDEX_LIST", .readWrite, 0x02, size: MemoryLayout<ckvm_msr_list_header>.size)
    public static let checkExtension = IoctlRequest("KVM_CHECK_EXTENSION", .none, 0x03)
    public static let getVCPUMmapSize = IoctlRequest("KVM_GET_VCPU_MMAP_SIZE", .none, 0x04)
    public static let getSupportedCPUID = IoctlRequest(
        "KVM_GET_SUPPORTED_CPUID", .readWrite, 0x05, size: MemoryLayout<ckvm_cpuid2_header>.size)
    public static let getMSRFeatureIndexList = IoctlRequest(
        "KVM_GET_MSR_FEATURE_INDEX_LIST", .readWrite, 0x0A, size: MemoryLayout<ckvm_msr_list_header>.size)

    // VM
    public static let createVCPU = IoctlRequest("KVM_CREATE_VCPU", .none, 0x41)
    public static let setUserMemoryRegion = IoctlRequest(
        "KVM_SET_USER_MEMORY_REGION", .write, 0x46, size: MemoryLayout<ckvm_userspace_memory_region>.size)
    public static let getDirtyLog = IoctlRequest("KVM_GET_DIRTY_LOG", .write, 0x42, size: MemoryLayout<ckvm_dirty_log>.size)
    public static let clearDirtyLog = IoctlRequest(
        "KVM_CLEAR_DIRTY_LOG", .readWrite, 0xC0, size: MemoryLayout<ckvm_clear_dirty_log>.size)
    public static let resetDirtyRings = IoctlRequest("KVM_RESET_DIRTY_RINGS", .none, 0xC7)
    public static let setTSSAddress = IoctlRequest("KVM_SET_TSS_ADDR", .none, 0x47)
    public static let setIdentityMapAddress = IoctlRequest(
        "KVM_SET_IDENTITY_MAP_ADDR", .write, 0x48, size: MemoryLayout<UInt64>.size)
    public static let setUserMemoryRegion2 = IoctlRequest(
        "KVM_SET_USER_MEMORY_REGION2", .write, 0x49, size: MemoryLayout<ckvm_userspace_memory_region2>.size)
    public static let setMemoryAttributes = IoctlRequest(
        "KVM_SET_MEMORY_ATTRIBUTES", .write, 0xD2, size: MemoryLayout<ckvm_memory_attributes>.size)
    public static let createGuestMemfd = IoctlRequest(
        "KVM_CREATE_GUEST_MEMFD", .readWrite, 0xD4, size: MemoryLayout<ckvm_create_guest_memfd>.size)
    public static let enableCapability = IoctlRequest(
        "KVM_ENABLE_CAP", .write, 0xA3, size: MemoryLayout<ckvm_enable_cap>.size)
    public static let createInterruptController = IoctlRequest("KVM_CREATE_IRQCHIP", .none, 0x60)
    public static let interruptLine = IoctlRequest(
        "KVM_IRQ_LINE", .write, 0x61, size: MemoryLayout<ckvm_irq_level>.size)
    public static let setGSIRouting = IoctlRequest(
        "KVM_SET_GSI_ROUTING", .write, 0x6A, size: MemoryLayout<ckvm_irq_routing_header>.size)
    public static let irqfd = IoctlRequest("KVM_IRQFD", .write, 0x76, size: MemoryLayout<ckvm_irqfd>.size)
    public static let ioeventfd = IoctlRequest("KVM_IOEVENTFD", .write, 0x79, size: MemoryLayout<ckvm_ioeventfd>.size)
    public static let createPIT2 = IoctlRequest(
        "KVM_CREATE_PIT2", .write, 0x77, size: MemoryLayout<ckvm_pit_config>.size)
    public static let getLocalAPIC = IoctlRequest("KVM_GET_LAPIC", .read, 0x8E, size: 1024)
    public static let setLocalAPIC = IoctlRequest("KVM_SET_LAPIC", .write, 0x8F, size: 1024)
    // VM state for snapshots
    public static let getInterruptController = IoctlRequest(
        "KVM_GET_IRQCHIP", .readWrite, 0x62, size: MemoryLayout<ckvm_irqchip>.size)
    // The kernel declares KVM_SET_IRQCHIP with _IOR although it reads the struct.
    public static let setInterruptController = IoctlRequest(
        "KVM_SET_IRQCHIP", .read, 0x63, size: MemoryLayout<ckvm_irqchip>.size)
    public static let getPIT2 = IoctlRequest("KVM_GET_PIT2", .read, 0x9F, size: MemoryLayout<ckvm_pit_state2>.size)
    public static let setPIT2 = IoctlRequest("KVM_SET_PIT2", .write, 0xA0, size: MemoryLayout<ckvm_pit_state2>.size)
    public static let setClock = IoctlRequest("KVM_SET_CLOCK", .write, 0x7B, size: MemoryLayout<ckvm_clock_data>.size)
    public static let getClock = IoctlRequest("KVM_GET_CLOCK", .read, 0x7C, size: MemoryLayout<ckvm_clock_data>.size)
    public static let memoryEncryptOperation = IoctlRequest(
        "KVM_MEMORY_ENCRYPT_OP", .readWrite, 0xBA, size: MemoryLayout<UInt>.size)

    public static let createDevice = IoctlRequest(
        "KVM_CREATE_DEVICE", .readWrite, 0xE0, size: MemoryLayout<ckvm_create_device>.size)
    // Device attributes (also valid on /dev/kvm for KVM_X86_GRP_* groups)
    public static let setDeviceAttribute = IoctlRequest(
        "KVM_SET_DEVICE_ATTR", .write, 0xE1, size: MemoryLayout<ckvm_device_attr>.size)
    public static let getDeviceAttribute = IoctlRequest(
        "KVM_GET_DEVICE_ATTR", .write, 0xE2, size: MemoryLayout<ckvm_device_attr>.size)
    public static let hasDeviceAttribute = IoctlRequest(
        "KVM_HAS_DEVICE_ATTR", .write, 0xE3, size: MemoryLayout<ckvm_device_attr>.size)

    // vCPU
    public static let run = IoctlRequest("KVM_RUN", .none, 0x80)
    public static let getRegisters = IoctlRequest("KVM_GET_REGS", .read, 0x81, size: MemoryLayout<ckvm_regs>.size)
    public static let setRegisters = IoctlRequest("KVM_SET_REGS", .write, 0x82, size: MemoryLayout<ckvm_regs>.size)
    public static let getSpecialRegisters = IoctlRequest(
        "KVM_GET_SREGS", .read, 0x83, size: MemoryLayout<ckvm_sregs>.size)
    public static let setSpecialRegisters = IoctlRequest(
        "KVM_SET_SREGS", .write, 0x84, size: MemoryLayout<ckvm_sregs>.size)
    public static let getMSRs = IoctlRequest("KVM_GET_MSRS", .readWrite, 0x88, size: MemoryLayout<ckvm_msrs_header>.size)
    public static let setMSRs = IoctlRequest("KVM_SET_MSRS", .write, 0x89, size: MemoryLayout<ckvm_msrs_header>.size)
    public static let setGuestDebug = IoctlRequest(
        "KVM_SET_GUEST_DEBUG", .write, 0x9B, size: MemoryLayout<ckvm_guest_debug>.size)
    public static let preFaultMemory = IoctlRequest(
        "KVM_PRE_FAULT_MEMORY", .readWrite, 0xD5, size: MemoryLayout<ckvm_pre_fault_memory>.size)
    public static let getFPU = IoctlRequest("KVM_GET_FPU", .read, 0x8C, size: MemoryLayout<ckvm_fpu>.size)
    public static let setFPU = IoctlRequest("KVM_SET_FPU", .write, 0x8D, size: MemoryLayout<ckvm_fpu>.size)
    public static let setCPUID2 = IoctlRequest(
        "KVM_SET_CPUID2", .write, 0x90, size: MemoryLayout<ckvm_cpuid2_header>.size)
    public static let getCPUID2 = IoctlRequest(
        "KVM_GET_CPUID2", .readWrite, 0x91, size: MemoryLayout<ckvm_cpuid2_header>.size)
    public static let getMPState = IoctlRequest("KVM_GET_MP_STATE", .read, 0x98, size: MemoryLayout<ckvm_mp_state>.size)
    public static let setMPState = IoctlRequest("KVM_SET_MP_STATE", .write, 0x99, size: MemoryLayout<ckvm_mp_state>.size)
    public static let getVCPUEvents = IoctlRequest(
        "KVM_GET_VCPU_EVENTS", .read, 0x9F, size: MemoryLayout<ckvm_vcpu_events>.size)
    public static let setVCPUEvents = IoctlRequest(
        "KVM_SET_VCPU_EVENTS", .write, 0xA0, size: MemoryLayout<ckvm_vcpu_events>.size)
    public static let getXCRs = IoctlRequest("KVM_GET_XCRS", .read, 0xA6, size: MemoryLayout<ckvm_xcrs>.size)
    public static let setXCRs = IoctlRequest("KVM_SET_XCRS", .write, 0xA7, size: MemoryLayout<ckvm_xcrs>.size)
    /// struct kvm_xsave is 4096 bytes; KVM_GET_XSAVE2 takes the size
    /// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports, and the number keeps 4096.
    public static let getXSAVE = IoctlRequest("KVM_GET_XSAVE", .read, 0xA4, size: 4096)
    public static let setXSAVE = IoctlRequest("KVM_SET_XSAVE", .write, 0xA5, size: 4096)
    public static let getXSAVE2 = IoctlRequest("KVM_GET_XSAVE2", .read, 0xCF, size: 4096)
    public static let getDebugRegisters = IoctlRequest("KVM_GET_DEBUGREGS", .read, 0xA1, size: 128)
    public static let setDebugRegisters = IoctlRequest("KVM_SET_DEBUGREGS", .write, 0xA2, size: 128)
    public static let getOneRegister = IoctlRequest(
        "KVM_GET_ONE_REG", .write, 0xAB, size: MemoryLayout<ckvm_one_reg>.size)
    public static let setOneRegister = IoctlRequest(
        "KVM_SET_ONE_REG", .write, 0xAC, size: MemoryLayout<ckvm_one_reg>.size)
    public static let getRegisterList = IoctlRequest(
        "KVM_GET_REG_LIST", .readWrite, 0xB0, size: MemoryLayout<ckvm_reg_list_header>.size)
}
