import Glibc
import GuestMemory
import KVM
import Virtio
import X86

/// Firecracker's `snapshot_type`.
public enum SnapshotType: String, Sendable, CaseIterable {
    /// All of guest RAM.
    case full = "Full"
    /// Only the pages changed since the last snapshot (`DirtyPageTracker`);
    /// every other page is a hole.
    case diff = "Diff"
}

extension Machine {
    /// What `createSnapshot` wrote and how long it took.
    public struct SnapshotReport: Sendable {
        public let type: SnapshotType
        public let stateBytes: Int
        /// Guest RAM the memory file holds (its apparent size).
        public let memoryBytes: UInt64
        /// Bytes of RAM actually written (pages the guest has, or for a Diff
        /// the pages changed; the rest are holes).
        public let memoryBytesWritten: UInt64
        /// For a Diff written over an earlier memory file of the same size:
        /// that file's data, copied under the diff (Firecracker merges a diff
        /// into such a file).
        public let mergedOnto: Bool
        public let duration: Duration
    }

    /// Writes a snapshot of the paused machine: the state file at
    /// `statePath` (`MachineSnapshot`'s format) and guest RAM at
    /// `memoryPath`, all of it (`.full`) or the pages changed since the last
    /// snapshot (`.diff`, a sparse file laid out like a full one, whose holes
    /// are the pages not changed). As Firecracker does, a Diff over an
    /// existing memory file of the same size lands on that file's data; any
    /// other existing file is replaced.
    ///
    /// Both files are written under temporary names beside their targets
    /// and renamed into place only when both are whole, so a failure at any
    /// step leaves the earlier files at those paths as they were, nothing
    /// else behind, and the changed pages still counted for the next Diff.
    /// Refused before anything is written unless the vCPUs are paused and
    /// the devices quiesced (`pause()`), when a target is not a new name or
    /// a regular file, or when it is one of `served` or of the machine's own
    /// files (`SnapshotTargets`). The machine stays paused.
    public func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType = .full, kestrelVersion: String,
                               served: [(what: String, path: String)] = []) throws -> SnapshotReport {
        let start = ContinuousClock.now
        guard isPaused else { throw SnapshotError("the microVM must be paused to take a snapshot (PATCH /vm {\"state\": \"Paused\"})") }
        guard configuration.confidential == nil else {
            throw SnapshotError("a confidential guest's memory and state are not the host's to save")
        }
        try Self.refusePrivateMemory(memory.privateRanges, what: "a snapshot")
        try SnapshotTargets.check(statePath: statePath, memoryPath: memoryPath, served: served + ownFiles)
        var snapshot = try captureState(kestrelVersion: kestrelVersion)
        // The pages changed since the last snapshot, taken now: a Full one
        // starts the count over, a Diff writes them.
        let changed = type == .diff || dirtyPages.logsWrites ? try dirtyPages.take() : []
        let memoryFile: AtomicFile, stateFile: AtomicFile
        do { (memoryFile, stateFile) = try Self.createSnapshotFiles(statePath: statePath, memoryPath: memoryPath) } catch {
            dirtyPages.giveBack(changed)
            throw error
        }
        let bytes: [UInt8]
        let written: UInt64
        var merged = false
        do {
            let memory: (ranges: [MachineSnapshot.MemoryRange], size: UInt64, written: UInt64)
            switch type {
            case .full:
                memory = try SnapshotMemoryFile.write(ramRegions, into: memoryFile)
            case .diff:
                let size = changed.reduce(UInt64(0)) { $0 + $1.region.size }
                merged = try SnapshotMemoryFile.copyEarlierFile(memoryPath, ofSize: size, into: memoryFile)
                memory = try SnapshotMemoryFile.writeChanged(Self.changedRegions(changed), into: memoryFile)
            }
            snapshot.memory = memory.ranges
            written = memory.written
            snapshot.lineage = try lineage(for: type, landed: merged, memoryFile: memoryFile, size: memory.size)
            bytes = try Self.publish(snapshot, into: stateFile, with: memoryFile, size: memory.size)
        } catch {
            memoryFile.abandon()
            stateFile.abandon()
            dirtyPages.giveBack(changed)
            throw error
        }
        lastSnapshotID.withLock { $0 = snapshot.lineage.id }
        dirtyPages.snapshotTaken()
        return SnapshotReport(type: type, stateBytes: bytes.count, memoryBytes: snapshot.memoryFileSize, memoryBytesWritten: written,
                              mergedOnto: merged, duration: ContinuousClock.now - start)
    }

    /// Refuses `what` (a snapshot, a dump) of RAM of which `privateRanges`
    /// are private (KVM_MEMORY_ATTRIBUTE_PRIVATE, set by the VM's
    /// conversions): a private page's contents are in its guest_memfd, which
    /// the host can neither map nor read(2) while the page is private, so no
    /// file can hold them, and a restore could not put them back. Shared
    /// pages, the attribute map and the vCPUs' state could be saved; without
    /// the private pages they would restore a different guest, so nothing is.
    static func refusePrivateMemory(_ privateRanges: [Range<UInt64>], what: String) throws {
        guard let first = privateRanges.first else { return }
        let bytes = privateRanges.reduce(UInt64(0)) { $0 + UInt64($1.count) }
        throw SnapshotError("\(what) needs all of guest RAM shared: \(bytes >> 10) KiB in \(privateRanges.count) range(s) are private "
            + "(KVM_MEMORY_ATTRIBUTE_PRIVATE, the first at 0x\(String(first.lowerBound, radix: 16))), and a private page's contents are in "
            + "its guest_memfd, which the host cannot map or read; the guest must convert them to shared first")
    }

    /// Writes `snapshot`'s state into `stateFile`, finishes it and
    /// `memoryFile` (of `size` bytes) and renames both into place together.
    /// Returns the state's bytes.
    static func publish(_ snapshot: MachineSnapshot, into stateFile: AtomicFile, with memoryFile: AtomicFile, size: UInt64) throws -> [UInt8] {
        let bytes = snapshot.encoded()
        // Sound: the array's buffer holds bytes.count bytes.
        try bytes.withUnsafeBytes { try stateFile.write($0.baseAddress!, count: $0.count, at: 0) }
        try memoryFile.finish(size: size)
        try stateFile.finish()
        try AtomicFile.publish([memoryFile, stateFile])
        return bytes
    }

    /// Both temporary files of a snapshot, created before any RAM is written:
    /// a target whose directory is missing fails here.
    static func createSnapshotFiles(statePath: String, memoryPath: String) throws -> (memory: AtomicFile, state: AtomicFile) {
        let memoryFile = try AtomicFile(creating: memoryPath, what: "the memory file \(memoryPath)")
        do { return (memoryFile, try AtomicFile(creating: statePath, what: "the state file \(statePath)")) } catch {
            memoryFile.abandon()
            throw error
        }
    }

    /// A new snapshot's lineage: a new id; for a Diff, the machine's last
    /// snapshot (taken or restored) as its parent and, unless it landed on an
    /// earlier file, the digest of the data just written.
    func lineage(for type: SnapshotType, landed: Bool, memoryFile: AtomicFile, size: UInt64) throws -> SnapshotLineage {
        let id = SnapshotLineage.newID()
        switch (type, landed) {
        case (.full, _): return SnapshotLineage(kind: .full, id: id)
        case (.diff, true): return SnapshotLineage(kind: .landed, id: id, parent: lastSnapshotID.withLock { $0 })
        case (.diff, false):
            // Synced first, so that the extents read are the file system's settled ones.
            guard fsync(memoryFile.fd) == 0 else { throw SnapshotError("cannot finish \(memoryFile.what): \(String(cString: strerror(errno)))") }
            let data = try SnapshotMemoryFile.dataDigest(of: memoryFile.fd, size: off_t(size), what: memoryFile.what)
            return SnapshotLineage(kind: .diff, id: id, parent: lastSnapshotID.withLock { $0 }, dataBytes: data.bytes, dataDigest: data.digest)
        }
    }

    /// Every RAM region with a host mapping, as a Full memory file takes
    /// them: `fromFile` where its pages may hold data without being in this
    /// process's page tables (RAM from a snapshot, or guest_memfd).
    var ramRegions: [(start: UInt64, mapping: MemoryMapping, fromFile: Bool)] {
        virtualMachine.regions.compactMap { region in
            region.mapping.map { (start: region.start.rawValue, mapping: $0, fromFile: ramFromSnapshot || region.guestMemfd != nil) }
        }
    }

    /// `DirtyPageTracker`'s bitmaps as a Diff memory file takes them.
    static func changedRegions(_ taken: [(region: MemoryRegion, bitmap: [UInt64])]) -> [(start: UInt64, mapping: MemoryMapping, bitmap: [UInt64])] {
        taken.compactMap { entry in entry.region.mapping.map { (start: entry.region.start.rawValue, mapping: $0, bitmap: entry.bitmap) } }
    }

    /// The files this machine reads or serves, which a snapshot must not replace.
    var ownFiles: [(what: String, path: String)] {
        var files: [(what: String, path: String)] = [("the kernel", configuration.kernelPath)]
        if let initrd = configuration.initrdPath { files.append(("the initrd", initrd)) }
        files += configuration.drives.map { ("the image of drive \($0.id)", $0.path) }
        if let vsock = configuration.vsock { files.append(("the vsock socket", vsock.udsPath)) }
        return files
    }

    /// The machine's state apart from RAM (no memory ranges yet), read with KVM's get ioctls.
    func captureState(kestrelVersion: String) throws -> MachineSnapshot {
        var described = configuration
        // A random MAC must come back the same: the guest has it.
        let macs = devices.transports.compactMap { ($0.device as? NetDevice)?.macAddress }
        for index in described.networkInterfaces.indices where index < macs.count {
            described.networkInterfaces[index].guestMAC = macs[index].map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: ":")
        }
        var vcpuStates: [MachineSnapshot.VCPUState] = []
        for vcpu in vcpus {
            vcpuStates.append(.init(cpuid: try vcpu.cpuid().entries, state: try VCPUSnapshot.capture(vcpu, system: kvm)))
        }
        return MachineSnapshot(
            kestrelVersion: kestrelVersion, configuration: MachineConfigFile.document(for: described).rendered, memory: [],
            vcpus: vcpuStates,
            interruptControllers: try InterruptControllerState.Chip.allCases.map { try virtualMachine.interruptControllerState($0) },
            pit: try virtualMachine.pitState(), clock: try virtualMachine.clock(), serial: serial.savedState,
            keyboard: keyboard.savedState,
            devices: devices.transports.map { $0.savedState() })
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
