import CKVM

/// Dirty page logging by bitmap: slots installed with
/// `MemorySlotFlags.logDirtyPages` record the pages the guest writes
/// through KVM (faults and KVM's own writes, such as the steal-time and
/// kvmclock pages), not what this process writes through its own mapping.
extension VirtualMachine {
    /// The pages of `slot` (installed with `install`) written since the
    /// last call, one bit per 4 KiB page (bit `n % 64` of word `n / 64` for
    /// the slot's page `n`). KVM write-protects the pages again as it hands
    /// the log over, unless KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled
    /// (then `clearDirtyLog` does). The corresponding ioctl is KVM_GET_DIRTY_LOG.
    public func dirtyLog(slot: UInt32) throws -> [UInt64] {
        guard let region = installedRegions.withLock({ $0[slot] }) else {
            throw KVMUsageError("no region is installed in slot \(slot); KVM_GET_DIRTY_LOG's bitmap is sized from it")
        }
        let pages = Int((region.size + 4095) / 4096)
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        // Sound: KVM writes ALIGN(npages, 64) / 8 bytes for the slot's npages,
        // the region installed in it, exactly the array's size, while the
        // buffer is pinned by withUnsafeMutableBytes.
        try bitmap.withUnsafeMutableBytes { buffer in
            var request = ckvm_dirty_log(slot: slot, padding: 0, dirty_bitmap: UInt64(UInt(bitPattern: buffer.baseAddress)))
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.getDirtyLog, &request)
        }
        return bitmap
    }

    /// Write-protects again the pages of `slot` whose bits are set in
    /// `bitmap`, counted from `firstPage` (a multiple of 64), so that the
    /// guest's next write to them shows in the log. Only with
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled. The corresponding ioctl is
    /// KVM_CLEAR_DIRTY_LOG.
    public func clearDirtyLog(slot: UInt32, firstPage: UInt64, pages: UInt32, bitmap: [UInt64]) throws {
        guard firstPage % 64 == 0, bitmap.count * 64 >= Int(pages) else {
            throw KVMUsageError("KVM_CLEAR_DIRTY_LOG needs a first page that is a multiple of 64 and a bitmap of \(pages) bits")
        }
        var bits = bitmap
        // Sound: KVM reads ALIGN(pages, 64) / 8 bytes, no more than the array holds (checked above).
        try bits.withUnsafeMutableBytes { buffer in
            var request = ckvm_clear_dirty_log(slot: slot, num_pages: pages, first_page: firstPage,
                                               dirty_bitmap: UInt64(UInt(bitPattern: buffer.baseAddress)))
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.clearDirtyLog, &request)
        }
    }

    /// The largest dirty ring this VM takes, in bytes, and whether it is the
    /// acquire/release kind (0 when the host has none).
    public func dirtyRingLimit() throws -> (bytes: Int, acquireRelease: Bool) {
        let ordered = try checkExtension(.dirtyLogRingAcquireRelease)
        if ordered > 0 { return (ordered, true) }
        return (try checkExtension(.dirtyLogRing), false)
    }

    /// Gives every vCPU created from now on a dirty ring of `bytes` bytes (a
    /// power of two, at least a page); slots with dirty logging then report
    /// into the rings instead of bitmaps. Before any vCPU exists. The
    /// corresponding ioctl is KVM_ENABLE_CAP with KVM_CAP_DIRTY_LOG_RING_ACQ_REL
    /// (or KVM_CAP_DIRTY_LOG_RING on hosts without it).
    public func enableDirtyRings(bytes: Int) throws {
        let limit = try dirtyRingLimit()
        guard limit.bytes > 0 else { throw KVMUsageError("this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING is 0)") }
        guard bytes >= 4096, bytes & (bytes - 1) == 0, bytes <= limit.bytes else {
            throw KVMUsageError("a dirty ring of \(bytes) bytes: it must be a power of two from 4096 to \(limit.bytes) bytes")
        }
        try enableCapability(limit.acquireRelease ? .dirtyLogRingAcquireRelease : .dirtyLogRing, arguments: [UInt64(bytes)])
    }

    /// Hands the entries marked harvested back to the rings of every vCPU
    /// and write-protects their pages again; returns how many. The
    /// corresponding ioctl is KVM_RESET_DIRTY_RINGS.
    @discardableResult
    public func resetDirtyRings() throws -> Int {
        Int(try SystemCall.ioctl(fileDescriptor, KVMRequest.resetDirtyRings))
    }
}
