/// A KVM_EXIT_* reason number, with the kernel's name for diagnostics.
public struct ExitReason: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let unknown = ExitReason(rawValue: 0)
    public static let exception = ExitReason(rawValue: 1)
    public static let io = ExitReason(rawValue: 2)
    public static let hypercall = ExitReason(rawValue: 3)
    public static let debug = ExitReason(rawValue: 4)
    public static let halt = ExitReason(rawValue: 5)
    public static let mmio = ExitReason(rawValue: 6)
    public static let interruptWindowOpen = ExitReason(rawValue: 7)
    public static let shutdown = ExitReason(rawValue: 8)
    public static let failEntry = ExitReason(rawValue: 9)
    public static let interrupted = ExitReason(rawValue: 10)
    public static let internalError = ExitReason(rawValue: 17)
    public static let systemEvent = ExitReason(rawValue: 24)
    public static let x86ReadMSR = ExitReason(rawValue: 29)
    public static let x86WriteMSR = ExitReason(rawValue: 30)
    public static let memoryFault = ExitReason(rawValue: 39)
    public static let tdx = ExitReason(rawValue: 40)
    public static let snpRequestCertificates = ExitReason(rawValue: 42)

    private static let names: [UInt32: String] = [
        0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
        4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
        8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR", 11: "KVM_EXIT_SET_TPR",
        12: "KVM_EXIT_TPR_ACCESS", 16: "KVM_EXIT_NMI", 17: "KVM_EXIT_INTERNAL_ERROR",
        21: "KVM_EXIT_WATCHDOG", 24: "KVM_EXIT_SYSTEM_EVENT", 26: "KVM_EXIT_IOAPIC_EOI",
        27: "KVM_EXIT_HYPERV", 29: "KVM_EXIT_X86_RDMSR", 30: "KVM_EXIT_X86_WRMSR",
        31: "KVM_EXIT_DIRTY_RING_FULL", 32: "KVM_EXIT_AP_RESET_HOLD", 33: "KVM_EXIT_X86_BUS_LOCK",
        34: "KVM_EXIT_XEN", 37: "KVM_EXIT_NOTIFY", 39: "KVM_EXIT_MEMORY_FAULT", 40: "KVM_EXIT_TDX",
        42: "KVM_EXIT_SNP_REQ_CERTS",
    ]

    /// The kernel's name, or `exit reason N` for numbers Kestrel does not know.
    public var name: String { Self.names[rawValue] ?? "exit reason \(rawValue)" }
    public var description: String { name }
}
