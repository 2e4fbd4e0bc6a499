import Glibc
import GuestMemory
import KVM
import Synchronization

/// Which pages of guest RAM changed since the last snapshot, for Diff
/// snapshots, per RAM slot, one bit per 4 KiB page.
///
/// With `track_dirty_pages`, two logs together: KVM's dirty log of each slot
/// (KVM_GET_DIRTY_LOG: the guest's own writes, and KVM's) and the address
/// space's record of what the devices wrote through it (used rings, block
/// reads, received packets, balloon discards), which KVM never sees.
/// Without it, as Firecracker does since 1.13, every page the host has
/// for the guest counts (/proc/self/pagemap for private mappings, mincore(2)
/// for shared ones): more than changed, never less.
///
/// Taking the bitmaps starts both logs over. A snapshot that then fails
/// hands them back (`giveBack`), so the next Diff still has those pages.
final class DirtyPageTracker: Sendable {
    let virtualMachine: VirtualMachine
    let memory: GuestAddressSpace
    /// Whether the slots log dirty pages (KVM_MEM_LOG_DIRTY_PAGES) and the address space records device writes.
    let logsWrites: Bool
    /// Bitmaps of a failed snapshot, by slot, merged into the next take.
    private let returned = Mutex<[UInt32: [UInt64]]>([:])
    /// Pages changed since the last `resetSinceMark` (nil: none since the
    /// last snapshot), by slot: what `GET /kestrel/memory/dirty` reports
    /// after a reset, kept apart so that a reset never takes pages from
    /// the next Diff.
    private let sinceMark = Mutex<[UInt32: [UInt64]]?>(nil)

    /// With `dirty_log` Ring: each vCPU's ring, read instead of the bitmaps.
    let rings: [DirtyRing]
    /// Pages harvested from the rings and not yet taken, by slot; its lock
    /// also keeps harvests to one thread at a time, as the rings need.
    private let harvested = Mutex<[UInt32: [UInt64]]>([:])

    init(virtualMachine: VirtualMachine, memory: GuestAddressSpace, logsWrites: Bool, rings: [DirtyRing] = []) {
        self.virtualMachine = virtualMachine
        self.memory = memory
        self.logsWrites = logsWrites
        self.rings = rings
    }

    /// Moves every ring's entries into `harvested` and hands the entries back
    /// (KVM_RESET_DIRTY_RINGS): on KVM_EXIT_DIRTY_RING_FULL, from the vCPU's
    /// thread, and before each take. Returns the entries read.
    @discardableResult
    func harvestRings() throws -> Int {
        try harvested.withLock { pages in
            var count = 0
            for ring in rings {
                for entry in ring.harvest() {
                    // Bits 31:16 of the slot are the address space (0 here).
                    let slot = entry.slot & 0xFFFF, page = Int(entry.page)
                    var bitmap = pages[slot] ?? []
                    if bitmap.count <= page / 64 { bitmap += [UInt64](repeating: 0, count: page / 64 + 1 - bitmap.count) }
                    bitmap[page / 64] |= 1 << UInt64(page % 64)
                    pages[slot] = bitmap
                    count += 1
                }
            }
            if count > 0 { try virtualMachine.resetDirtyRings() }
            return count
        }
    }

    /// KVM's record of the guest's writes to `slot` since the last read:
    /// its bitmap (KVM_GET_DIRTY_LOG), or what the rings gave.
    private func kvmLog(slot: UInt32, pages: Int) throws -> [UInt64] {
        guard !rings.isEmpty else { return try virtualMachine.dirtyLog(slot: slot) }
        var bitmap = harvested.withLock { $0.removeValue(forKey: slot) } ?? []
        if bitmap.count < (pages + 63) / 64 { bitmap += [UInt64](repeating: 0, count: (pages + 63) / 64 - bitmap.count) }
        return bitmap
    }

