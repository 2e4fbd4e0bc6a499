import CKVM
import SystemPackage

/// Why KVM_RUN returned, decoded from the vCPU's `kvm_run` area.
///
/// Payloads that carry data (`IOExit`, `MMIOExit`, `HypercallExit`,
/// `SNPCertificateRequest`) point into the vCPU's `RunArea`: answers written
/// through them are what KVM reads when the vCPU is next run, and they belong
/// to this one run. Using one after the next `run()` stops the program with a
/// message, instead of touching another exit's data.
public enum VCPUExit: CustomStringConvertible {
    /// KVM_EXIT_IO: the guest executed IN/OUT (or INS/OUTS).
    case io(IOExit)
    /// KVM_EXIT_MMIO: the guest touched guest-physical memory with no slot.
    case mmio(MMIOExit)
    /// KVM_EXIT_HLT: the guest halted with no in-kernel local APIC to wake it.
    case halt
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted (or otherwise shut down).
    case shutdown
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    /// KVM_EXIT_INTERNAL_ERROR: KVM could not go on (emulation failure and others).
    case internalError(InternalError)
    /// KVM_EXIT_SYSTEM_EVENT: shutdown, reset, crash and similar requests.
    case systemEvent(SystemEvent)
    /// KVM_EXIT_MEMORY_FAULT (KVM_RUN failed with EFAULT): the guest accessed
    /// memory whose private/shared state the VMM must change.
    case memoryFault(MemoryFault)
    /// KVM_EXIT_HYPERCALL: a hypercall KVM forwards to userspace.
    case hypercall(HypercallExit)
    /// KVM_EXIT_SNP_REQ_CERTS: an SNP guest asked for attestation certificates.
    case snpRequestCertificates(SNPCertificateRequest)
    /// KVM_EXIT_EXCEPTION: an exception KVM reports to userspace.
    case exception(vector: UInt32, errorCode: UInt32)
    /// KVM_EXIT_DEBUG: a debug event (guest debugging enabled by the VMM).
    case debug(DebugExit)
    /// KVM_EXIT_IRQ_WINDOW_OPEN: the guest can take an interrupt now.
    case interruptWindowOpen
    /// KVM_RUN returned EINTR (a signal, or immediate_exit set): KVM_EXIT_INTR.
    case interrupted
    /// KVM_RUN failed with EAGAIN: the vCPU waits for INIT/SIPI and is not
    /// runnable yet. Call `run()` again.
    case notRunnable
    /// KVM_EXIT_UNKNOWN, with the hardware's exit reason.
    case unknown(hardwareReason: UInt64)
    /// KVM_EXIT_ARM_NISV (arm64, with KVM_CAP_ARM_NISV_TO_USER): a data abort
    /// whose syndrome does not describe the access, so KVM cannot emulate it;
    /// `syndrome` is ESR_EL2's ISS, `faultIPA` the address.
    case armNoISV(syndrome: UInt64, faultIPA: UInt64)
    /// KVM_EXIT_DIRTY_RING_FULL: this vCPU's dirty ring is (nearly) full;
    /// harvest the rings and KVM_RESET_DIRTY_RINGS before running it again.
    case dirtyRingFull
    /// An exit reason this version of Kestrel does not decode.
    case unrecognized(ExitReason)

    /// The KVM exit reason behind this exit.
    public var reason: ExitReason {
        switch self {
        case .io: return .io
        case .mmio: return .mmio
        case .halt: return .halt
        case .shutdown: return .shutdown
        case .failEntry: return .failEntry
        case .internalError: return .internalError
        case .systemEvent: return .systemEvent
        case .memoryFault: return .memoryFault
        case .hypercall: return .hypercall
        case .snpRequestCertificates: return .snpRequestCertificates
        case .exception: return .exception
        case .debug: return .debug
        case .interruptWindowOpen: return .interruptWindowOpen
        case .interrupted: return .interrupted
        // No exit reason is written for EAGAIN; like EINTR, nothing ran.
        case .notRunnable: return .interrupted
        case .unknown: return .unknown
        case .armNoISV: return .armNoISV
        case .dirtyRingFull: return .dirtyRingFull
        case .unrecognized(let reason): return reason
        }
    }

