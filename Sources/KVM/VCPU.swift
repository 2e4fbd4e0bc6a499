import CKVM
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A virtual CPU: owner of the vCPU file descriptor and its mmapped `kvm_run`
/// area. Run it from one thread at a time.
public final class VCPU {
    /// The vCPU file descriptor, closed when this object goes away.
    public let fileDescriptor: Int32
    /// The vCPU id given to KVM_CREATE_VCPU.
    public let id: Int
    /// The VM this vCPU belongs to (kept alive by the vCPU).
    public let vm: VirtualMachine
    /// The shared run area (struct kvm_run), `runAreaSize` bytes.
    public let runArea: UnsafeMutablePointer<ckvm_run>
    public let runAreaSize: Int

    init(fileDescriptor: Int32, id: Int, runSize: Int, vm: VirtualMachine) throws {
        guard runSize >= MemoryLayout<ckvm_run>.size else {
            throw KVMUsageError("KVM_GET_VCPU_MMAP_SIZE is \(runSize), smaller than struct kvm_run (\(MemoryLayout<ckvm_run>.size))")
        }
        let address = mmap(nil, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fileDescriptor, 0)
        guard let address, address != MAP_FAILED else {
            throw KVMError(operation: "mmap(kvm_run)", errno: Errno(rawValue: Glibc.errno))
        }
        self.fileDescriptor = fileDescriptor
        self.id = id
        self.vm = vm
        // Sound: the mapping is at least sizeof(struct kvm_run) bytes and page aligned.
        self.runArea = address.bindMemory(to: ckvm_run.self, capacity: 1)
        self.runAreaSize = runSize
    }

    deinit {
        munmap(UnsafeMutableRawPointer(runArea), runAreaSize)
        SystemCall.close(fileDescriptor)
    }

    /// Whether the next KVM_RUN returns at once with EINTR (`kvm_run.immediate_exit`).
    /// Another thread may set it to stop this vCPU, followed by a signal to the
    /// vCPU's thread if it is inside KVM_RUN.
    public var immediateExit: Bool {
        get { runArea.pointee.immediate_exit != 0 }
        set { runArea.pointee.immediate_exit = newValue ? 1 : 0 }
    }

    /// Runs the vCPU until KVM returns to userspace, and decodes why.
    /// The corresponding ioctl is KVM_RUN.
    ///
    /// EINTR is a state, not an error: it returns `.interrupted`. So is EAGAIN,
    /// which KVM returns for a vCPU that is still waiting for INIT/SIPI
    /// (KVM_MP_STATE_UNINITIALIZED, an application processor before the boot
    /// CPU starts it) when it wakes without becoming runnable: it returns
    /// `.notRunnable`. EFAULT together with KVM_EXIT_MEMORY_FAULT returns
    /// `.memoryFault`. Other failures throw.
    @inline(__always)
    public func run() throws -> VCPUExit {
        runArea.pointee.exit_reason = 0
        if ckvm_ioctl_value(fileDescriptor, KVMRequest.run.number, 0) < 0 {
            let code = Glibc.errno
            if code == EINTR { return .interrupted }
            if code == EAGAIN { return .notRunnable }
            if code == EFAULT && runArea.pointee.exit_reason == ExitReason.memoryFault.rawValue {
                return VCPUExit.decode(run: runArea, areaSize: runAreaSize)
            }
            throw KVMError(operation: KVMRequest.run.name, errno: Errno(rawValue: code))
        }
        return VCPUExit.decode(run: runArea, areaSize: runAreaSize)
    }
}
