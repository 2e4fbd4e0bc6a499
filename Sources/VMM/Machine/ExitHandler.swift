import Confidential
import KVM

/// What the running machine does after an exit.
public enum ExitAction: Equatable, Sendable {
    /// Run the vCPU again.
    case resume
    /// End the run with this outcome.
    case finish(RunOutcome)
}

/// Turns one vCPU exit into device accesses and a decision, with no KVM calls
/// of its own: port I/O and MMIO go to the buses, the rest ends the run with a
/// diagnosis. Devices that end the run themselves (the exit device, ACPI
/// sleep, the i8042 reset line) do so through their own callbacks while the
/// access is handled. Tests drive it with exits staged in a simulated
/// `RunArea`, as Firecracker's tests drive `handle_kvm_exit`.
///
/// A machine whose RAM the guest may convert has a `ConversionManager`:
/// KVM_EXIT_MEMORY_FAULT exits and KVM_HC_MAP_GPA_RANGE hypercalls go to it
/// (its KVM_SET_MEMORY_ATTRIBUTES calls are the only KVM calls made from
/// here). Without one, either exit ends the run and says why.
public struct ExitHandler: Sendable {
    public let portBus: DeviceBus
    public let mmioBus: DeviceBus
    public let conversions: ConversionManager?

    public init(portBus: DeviceBus, mmioBus: DeviceBus, conversions: ConversionManager? = nil) {
        self.portBus = portBus
        self.mmioBus = mmioBus
        self.conversions = conversions
    }

    /// Handles `exit` of vCPU `vcpu`. `rip` is asked for only when the
    /// outcome reports it (a KVM_GET_REGS on the real vCPU).
    public func handle(_ exit: VCPUExit, vcpu: Int, rip: () -> UInt64?) -> ExitAction {
        switch exit {
        case .io(let io):
            let data = io.data
            for item in 0..<max(io.count, 1) {
                let range = (item * io.size)..<((item + 1) * io.size)
                guard range.upperBound <= data.count else { break }
                let slice = UnsafeMutableRawBufferPointer(rebasing: data[range])
                if io.direction == .out {
                    portBus.write(UInt64(io.port), from: UnsafeRawBufferPointer(slice))
                } else {
                    portBus.read(UInt64(io.port), into: slice)
                }
            }
            return .resume
        case .mmio(let mmio):
            if mmio.isWrite {
                mmioBus.write(mmio.address, from: UnsafeRawBufferPointer(mmio.data))
            } else {
                mmioBus.read(mmio.address, into: mmio.data)
            }
            return .resume
        case .interrupted, .notRunnable:
            return .resume
        case .hypercall(let call) where call.number == ConversionManager.mapGPARangeHypercall:
            guard let conversions else {
                return .finish(.vcpuFailure(vcpu: vcpu, detail: "KVM_HC_MAP_GPA_RANGE from the guest, but this machine's memory is not convertible"))
            }
            // A refused range is the guest's error: it gets -KVM_EINVAL and runs on.
            call.setReturnValue(conversions.handleMapGPARange(arguments: call.arguments).returnValue)
            return .resume
        case .memoryFault(let fault):
            guard let conversions else {
                return .finish(.vcpuFailure(vcpu: vcpu, detail: "\(ExitReason.memoryFault): \(fault), but this machine's memory is not convertible"))
            }
            // The access cannot complete until the range has the state it wants.
            switch conversions.handle(fault) {
            case .converted, .unchanged: return .resume
            case .refused(let reason), .failed(let reason):
                return .finish(.vcpuFailure(vcpu: vcpu, detail: "\(ExitReason.memoryFault): \(fault): \(reason)"))
            }
        case .shutdown:
            return .finish(.tripleFault(vcpu: vcpu, rip: rip()))
        case .systemEvent(let event):
            switch event.type {
            case .shutdown: return .finish(.poweredOff)
            case .reset: return .finish(.reset(source: "\(SystemEvent.Kind.reset)"))
            default: return .finish(.vcpuFailure(vcpu: vcpu, detail: "\(ExitReason.systemEvent): \(event)"))
            }
        case .internalError(let error):
            return .finish(.internalError(vcpu: vcpu, rip: rip(), detail: error.description))
        case .failEntry:
            return .finish(.failedEntry(vcpu: vcpu, detail: exit.description))
        case .halt:
            return .finish(.vcpuFailure(vcpu: vcpu, detail: "KVM_EXIT_HLT although the local APIC is in the kernel"))
        default:
            return .finish(.vcpuFailure(vcpu: vcpu, detail: "unexpected \(exit)"))
        }
    }
}
