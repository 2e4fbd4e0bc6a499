import CKVM

#if canImport(Glibc)
import Glibc
#endif

/// A vCPU's dirty ring: the pages the guest wrote through this vCPU, one
/// entry each (slot and page offset), in the order KVM logged them. KVM
/// pushes entries; the VMM harvests them and hands them back (RESET), and
/// KVM_RESET_DIRTY_RINGS (`VirtualMachine.resetDirtyRings`) re-protects
/// their pages and frees the entries. A full ring stops the vCPU with
/// KVM_EXIT_DIRTY_RING_FULL until entries are harvested and reset.
///
/// After the kernel's Documentation/virt/kvm/api.rst ("KVM_CAP_DIRTY_LOG_RING")
/// and dirty_log_test's ring collector. Harvest from one thread at a time;
/// any thread may, while the vCPU runs or not.
public final class DirtyRing: @unchecked Sendable {
    // @unchecked: `next` is touched only by the harvesting thread (callers
    // keep to one at a time); the entries are shared with KVM, ordered by
    // the acquire/release accessors.
    private let entries: UnsafeMutablePointer<ckvm_dirty_gfn>
    /// Entries in the ring.
    public let count: Int
    private let bytes: Int
    /// The next entry to look at (KVM's fetch index, counted here).
    private var next: UInt32 = 0

    /// Maps the ring of the vCPU `fd` (`bytes`, as enabled on its VM) at
    /// page KVM_DIRTY_LOG_PAGE_OFFSET (64 on x86) of the vCPU fd.
    init(vcpuFileDescriptor fd: Int32, bytes: Int) throws {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let address = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(64 * pageSize))
        guard let address, address != MAP_FAILED else { throw SystemCallError.current("mmap(dirty ring)") }
        // Sound: the mapping is page aligned and holds bytes / 16 entries of 16 bytes.
        entries = address.bindMemory(to: ckvm_dirty_gfn.self, capacity: bytes / MemoryLayout<ckvm_dirty_gfn>.size)
        count = bytes / MemoryLayout<ckvm_dirty_gfn>.size
        self.bytes = bytes
    }

    deinit { munmap(UnsafeMutableRawPointer(entries), bytes) }

    /// One logged page: the slot (address space in bits 31:16) and the page's index in it.
    public struct Entry: Equatable, Sendable {
        public let slot: UInt32
        public let page: UInt64
    }

    /// The entries KVM has pushed since the last harvest, each handed back
    /// (RESET). Call `VirtualMachine.resetDirtyRings` afterwards so that KVM
    /// reuses them and logs their pages again.
    public func harvest() -> [Entry] {
        var found: [Entry] = []
        while true {
            // Sound: the index is reduced modulo the ring's entry count.
            let entry = entries + Int(next % UInt32(count))
            guard ckvm_dirty_gfn_flags(entry) & 1 != 0 else { break }  // KVM_DIRTY_GFN_F_DIRTY
            found.append(Entry(slot: entry.pointee.slot, page: entry.pointee.offset))
            ckvm_dirty_gfn_set_reset(entry)
            next &+= 1
        }
        return found
    }
}

extension VCPU {
    /// Maps this vCPU's dirty ring, of the size enabled on its VM with
    /// `VirtualMachine.enableDirtyRings(bytes:)`.
    public func mapDirtyRing(bytes: Int) throws -> DirtyRing {
        try DirtyRing(vcpuFileDescriptor: fileDescriptor, bytes: bytes)
    }
}
