import CKVM
import HostSystem

extension VCPU {
    /// Maps `[address, address + size)` into the VM's stage-2 page tables
    /// before the guest touches it, as its first accesses would. The
    /// corresponding ioctl is KVM_PRE_FAULT_MEMORY (KVM_CAP_PRE_FAULT_MEMORY,
    /// Linux 6.10), issued again while it makes progress; EINTR and EAGAIN
    /// (a race, no progress) are retried a bounded number of times. Throws
    /// ENOENT for a range outside the memory slots, EINVAL for one that is
    /// empty or not page-aligned.
    public func preFaultMemory(address: UInt64, size: UInt64) throws {
        var range = ckvm_pre_fault_memory()
        range.gpa = address
        range.size = size
        var retries = 0
        repeat {
            do {
                _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.preFaultMemory, &range)
                retries = 0
            } catch let error as SystemCallError where (error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable) && retries < 1000 {
                retries += 1
            }
        } while range.size > 0
    }

    /// One KVM_PRE_FAULT_MEMORY call, not retried: returns the part of the
    /// range KVM left unmapped (it stops early at a signal; if it mapped
    /// nothing then, the call fails with EINTR). For tests that must see EINTR
    /// and EAGAIN themselves.
    public func preFaultMemoryOnce(address: UInt64, size: UInt64) throws -> (address: UInt64, size: UInt64) {
        var range = ckvm_pre_fault_memory()
        range.gpa = address
        range.size = size
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.preFaultMemory, &range)
        return (range.gpa, range.size)
    }
}