    public var description: String {
        switch self {
        case .io(let io): return "\(ExitReason.io): \(io)"
        case .mmio(let mmio): return "\(ExitReason.mmio): \(mmio)"
        case .failEntry(let reason, let cpu):
            return "\(ExitReason.failEntry): hardware entry failure reason 0x\(String(reason, radix: 16)) on cpu \(cpu)"
        case .internalError(let error): return "\(ExitReason.internalError): \(error)"
        case .systemEvent(let event): return "\(ExitReason.systemEvent): \(event)"
        case .memoryFault(let fault): return "\(ExitReason.memoryFault): \(fault)"
        case .hypercall(let call): return "\(ExitReason.hypercall): nr \(call.number)"
        case .snpRequestCertificates(let request):
            return "\(ExitReason.snpRequestCertificates): gpa 0x\(String(request.guestPhysicalAddress, radix: 16)), \(request.pageCount) pages"
        case .exception(let vector, let errorCode):
            return "\(ExitReason.exception): vector \(vector), error code 0x\(String(errorCode, radix: 16))"
        case .debug(let debug):
            return "\(ExitReason.debug): \(debug)"
        case .notRunnable: return "KVM_RUN: EAGAIN (vCPU waiting for INIT/SIPI)"
        case .unknown(let hardwareReason):
            return "\(ExitReason.unknown): hardware exit reason 0x\(String(hardwareReason, radix: 16))"
        case .armNoISV(let syndrome, let faultIPA):
            return "\(ExitReason.armNoISV): data abort at IPA 0x\(String(faultIPA, radix: 16)) without a valid syndrome (ISS 0x\(String(syndrome, radix: 16)))"
        default: return reason.name
        }
    }
}

/// The data of a KVM_EXIT_IO exit.
public struct IOExit: CustomStringConvertible {
    public enum Direction: UInt8, Sendable { case `in` = 0, out = 1 }

    public let direction: Direction
    /// Access size in bytes (1, 2 or 4).
    public let size: Int
    public let port: UInt16
    /// Repetitions (string I/O); `data` holds `size * count` bytes.
    public let count: Int
    private let buffer: UnsafeMutableRawBufferPointer
    private let ticket: RunTicket

    init(direction: Direction, size: Int, port: UInt16, count: Int, buffer: UnsafeMutableRawBufferPointer, ticket: RunTicket) {
        (self.direction, self.size, self.port, self.count) = (direction, size, port, count)
        (self.buffer, self.ticket) = (buffer, ticket)
    }

    /// The bytes written by the guest (out) or to be supplied to it (in), inside
    /// the run area; valid in this run only.
    public var data: UnsafeMutableRawBufferPointer {
        _ = ticket.run("IOExit")
        return buffer
    }

    /// The first item as a little-endian integer.
    public var value: UInt32 {
        var result: UInt32 = 0
        let data = self.data
        for index in 0..<min(size, 4, data.count) { result |= UInt32(data[index]) << (8 * UInt32(index)) }
        return result
    }

