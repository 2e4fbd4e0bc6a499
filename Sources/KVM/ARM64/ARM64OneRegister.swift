import CKVM

/// arm64 register ids for KVM_GET_ONE_REG / KVM_SET_ONE_REG
/// (arch/arm64/include/uapi/asm/kvm.h): KVM_REG_ARM64 in bits 63:56, the size
/// in bits 55:52, a "coprocessor" group in bits 27:16 and the group's index
/// below. They are defined on every host so that a VMM built here names the
/// same registers an arm64 host does; only an arm64 KVM accepts them.
extension OneRegisterID {
    /// KVM_REG_ARM64
    public static let arm64Architecture: UInt64 = 0x6000_0000_0000_0000
    /// KVM_REG_SIZE_U32 and KVM_REG_SIZE_U128 (KVM_REG_SIZE_U64 is `sizeU64`).
    public static let sizeU32: UInt64 = 0x0020_0000_0000_0000
    public static let sizeU128: UInt64 = 0x0040_0000_0000_0000
    /// KVM_REG_ARM_CORE, KVM_REG_ARM64_SYSREG and KVM_REG_ARM_FW.
    static let arm64CoreGroup: UInt64 = 0x0010 << 16
    static let arm64SystemRegisterGroup: UInt64 = 0x0013 << 16
    static let arm64FirmwareGroup: UInt64 = 0x0014 << 16

    /// The registers of arm64's `struct kvm_regs`.
    public enum ARM64CoreRegister: Hashable, Sendable {
        /// General-purpose register x0 to x30.
        case x(Int)
        case sp, pc, pstate, spEL1, elrEL1
        /// SPSR_EL1, _ABT, _UND, _IRQ, _FIQ (KVM_SPSR_*).
        case spsr(Int)
        /// FP/SIMD register v0 to v31 (128 bits).
        case v(Int)
        case fpsr, fpcr
    }

    /// A core register: KVM_REG_ARM_CORE with the register's offset in
    /// `struct kvm_regs` divided by 4 (KVM_REG_ARM_CORE_REG), sized as the
    /// field is.
    public static func arm64Core(_ register: ARM64CoreRegister) -> OneRegisterID {
        typealias Regs = ckvm_arm64_regs
        func offset(_ path: PartialKeyPath<Regs>) -> Int { MemoryLayout<Regs>.offset(of: path)! }
        let (byteOffset, size): (Int, UInt64)
        switch register {
        case .x(let index):
            precondition((0...30).contains(index), "arm64 has x0 to x30")
            (byteOffset, size) = (offset(\Regs.regs) + 8 * index, sizeU64)
        case .sp: (byteOffset, size) = (offset(\Regs.sp), sizeU64)
        case .pc: (byteOffset, size) = (offset(\Regs.pc), sizeU64)
        case .pstate: (byteOffset, size) = (offset(\Regs.pstate), sizeU64)
        case .spEL1: (byteOffset, size) = (offset(\Regs.sp_el1), sizeU64)
        case .elrEL1: (byteOffset, size) = (offset(\Regs.elr_el1), sizeU64)
        case .spsr(let index):
            precondition((0..<5).contains(index), "arm64 has five SPSRs (KVM_NR_SPSR)")
            (byteOffset, size) = (offset(\Regs.spsr) + 8 * index, sizeU64)
        case .v(let index):
            precondition((0...31).contains(index), "arm64 has v0 to v31")
            (byteOffset, size) = (offset(\Regs.vregs) + 16 * index, sizeU128)
        case .fpsr: (byteOffset, size) = (offset(\Regs.fpsr), sizeU32)
        case .fpcr: (byteOffset, size) = (offset(\Regs.fpcr), sizeU32)
        }
        return OneRegisterID(rawValue: arm64Architecture | size | arm64CoreGroup | UInt64(byteOffset / 4))
    }

    /// An AArch64 system register by its encoding (ARM64_SYS_REG): op0 in
    /// bits 15:14, op1 13:11, CRn 10:7, CRm 6:3, op2 2:0; always 64 bits.
    public static func arm64SystemRegister(op0: UInt64, op1: UInt64, crn: UInt64, crm: UInt64, op2: UInt64) -> OneRegisterID {
        precondition(op0 < 4 && op1 < 8 && crn < 16 && crm < 16 && op2 < 8, "a system register encoding out of range")
        return OneRegisterID(rawValue: arm64Architecture | sizeU64 | arm64SystemRegisterGroup
            | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)
    }

    /// A KVM firmware pseudo-register (KVM_REG_ARM_FW_REG).
    public static func arm64Firmware(_ index: UInt16) -> OneRegisterID {
        OneRegisterID(rawValue: arm64Architecture | sizeU64 | arm64FirmwareGroup | UInt64(index))
    }

    /// KVM_REG_ARM_PSCI_VERSION: the PSCI version KVM offers the guest.
    public static let arm64PSCIVersion = arm64Firmware(0)

    /// The system registers a VMM touches to boot a guest or that realms
    /// allow from userspace, by name.
    public enum ARM64SystemRegister {
        public static let mpidrEL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 0, crm: 0, op2: 5)
        public static let idAA64PFR0EL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 0, crm: 4, op2: 0)
        /// ID_AA64DFR0_EL1: with realms, breakpoints and watchpoints are set through it (v14).
        public static let idAA64DFR0EL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 0, crm: 5, op2: 0)
        public static let sctlrEL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 1, crm: 0, op2: 0)
        public static let ttbr0EL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 2, crm: 0, op2: 0)
        public static let tcrEL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 2, crm: 0, op2: 2)
        public static let mairEL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 10, crm: 2, op2: 0)
        public static let vbarEL1 = OneRegisterID.arm64SystemRegister(op0: 3, op1: 0, crn: 12, crm: 0, op2: 0)
        /// The virtual timer as KVM names it. KVM_REG_ARM_TIMER_CVAL and
        /// KVM_REG_ARM_TIMER_CNT have each other's encodings: the ABI keeps
        /// that historical swap, so these values are the ABI's, not the
        /// architecture's.
        public static let timerControl = OneRegisterID.arm64SystemRegister(op0: 3, op1: 3, crn: 14, crm: 3, op2: 1)
        public static let timerCompareValue = OneRegisterID.arm64SystemRegister(op0: 3, op1: 3, crn: 14, crm: 0, op2: 2)
        public static let timerCount = OneRegisterID.arm64SystemRegister(op0: 3, op1: 3, crn: 14, crm: 3, op2: 2)
    }
}