    /// The changed pages of every RAM region with a host mapping, by
    /// address; the logs start over.
    func take() throws -> [(region: MemoryRegion, bitmap: [UInt64])] {
        let given = returned.withLock { returned in defer { returned = [:] }; return returned }
        var result: [(region: MemoryRegion, bitmap: [UInt64])] = []
        do {
            if !rings.isEmpty { try harvestRings() }
            for region in virtualMachine.regions {
                guard let mapping = region.mapping else { continue }
                var bitmap: [UInt64]
                if logsWrites {
                    bitmap = try kvmLog(slot: region.slot, pages: mapping.size / MemoryMapping.pageSize)
                    if let written = memory.takeWrittenPages(regionStart: region.start) { Self.merge(written, into: &bitmap) }
                } else {
                    bitmap = try Self.residentPages(of: mapping)
                }
                if logsWrites { sinceMark.withLock { mark in if mark != nil { Self.merge(bitmap, into: &mark![region.slot, default: []]) } } }
                if let earlier = given[region.slot] { Self.merge(earlier, into: &bitmap) }
                result.append((region, bitmap))
            }
        } catch {
            // What was taken before the failure is not lost either.
            giveBack(result)
            returned.withLock { returned in for (slot, bitmap) in given { Self.merge(bitmap, into: &returned[slot, default: []]) } }
            throw error
        }
        return result
    }

    /// The pages changed since the last snapshot, or since the last
    /// `resetSinceMark` after it, without taking them from the next Diff.
    /// Returns whether they count from a reset.
    func peek() throws -> (regions: [(region: MemoryRegion, bitmap: [UInt64])], sinceReset: Bool) {
        let taken = try take()
        giveBack(taken)
        guard let mark = sinceMark.withLock({ $0 }) else { return (taken, false) }
        return (taken.map { ($0.region, mark[$0.region.slot] ?? []) }, true)
    }

    /// Starts counting from now for `peek` (the next snapshot counts as before).
    func resetSinceMark() throws {
        guard logsWrites else { throw SnapshotError("a reset needs track_dirty_pages: without it the pages counted are those resident, since boot") }
        giveBack(try take())
        sinceMark.withLock { $0 = [:] }
    }

    /// A snapshot was taken: `peek` counts from it again.
    func snapshotTaken() { sinceMark.withLock { $0 = nil } }

    /// Hands back bitmaps from `take` whose snapshot failed.
    func giveBack(_ taken: [(region: MemoryRegion, bitmap: [UInt64])]) {
        returned.withLock { returned in
            for (region, bitmap) in taken { Self.merge(bitmap, into: &returned[region.slot, default: []]) }
        }
    }

    /// ORs `bits` into `bitmap`, growing it to fit.
    static func merge(_ bits: [UInt64], into bitmap: inout [UInt64]) {
        if bitmap.count < bits.count { bitmap += [UInt64](repeating: 0, count: bits.count - bitmap.count) }
        for (index, word) in bits.enumerated() { bitmap[index] |= word }
    }

    /// Pages of `mapping` that may hold what the guest wrote since it was
    /// mapped: for a private mapping (anonymous RAM, or a restored memory
    /// file mapped copy-on-write), those present or swapped in
    /// /proc/self/pagemap (mincore misses a swapped copy-on-write page, and
    /// a page never touched still reads as it was); for a shared mapping (a
    /// guest_memfd), those resident in mincore(2), where a page of the file
    /// is the guest's whether or not this process has touched it.
    static func residentPages(of mapping: MemoryMapping) throws -> [UInt64] {
        let pages = mapping.size / MemoryMapping.pageSize
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        if mapping.sharing == .private {
            let present = try SnapshotMemoryFile.pagemapPresence(of: mapping)
            for index in 0..<pages where present[index] { bitmap[index / 64] |= 1 << UInt64(index % 64) }
            return bitmap
        }
        var vector = [UInt8](repeating: 0, count: pages)
        // Sound: mincore writes one byte per page of the range, `pages` bytes, into the vector of that size.
        let result = vector.withUnsafeMutableBufferPointer { mincore(mapping.baseAddress, mapping.size, $0.baseAddress) }
        guard result == 0 else { throw SnapshotError("mincore on guest RAM failed: \(String(cString: strerror(errno)))") }
        for index in 0..<pages where vector[index] & 1 != 0 { bitmap[index / 64] |= 1 << UInt64(index % 64) }
        return bitmap
    }
}
