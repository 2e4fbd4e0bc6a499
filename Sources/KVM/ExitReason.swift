/// A KVM_EXIT_* reason number, with the kernel's name for diagnostics. Each
/// number is written once, beside its name, in `catalogue`.
public struct ExitReason: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let unknown = ExitReason(rawValue: Number.unknown.rawValue)
    public static let exception = ExitReason(rawValue: Number.exception.rawValue)
    public static let io = ExitReason(rawValue: Number.io.rawValue)
    public static let hypercall = ExitReason(rawValue: Number.hypercall.rawValue)
    public static let debug = ExitReason(rawValue: Number.debug.rawValue)
    public static let halt = ExitReason(rawValue: Number.halt.rawValue)
    public static let mmio = ExitReason(rawValue: Number.mmio.rawValue)
    public static let interruptWindowOpen = ExitReason(rawValue: Number.interruptWindowOpen.rawValue)
    public static let shutdown = ExitReason(rawValue: Number.shutdown.rawValue)
    public static let failEntry = ExitReason(rawValue: Number.failEntry.rawValue)
    public static let interrupted = ExitReason(rawValue: Number.interrupted.rawValue)
    public static let internalError = ExitReason(rawValue: Number.internalError.rawValue)
    public static let systemEvent = ExitReason(rawValue: Number.systemEvent.rawValue)
    public static let x86ReadMSR = ExitReason(rawValue: Number.x86ReadMSR.rawValue)
    public static let x86WriteMSR = ExitReason(rawValue: Number.x86WriteMSR.rawValue)
    public static let memoryFault = ExitReason(rawValue: Number.memoryFault.rawValue)
    public static let tdx = ExitReason(rawValue: Number.tdx.rawValue)
    public static let snpRequestCertificates = ExitReason(rawValue: Number.snpRequestCertificates.rawValue)
    public static let armNoISV = ExitReason(rawValue: Number.armNoISV.rawValue)
    public static let dirtyRingFull = ExitReason(rawValue: Number.dirtyRingFull.rawValue)

    /// The exit reasons of include/uapi/linux/kvm.h that Kestrel names.
    enum Number: UInt32, CaseIterable {
        case unknown = 0, exception = 1, io = 2, hypercall = 3, debug = 4, halt = 5, mmio = 6
        case interruptWindowOpen = 7, shutdown = 8, failEntry = 9, interrupted = 10, setTPR = 11
        case tprAccess = 12, nmi = 16, internalError = 17, watchdog = 21, systemEvent = 24
        case ioapicEOI = 26, hyperv = 27, armNoISV = 28, x86ReadMSR = 29, x86WriteMSR = 30, dirtyRingFull = 31
        case apResetHold = 32, x86BusLock = 33, xen = 34, notify = 37, memoryFault = 39, tdx = 40
        case snpRequestCertificates = 42

        var name: String {
            switch self {
            case .unknown: return "KVM_EXIT_UNKNOWN"
            case .exception: return "KVM_EXIT_EXCEPTION"
            case .io: return "KVM_EXIT_IO"
            case .hypercall: return "KVM_EXIT_HYPERCALL"
            case .debug: return "KVM_EXIT_DEBUG"
            case .halt: return "KVM_EXIT_HLT"
            case .mmio: return "KVM_EXIT_MMIO"
            case .interruptWindowOpen: return "KVM_EXIT_IRQ_WINDOW_OPEN"
            case .shutdown: return "KVM_EXIT_SHUTDOWN"
            case .failEntry: return "KVM_EXIT_FAIL_ENTRY"
            case .interrupted: return "KVM_EXIT_INTR"
            case .setTPR: return "KVM_EXIT_SET_TPR"
            case .tprAccess: return "KVM_EXIT_TPR_ACCESS"
            case .nmi: return "KVM_EXIT_NMI"
            case .internalError: return "KVM_EXIT_INTERNAL_ERROR"
            case .watchdog: return "KVM_EXIT_WATCHDOG"
            case .systemEvent: return "KVM_EXIT_SYSTEM_EVENT"
            case .ioapicEOI: return "KVM_EXIT_IOAPIC_EOI"
            case .hyperv: return "KVM_EXIT_HYPERV"
            case .armNoISV: return "KVM_EXIT_ARM_NISV"
            case .x86ReadMSR: return "KVM_EXIT_X86_RDMSR"
            case .x86WriteMSR: return "KVM_EXIT_X86_WRMSR"
            case .dirtyRingFull: return "KVM_EXIT_DIRTY_RING_FULL"
            case .apResetHold: return "KVM_EXIT_AP_RESET_HOLD"
            case .x86BusLock: return "KVM_EXIT_X86_BUS_LOCK"
            case .xen: return "KVM_EXIT_XEN"
            case .notify: return "KVM_EXIT_NOTIFY"
            case .memoryFault: return "KVM_EXIT_MEMORY_FAULT"
            case .tdx: return "KVM_EXIT_TDX"
            case .snpRequestCertificates: return "KVM_EXIT_SNP_REQ_CERTS"
            }
        }
    }

    /// The kernel's name, or `exit reason N` for numbers Kestrel does not know.
    public var name: String { Number(rawValue: rawValue)?.name ?? "exit reason \(rawValue)" }
    public var description: String { name }
}