    /// Supplies the value an IN instruction reads (first item).
    public func setValue(_ value: UInt32) {
        let data = self.data
        for index in 0..<min(size, 4, data.count) { data[index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
    }

    public var description: String {
        "\(direction == .out ? "out" : "in") port 0x\(String(port, radix: 16)) size \(size) count \(count)"
            + (direction != .out ? "" : ticket.isCurrent ? " value 0x\(String(value, radix: 16))" : " (data of an earlier run)")
    }
}

/// The data of a KVM_EXIT_MMIO exit.
public struct MMIOExit: CustomStringConvertible {
    public let address: UInt64
    public let isWrite: Bool
    private let buffer: UnsafeMutableRawBufferPointer
    private let ticket: RunTicket

    init(address: UInt64, isWrite: Bool, buffer: UnsafeMutableRawBufferPointer, ticket: RunTicket) {
        (self.address, self.isWrite, self.buffer, self.ticket) = (address, isWrite, buffer, ticket)
    }

    /// The bytes written by the guest, or to be supplied for a read (1 to 8),
    /// inside the run area; valid in this run only.
    public var data: UnsafeMutableRawBufferPointer {
        _ = ticket.run("MMIOExit")
        return buffer
    }

    /// The access size in bytes.
    public var length: Int { buffer.count }

    public var description: String {
        "\(isWrite ? "write" : "read") of \(buffer.count) bytes at 0x\(String(address, radix: 16))"
    }
}

/// The data of a KVM_EXIT_INTERNAL_ERROR exit.
public struct InternalError: CustomStringConvertible, Sendable {
    /// KVM_INTERNAL_ERROR_* sub-errors.
    public enum Kind: Equatable, Sendable {
        case emulation
        case simultaneousException
        case deliveryEvent
        case unexpectedExitReason
        case other(UInt32)

        init(_ raw: UInt32) {
            switch raw {
            case InternalError.emulationSuberror: self = .emulation
            case 2: self = .simultaneousException
            case 3: self = .deliveryEvent
            case 4: self = .unexpectedExitReason
            default: self = .other(raw)
            }
        }

        public var name: String {
            switch self {
            case .emulation: return "emulation failure (KVM_INTERNAL_ERROR_EMULATION)"
            case .simultaneousException: return "exception during exception delivery (KVM_INTERNAL_ERROR_SIMUL_EX)"
            case .deliveryEvent: return "event delivery failed (KVM_INTERNAL_ERROR_DELIVERY_EV)"
            case .unexpectedExitReason: return "unexpected exit reason (KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON)"
            case .other(let raw): return "suberror \(raw)"
            }
        }
    }

    /// KVM_INTERNAL_ERROR_EMULATION.
    public static let emulationSuberror: UInt32 = 1

    public let suberror: UInt32
    /// The `data` words KVM filled in (`ndata`, at most 16).
    public let data: [UInt64]
    /// For emulation failures that carry them, the instruction bytes KVM fetched.
    public let instructionBytes: [UInt8]?

    public var kind: Kind { Kind(suberror) }

    public init(suberror: UInt32, data: [UInt64], instructionBytes: [UInt8]?) {
        self.suberror = suberror
        self.data = data
        self.instructionBytes = instructionBytes
    }

    public var description: String {
        var text = kind.name
        if let bytes = instructionBytes {
            text += ", instruction bytes [" + bytes.map { hexByte($0) }.joined(separator: " ") + "]"
        }
        if !data.isEmpty {
            text += ", data [" + data.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + "]"
        }
        return text
    }
}

/// The data of a KVM_EXIT_SYSTEM_EVENT exit.
public struct SystemEvent: CustomStringConvertible, Sendable {
    /// A KVM_SYSTEM_EVENT_* type.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static let shutdown = Kind(rawValue: 1)
        public static let reset = Kind(rawValue: 2)
        public static let crash = Kind(rawValue: 3)
        public static let wakeup = Kind(rawValue: 4)
        public static let suspend = Kind(rawValue: 5)
        public static let sevTerminate = Kind(rawValue: 6)
        public static let tdxFatal = Kind(rawValue: 7)

        private static let names: [Kind: String] = [
            .shutdown: "KVM_SYSTEM_EVENT_SHUTDOWN", .reset: "KVM_SYSTEM_EVENT_RESET", .crash: "KVM_SYSTEM_EVENT_CRASH",
            .wakeup: "KVM_SYSTEM_EVENT_WAKEUP", .suspend: "KVM_SYSTEM_EVENT_SUSPEND",
            .sevTerminate: "KVM_SYSTEM_EVENT_SEV_TERM", .tdxFatal: "KVM_SYSTEM_EVENT_TDX_FATAL",
        ]

        /// The kernel's name, or `system event N`.
        public var description: String { Self.names[self] ?? "system event \(rawValue)" }
    }

    public let type: Kind
    public let data: [UInt64]

    public init(type: Kind, data: [UInt64]) {
        self.type = type
        self.data = data
    }

    public var typeName: String { type.description }
    public var description: String { typeName }
}

/// Flags of a KVM_EXIT_MEMORY_FAULT exit.
public struct MemoryFaultFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// KVM_MEMORY_EXIT_FLAG_PRIVATE: the access wanted the range private.
    public static let `private` = MemoryFaultFlags(rawValue: 1 << 3)
}

/// The data of a KVM_EXIT_MEMORY_FAULT exit.
public struct MemoryFault: CustomStringConvertible, Sendable, Equatable {
    public let flags: MemoryFaultFlags
    public let guestPhysicalAddress: UInt64
    public let size: UInt64
    /// KVM_RUN failed with EHWPOISON rather than EFAULT: the page behind the
    /// access has an uncorrectable memory error, so converting it will not help.
    public let hardwarePoison: Bool

    public init(flags: MemoryFaultFlags, guestPhysicalAddress: UInt64, size: UInt64, hardwarePoison: Bool = false) {
        self.flags = flags
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.hardwarePoison = hardwarePoison
    }

