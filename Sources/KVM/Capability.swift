/// A KVM capability number, as asked with KVM_CHECK_EXTENSION.
public struct Capability: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    /// The kernel's name, e.g. `KVM_CAP_GUEST_MEMFD`.
    public let name: String

    public init(_ rawValue: Int32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    public var description: String { name }

    public static let userMemory = Capability(3, name: "KVM_CAP_USER_MEMORY")
    public static let setTSSAddress = Capability(4, name: "KVM_CAP_SET_TSS_ADDR")
    public static let extendedCPUID = Capability(7, name: "KVM_CAP_EXT_CPUID")
    public static let recommendedVCPUs = Capability(9, name: "KVM_CAP_NR_VCPUS")
    public static let memorySlots = Capability(10, name: "KVM_CAP_NR_MEMSLOTS")
    public static let mpState = Capability(14, name: "KVM_CAP_MP_STATE")
    public static let setGuestDebug = Capability(23, name: "KVM_CAP_SET_GUEST_DEBUG")
    public static let irqfd = Capability(32, name: "KVM_CAP_IRQFD")
    public static let ioeventfd = Capability(36, name: "KVM_CAP_IOEVENTFD")
    public static let vcpuEvents = Capability(41, name: "KVM_CAP_VCPU_EVENTS")
    public static let adjustClock = Capability(39, name: "KVM_CAP_ADJUST_CLOCK")
    public static let xsave = Capability(55, name: "KVM_CAP_XSAVE")
    public static let xcrs = Capability(56, name: "KVM_CAP_XCRS")
    public static let maximumVCPUs = Capability(66, name: "KVM_CAP_MAX_VCPUS")
    public static let oneRegister = Capability(70, name: "KVM_CAP_ONE_REG")
    /// The in-kernel local APIC emulates TSC-deadline mode (whether or not
    /// KVM_GET_SUPPORTED_CPUID lists it: KVM added it there only in 6.x).
    public static let tscDeadlineTimer = Capability(72, name: "KVM_CAP_TSC_DEADLINE_TIMER")
    public static let readOnlyMemory = Capability(81, name: "KVM_CAP_READONLY_MEM")
    public static let immediateExit = Capability(136, name: "KVM_CAP_IMMEDIATE_EXIT")
    public static let msrFeatures = Capability(153, name: "KVM_CAP_GET_MSR_FEATURES")
    /// Its value is the mask of hypercalls KVM can hand to userspace
    /// (bit 12, KVM_HC_MAP_GPA_RANGE); KVM_ENABLE_CAP on a VM chooses them.
    /// KVM_GET_DIRTY_LOG may leave pages protected until KVM_CLEAR_DIRTY_LOG
    /// (enabled with KVM_ENABLE_CAP; its value is the flags it accepts).
    public static let manualDirtyLogProtect = Capability(168, name: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
    /// Per-vCPU dirty rings; its value is the largest ring in bytes.
    public static let dirtyLogRing = Capability(192, name: "KVM_CAP_DIRTY_LOG_RING")
    public static let exitHypercall = Capability(201, name: "KVM_CAP_EXIT_HYPERCALL")
    public static let xsave2 = Capability(208, name: "KVM_CAP_XSAVE2")
    /// Dirty rings with acquire/release ordering on the entries' flags (the
    /// only kind on arm64); its value is the largest ring in bytes.
    public static let dirtyLogRingAcquireRelease = Capability(223, name: "KVM_CAP_DIRTY_LOG_RING_ACQ_REL")
    public static let userMemory2 = Capability(231, name: "KVM_CAP_USER_MEMORY2")
    public static let memoryFaultInfo = Capability(232, name: "KVM_CAP_MEMORY_FAULT_INFO")
    public static let memoryAttributes = Capability(233, name: "KVM_CAP_MEMORY_ATTRIBUTES")
    public static let guestMemfd = Capability(234, name: "KVM_CAP_GUEST_MEMFD")
    public static let vmTypes = Capability(235, name: "KVM_CAP_VM_TYPES")
    public static let preFaultMemory = Capability(236, name: "KVM_CAP_PRE_FAULT_MEMORY")
    public static let guestMemfdFlags = Capability(244, name: "KVM_CAP_GUEST_MEMFD_FLAGS")
}

/// x86 VM types accepted by KVM_CREATE_VM (bit positions in KVM_CAP_VM_TYPES).
public struct VMType: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt

    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let `default` = VMType(rawValue: 0)
    public static let softwareProtected = VMType(rawValue: 1)
    public static let sev = VMType(rawValue: 2)
    public static let sevES = VMType(rawValue: 3)
    public static let sevSNP = VMType(rawValue: 4)
    public static let tdx = VMType(rawValue: 5)

    /// The kernel's name for the type (`KVM_X86_DEFAULT_VM`).
    public var name: String {
        switch rawValue {
        case 0: return "KVM_X86_DEFAULT_VM"
        case 1: return "KVM_X86_SW_PROTECTED_VM"
        case 2: return "KVM_X86_SEV_VM"
        case 3: return "KVM_X86_SEV_ES_VM"
        case 4: return "KVM_X86_SNP_VM"
        case 5: return "KVM_X86_TDX_VM"
        default: return "VM type \(rawValue)"
        }
    }

    /// A short name for test identifiers (`default`, `sw_protected`, ...).
    public var shortName: String {
        switch rawValue {
        case 0: return "default"
        case 1: return "sw_protected"
        case 2: return "sev"
        case 3: return "sev_es"
        case 4: return "snp"
        case 5: return "tdx"
        default: return "type\(rawValue)"
        }
    }

    public var description: String { name }

    /// The types whose bits are set in a KVM_CAP_VM_TYPES mask, lowest first.
    public static func types(inMask mask: Int) -> [VMType] {
        (0..<Int.bitWidth).filter { mask & (1 << $0) != 0 }.map { VMType(rawValue: UInt($0)) }
    }
}
