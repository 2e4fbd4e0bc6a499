import CKVM
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A virtual CPU: owner of the vCPU file descriptor and its mmapped `kvm_run`
/// area. Run it from one thread at a time.
///
/// `@unchecked Sendable`: a vCPU is created on one thread and run on another
/// (its `VCPUThread`). KVM serialises the vCPU ioctls itself (a vCPU mutex in
/// the kernel), and the only field other threads write is `immediateExit`,
/// which KVM reads when KVM_RUN starts; everything else here is immutable.
public final class VCPU: @unchecked Sendable {
    /// The vCPU file descriptor, closed when this object goes away.
    public let fileDescriptor: Int32
    /// The vCPU id given to KVM_CREATE_VCPU.
    public let id: Int
    /// The VM this vCPU belongs to (kept alive by the vCPU).
    public let vm: VirtualMachine
    /// The run area (struct kvm_run) KVM shares with this vCPU.
    public let runArea: RunArea

    init(fileDescriptor: Int32, id: Int, runSize: Int, vm: VirtualMachine) throws {
        guard runSize >= MemoryLayout<ckvm_run>.size else {
            throw KVMUsageError("KVM_GET_VCPU_MMAP_SIZE is \(runSize), smaller than struct kvm_run (\(MemoryLayout<ckvm_run>.size))")
        }
        let address = mmap(nil, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fileDescriptor, 0)
        guard let address, address != MAP_FAILED else {
            throw SystemCallError.current("mmap(kvm_run)")
        }
        self.fileDescriptor = fileDescriptor
        self.id = id
        self.vm = vm
        self.runArea = RunArea(mapping: address, size: runSize)
    }

    deinit {
        SystemCall.close(fileDescriptor)
    }

    /// Whether the next KVM_RUN returns at once with EINTR (`kvm_run.immediate_exit`).
    /// Another thread may set it to stop this vCPU, followed by a signal to the
    /// vCPU's thread if it is inside KVM_RUN.
    public var immediateExit: Bool {
        get { runArea.immediateExit }
        set { runArea.immediateExit = newValue }
    }

    /// Runs the vCPU until KVM returns to userspace, and decodes why.
    /// The corresponding ioctl is KVM_RUN.
    ///
    /// EINTR is a state, not an error: it returns `.interrupted`. So is EAGAIN,
    /// which KVM returns for a vCPU that is still waiting for INIT/SIPI
    /// (KVM_MP_STATE_UNINITIALIZED, an application processor before the boot
    /// CPU starts it) when it wakes without becoming runnable: it returns
    /// `.notRunnable`. EFAULT or EHWPOISON together with KVM_EXIT_MEMORY_FAULT
    /// returns `.memoryFault` (with `hardwarePoison` for EHWPOISON). Other
    /// failures throw.
    ///
    /// Payloads of the exit returned are valid until the next `run()`.
    @inline(__always)
    public func run() throws -> VCPUExit {
        runArea.beginRun()
        do {
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.run, value: 0)
        } catch let error as SystemCallError {
            switch error.errno {
            case .interrupted: return .interrupted
            case .resourceTemporarilyUnavailable: return .notRunnable
            case .badAddress where runArea.exitReason == .memoryFault: return runArea.decodeExit()
            case .hardwarePoison where runArea.exitReason == .memoryFault:
                guard case .memoryFault(let fault) = runArea.decodeExit() else { throw error }
                return .memoryFault(MemoryFault(flags: fault.flags, guestPhysicalAddress: fault.guestPhysicalAddress,
                                                size: fault.size, hardwarePoison: true))
            default: throw error
            }
        }
        return runArea.decodeExit()
    }
}