    public var description: String {
        "\(flags.contains(.private) ? "private" : "shared") access to 0x\(String(guestPhysicalAddress, radix: 16)), size 0x\(String(size, radix: 16))"
            + (hardwarePoison ? " (EHWPOISON: the page is poisoned)" : "")
    }
}

/// The data of a KVM_EXIT_HYPERCALL exit; `setReturnValue` answers it.
public struct HypercallExit {
    private let ticket: RunTicket

    init(ticket: RunTicket) { self.ticket = ticket }

    private var run: UnsafeMutablePointer<ckvm_run> { ticket.run("HypercallExit") }

    public var number: UInt64 { run.pointee.exit.hypercall.nr }
    public var arguments: [UInt64] {
        withUnsafeBytes(of: run.pointee.exit.hypercall.args) { Array($0.bindMemory(to: UInt64.self)) }
    }
    /// The value the guest sees in RAX when it resumes.
    public func setReturnValue(_ value: UInt64) { run.pointee.exit.hypercall.ret = value }
    /// The value last set for the guest's RAX.
    public var returnValue: UInt64 { run.pointee.exit.hypercall.ret }
    /// The `flags` word (x86: the `longmode` union member; arm64: `ARM64HypercallFlags`).
    public var flags: UInt64 { run.pointee.exit.hypercall.flags }
}

/// The data of a KVM_EXIT_SNP_REQ_CERTS exit; `respond` sets `ret` for KVM.
public struct SNPCertificateRequest {
    private let ticket: RunTicket

    init(ticket: RunTicket) { self.ticket = ticket }

    private var run: UnsafeMutablePointer<ckvm_run> { ticket.run("SNPCertificateRequest") }

    /// Guest physical address of the certificate buffer (from the guest's RAX).
    public var guestPhysicalAddress: UInt64 { run.pointee.exit.snp_req_certs.gpa }
    /// Size of the buffer in 4 KiB pages (from the guest's RBX).
    public var pageCount: UInt64 { run.pointee.exit.snp_req_certs.npages }

    /// The answers KVM accepts in `ret`.
    public enum Response: Equatable, Sendable {
        /// Certificates written: KVM goes on to the firmware.
        case certificatesWritten
        /// The buffer is too small; the guest is told how many pages it needs.
        case bufferTooSmall(pagesNeeded: UInt64)
        /// Busy: the guest should retry (EAGAIN).
        case busy
        /// Generic failure (EIO).
        case failure
    }

    /// Writes the response KVM reads on the next KVM_RUN.
    public func respond(_ response: Response) {
        switch response {
        case .certificatesWritten: run.pointee.exit.snp_req_certs.ret = 0
        case .bufferTooSmall(let pages):
            run.pointee.exit.snp_req_certs.npages = pages
            run.pointee.exit.snp_req_certs.ret = Self.code(.noSpace)
        case .busy: run.pointee.exit.snp_req_certs.ret = Self.code(.resourceTemporarilyUnavailable)
        case .failure: run.pointee.exit.snp_req_certs.ret = Self.code(.ioError)
        }
    }

    /// The raw `ret` field as last written.
    public var returnCode: UInt64 { run.pointee.exit.snp_req_certs.ret }

    /// `ret` carries a positive errno value.
    private static func code(_ errno: Errno) -> UInt64 { UInt64(errno.rawValue) }
}

@inline(__always)
func hexByte(_ byte: UInt8) -> String {
    let digits = String(byte, radix: 16)
    return digits.count == 1 ? "0" + digits : digits
}

/// The data of a KVM_EXIT_DEBUG exit (struct kvm_debug_exit_arch on x86):
/// the exception (1 for #DB, 3 for #BP), the guest RIP, and DR6 and DR7 as
/// KVM reports them for the event.
public struct DebugExit: Equatable, Sendable, CustomStringConvertible {
    public let exception: UInt32
    public let pc: UInt64
    public let dr6: UInt64
    public let dr7: UInt64

    public init(exception: UInt32, pc: UInt64, dr6: UInt64, dr7: UInt64) {
        self.exception = exception
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7
    }

    public var description: String {
        "exception \(exception) at 0x\(String(pc, radix: 16)), DR6 0x\(String(dr6, radix: 16)), DR7 0x\(String(dr7, radix: 16))"
    }
}
