import Glibc
import GuestMemory
import KVM

/// Guest memory as the host sees it, for `GET /kestrel/memory`,
/// `GET /kestrel/memory/dirty` and `PUT /kestrel/memory/dump`.
extension Machine {
    /// One RAM region: where the guest sees it, where Kestrel maps it, and
    /// where its bytes go in a memory file laid out like a snapshot's.
    public struct MemoryRegionInfo: Sendable, Equatable {
        public let slot: UInt32
        public let guestAddress: UInt64
        public let size: UInt64
        /// The address of Kestrel's mapping (0 for RAM without one).
        public let hostAddress: UInt64
        /// Where the region's bytes start in a snapshot's or dump's memory file.
        public let fileOffset: UInt64
        public let pageSize: Int
        /// "anonymous", "memory file", "guest_memfd"
        public let backing: String
        /// Whether the slot logs dirty pages (KVM_MEM_LOG_DIRTY_PAGES).
        public let logsDirtyPages: Bool

        public init(slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UInt64, fileOffset: UInt64, pageSize: Int, backing: String,
                    logsDirtyPages: Bool) {
            self.slot = slot
            self.guestAddress = guestAddress
            self.size = size
            self.hostAddress = hostAddress
            self.fileOffset = fileOffset
            self.pageSize = pageSize
            self.backing = backing
            self.logsDirtyPages = logsDirtyPages
        }
    }

    /// The RAM regions, in guest address order.
    public func memoryRegions() -> [MemoryRegionInfo] {
        var offset: UInt64 = 0
        return virtualMachine.regions.compactMap { region -> MemoryRegionInfo? in
            guard let mapping = region.mapping else { return nil }
            defer { offset += UInt64(mapping.size) }
            let backing = region.guestMemfd != nil ? "guest_memfd" : ramMappedFromFile ? "memory file"
                : region.mapping?.sharedMemoryFile != nil ? "shared" : "anonymous"
            return MemoryRegionInfo(slot: region.slot, guestAddress: region.start.rawValue, size: UInt64(mapping.size), hostAddress: mapping.address,
                                    fileOffset: offset, pageSize: MemoryMapping.pageSize, backing: backing,
                                    logsDirtyPages: region.flags.contains(.logDirtyPages))
        }
    }

    /// Pages changed, by region, as runs of page numbers.
    public struct DirtyPageReport: Sendable, Equatable {
        /// How pages were counted: "dirty_log" (KVM's log and the devices'
        /// writes, with track_dirty_pages) or "resident" (every page the
        /// host has for the guest, without it).
        public let tracking: String
        /// Since when: "snapshot" (the last one, or the start), "reset", or
        /// for resident pages "start".
        public let since: String
        public let pageSize: Int
        public let regions: [(guestAddress: UInt64, size: UInt64, runs: [Range<Int>])]
        public var pageCount: Int { regions.reduce(0) { $0 + $1.runs.reduce(0) { $0 + $1.count } } }

        public init(tracking: String, since: String, pageSize: Int, regions: [(guestAddress: UInt64, size: UInt64, runs: [Range<Int>])]) {
            self.tracking = tracking
            self.since = since
            self.pageSize = pageSize
            self.regions = regions
        }

        public static func == (left: Self, right: Self) -> Bool {
            left.tracking == right.tracking && left.since == right.since && left.pageSize == right.pageSize
                && left.regions.map { [$0.guestAddress, $0.size] } == right.regions.map { [$0.guestAddress, $0.size] }
                && left.regions.map(\.runs) == right.regions.map(\.runs)
        }
    }

    /// The pages changed since the last snapshot (or since the last
    /// `resetDirtyPages` after it), without taking them from the next Diff.
    public func dirtyPageReport() throws -> DirtyPageReport {
        let (regions, sinceReset) = try dirtyPages.peek()
        let page = MemoryMapping.pageSize
        return DirtyPageReport(
            tracking: dirtyPages.logsWrites ? "dirty_log" : "resident",
            since: dirtyPages.logsWrites ? (sinceReset ? "reset" : "snapshot") : "start", pageSize: page,
            regions: regions.map { entry in
                (entry.region.start.rawValue, entry.region.size, SnapshotMemoryFile.pageRuns(entry.bitmap, pages: Int(entry.region.size) / page))
            })
    }

    /// Starts the dirty page report over from now; the next Diff snapshot
    /// still holds every page changed since the last snapshot.
    public func resetDirtyPages() throws { try dirtyPages.resetSinceMark() }

    /// What `dumpMemory` wrote.
    public struct MemoryDump: Sendable, Equatable {
        public let size: UInt64
        public let bytesWritten: UInt64

        public init(size: UInt64, bytesWritten: UInt64) {
            self.size = size
            self.bytesWritten = bytesWritten
        }
    }

    /// Writes guest RAM into a new file at `path` laid out like a Full
    /// snapshot's memory file (holes where RAM has nothing), or with
    /// `dirtyOnly` like a Diff's: the pages of `dirtyPageReport`, which the
    /// next Diff still holds. The machine must be paused, so the bytes are
    /// one moment's. Written under a temporary name and renamed into place
    /// when whole; `path` is checked as a snapshot's targets are.
    public func dumpMemory(to path: String, dirtyOnly: Bool, served: [(what: String, path: String)] = []) throws -> MemoryDump {
        guard isPaused else { throw SnapshotError("the microVM must be paused for a memory dump (PATCH /vm {\"state\": \"Paused\"})") }
        guard configuration.confidential == nil else { throw SnapshotError("a confidential guest's memory is not the host's to dump") }
        try Self.refusePrivateMemory(memory.privateRanges, what: "a memory dump")
        try SnapshotTargets.check(memoryPath: path, served: served + ownFiles)
        let file = try AtomicFile(creating: path, what: "the memory dump \(path)")
        do {
            let written: (ranges: [MachineSnapshot.MemoryRange], size: UInt64, written: UInt64)
            if dirtyOnly {
                written = try SnapshotMemoryFile.writeChanged(Self.changedRegions(try dirtyPages.peek().regions), into: file)
            } else {
                written = try SnapshotMemoryFile.write(ramRegions, into: file)
            }
            try file.finish(size: written.size)
            try AtomicFile.publish([file])
            return MemoryDump(size: written.size, bytesWritten: written.written)
        } catch {
            file.abandon()
            throw error
        }
    }
}
