import Glibc
import GuestMemory
import KVM

extension Machine {
    /// What `createLiveSnapshot` wrote, how long the guest was paused and
    /// how long the whole took.
    public struct LiveSnapshotReport: Sendable {
        public let stateBytes: Int
        /// Guest RAM the memory file holds (its apparent size).
        public let memoryBytes: UInt64
        /// Bytes of RAM written: the data the shared memory held at the instant.
        public let memoryBytesWritten: UInt64
        /// From the pause request until the guest ran again: vCPUs out of
        /// KVM_RUN, devices quiesced, state read, RAM write-protected. Zero
        /// for a machine that was paused already.
        public let pause: Duration
        /// The pause's parts: the vCPUs and devices stopping, the state read,
        /// RAM write-protected, and the resume.
        public var pauseSteps: [(step: String, duration: Duration)] = []
        /// Writes that waited for their page to be copied first.
        public let faults: Int
        public let duration: Duration

        public init(stateBytes: Int, memoryBytes: UInt64, memoryBytesWritten: UInt64, pause: Duration, faults: Int, duration: Duration) {
            self.stateBytes = stateBytes
            self.memoryBytes = memoryBytes
            self.memoryBytesWritten = memoryBytesWritten
            self.pause = pause
            self.faults = faults
            self.duration = duration
        }
    }

    /// Writes a Full snapshot of the machine as it was at one instant, while
    /// it keeps running: the guest is paused only to read its state and to
    /// write-protect its RAM (`LiveMemoryCopy`), and RAM is copied after it
    /// resumed, each page before the guest's first write to it. The files
    /// are the same as `createSnapshot(type: .full)` writes, published the
    /// same way (both whole, or neither); a machine that was paused stays
    /// paused. Needs shared RAM (memory_backend "shared") and a kernel whose
    /// userfaultfd write-protects it; refused before any pause otherwise.
    /// Returns when the memory file is whole.
    public func createLiveSnapshot(statePath: String, memoryPath: String, kestrelVersion: String,
                                   served: [(what: String, path: String)] = []) throws -> LiveSnapshotReport {
        let start = ContinuousClock.now
        guard configuration.confidential == nil else {
            throw SnapshotError("a confidential guest's memory and state are not the host's to save")
        }
        try Self.refusePrivateMemory(memory.privateRanges, what: "a live snapshot")
        try SnapshotTargets.check(statePath: statePath, memoryPath: memoryPath, served: served + ownFiles)
        let regions = ramRegions
        let (ranges, size) = SnapshotMemoryFile.layout(regions.map { ($0.start, $0.mapping) })
        let copy = try LiveMemoryCopy(regions: zip(regions, ranges).map { ($0.mapping, $1.fileOffset) })
        // The balloon keeps its pages until the copy is done (a discard could take data not yet copied).
        memory.discardsHeld = true
        defer {
            copy.release()
            memory.discardsHeld = false
        }
        let (memoryFile, stateFile) = try Self.createSnapshotFiles(statePath: statePath, memoryPath: memoryPath)
        func abandon() {
            memoryFile.abandon()
            stateFile.abandon()
        }

        let wasPaused = isPaused
        var snapshot: MachineSnapshot
        var changed: [(region: MemoryRegion, bitmap: [UInt64])] = []
        var steps = MachineBuilder.StepTimer()
        do {
            if !wasPaused {
                // The bulk of the protection before the pause; the pause protects what changed meanwhile. The
                // burst of writes that meets the fresh protection is answered before the pause (up to 50 ms,
                // until 2 ms pass without one), so that the pause does not wait on it.
                try copy.protectAhead()
                let settle = ContinuousClock.now + .milliseconds(50)
                var quietSince = ContinuousClock.now
                while ContinuousClock.now < settle && ContinuousClock.now - quietSince < .milliseconds(2) {
                    if try copy.serveAhead() > 0 { quietSince = ContinuousClock.now }
                    usleep(100)
                }
                steps = MachineBuilder.StepTimer()
                try pause(serving: { try copy.serveAhead() })
            }
            steps.step("stop")
            snapshot = try captureState(kestrelVersion: kestrelVersion)
            changed = dirtyPages.logsWrites ? try dirtyPages.take() : []
            steps.step("state")
            _ = try copy.protect()
            steps.step("write-protect")
        } catch {
            copy.release()
            if !wasPaused { resume() }
            abandon()
            dirtyPages.giveBack(changed)
            throw error
        }
        if !wasPaused { resume() }
        steps.step("resume")
        let pause = wasPaused ? .zero : steps.steps.reduce(Duration.zero) { $0 + $1.duration }

        let bytes: [UInt8]
        do {
            try copy.copy(into: memoryFile)
            copy.release()
            snapshot.memory = ranges
            snapshot.lineage = try lineage(for: .full, landed: false, memoryFile: memoryFile, size: size)
            bytes = try Self.publish(snapshot, into: stateFile, with: memoryFile, size: size)
        } catch {
            abandon()
            dirtyPages.giveBack(changed)
            throw error
        }
        lastSnapshotID.withLock { $0 = snapshot.lineage.id }
        dirtyPages.snapshotTaken()
        var report = LiveSnapshotReport(stateBytes: bytes.count, memoryBytes: size, memoryBytesWritten: copy.counts.bytesWritten,
                                        pause: pause, faults: copy.counts.faults, duration: ContinuousClock.now - start)
        report.pauseSteps = steps.steps
        return report
    }
}
