import KVM

/// How a run ended, with the one-line diagnosis and the process exit code.
public enum RunOutcome: Equatable, Sendable {
    /// The guest wrote its exit status to Kestrel's exit device.
    case guestExit(status: UInt8)
    /// The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN or ACPI S5).
    case poweredOff
    /// The guest asked for a reset (i8042, KVM_SYSTEM_EVENT_RESET).
    case reset(source: String)
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    case tripleFault(vcpu: Int, rip: UInt64?)
    /// KVM_EXIT_INTERNAL_ERROR.
    case internalError(vcpu: Int, rip: UInt64?, detail: String)
    /// KVM_EXIT_FAIL_ENTRY.
    case failedEntry(vcpu: Int, detail: String)
    /// Another exit Kestrel cannot continue from, or a failed KVM call.
    case vcpuFailure(vcpu: Int, detail: String)
    /// Stopped by a signal (Ctrl-C, SIGTERM).
    case stopped(signal: Int32)
    /// The guest kernel panicked (its console said so); `then` is how the run ended after it.
    indirect case guestPanic(message: String, then: RunOutcome)

    /// Exit codes: the guest's own status, 0 for power-off, and distinct codes
    /// above 64 for the rest (70 for a guest kernel panic, signals as 128 + N).
    public var exitCode: Int32 {
        switch self {
        case .guestExit(let status): return Int32(status)
        case .poweredOff: return 0
        case .reset: return 65
        case .tripleFault: return 66
        case .internalError: return 67
        case .failedEntry: return 68
        case .vcpuFailure: return 69
        case .stopped(let signal): return 128 + signal
        case .guestPanic: return 70
        }
    }

    public var diagnosis: String {
        func at(_ rip: UInt64?) -> String { rip.map { " at RIP 0x\(String($0, radix: 16))" } ?? "" }
        switch self {
        case .guestExit(let status): return "guest exited with status \(status) (exit device)"
        case .poweredOff: return "guest powered off"
        case .reset(let source): return "guest reset (\(source))"
        case .tripleFault(let vcpu, let rip): return "vCPU \(vcpu): triple fault (KVM_EXIT_SHUTDOWN)\(at(rip))"
        case .internalError(let vcpu, let rip, let detail): return "vCPU \(vcpu): KVM_EXIT_INTERNAL_ERROR: \(detail)\(at(rip))"
        case .failedEntry(let vcpu, let detail): return "vCPU \(vcpu): \(detail)"
        case .vcpuFailure(let vcpu, let detail): return "vCPU \(vcpu): \(detail)"
        case .stopped(let signal): return "stopped by signal \(signal) (\(signal == 2 ? "SIGINT" : signal == 15 ? "SIGTERM" : "signal"))"
        case .guestPanic(let message, let then): return "guest kernel panic: \(message); then \(then.diagnosis)"
        }
    }
}
