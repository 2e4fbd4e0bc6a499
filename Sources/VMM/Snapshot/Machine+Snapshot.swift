import Glibc
import KVM
import Virtio
import X86

extension Machine {
    /// What `createSnapshot` wrote and how long it took.
    public struct SnapshotReport: Sendable {
        public let stateBytes: Int
        /// Guest RAM the memory file holds (its apparent size).
        public let memoryBytes: UInt64
        /// Bytes of RAM actually written (pages the guest has; the rest are holes).
        public let memoryBytesWritten: UInt64
        public let duration: Duration
    }

    /// Writes a full snapshot of the paused machine: the state file at
    /// `statePath` (`MachineSnapshot`'s format) and guest RAM at
    /// `memoryPath`. Throws, writing nothing under either name, unless the
    /// vCPUs are paused and the devices quiesced (`pause()`), or when a KVM
    /// get ioctl or a write fails. The machine stays paused.
    public func createSnapshot(statePath: String, memoryPath: String, kestrelVersion: String) throws -> SnapshotReport {
        let start = ContinuousClock.now
        guard isPaused else { throw SnapshotError("the microVM must be paused to take a snapshot (PATCH /vm {\"state\": \"Paused\"})") }
        guard configuration.confidential == nil else {
            throw SnapshotError("a confidential guest's memory and state are not the host's to save")
        }
        let snapshot = try captureState(kestrelVersion: kestrelVersion, memory: [])
        let regions = virtualMachine.regions.compactMap { region in
            region.mapping.map { (start: region.start.rawValue, mapping: $0, fromFile: ramFromSnapshot || region.guestMemfd != nil) }
        }
        let (ranges, written) = try SnapshotMemoryFile.write(regions, to: memoryPath)
        var complete = snapshot
        complete.memory = ranges
        let bytes = complete.encoded()
        try Self.writeAtomically(bytes, to: statePath)
        return SnapshotReport(stateBytes: bytes.count, memoryBytes: complete.memoryFileSize, memoryBytesWritten: written,
                              duration: ContinuousClock.now - start)
    }

    /// The machine's state apart from RAM, read with KVM's get ioctls.
    func captureState(kestrelVersion: String, memory: [MachineSnapshot.MemoryRange]) throws -> MachineSnapshot {
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
            kestrelVersion: kestrelVersion, configuration: MachineConfigFile.document(for: described).rendered, memory: memory,
            vcpus: vcpuStates,
            interruptControllers: try InterruptControllerState.Chip.allCases.map { try virtualMachine.interruptControllerState($0) },
            pit: try virtualMachine.pitState(), clock: try virtualMachine.clock(), serial: serial.savedState,
            devices: devices.transports.map { $0.savedState() })
    }

    /// Writes `bytes` to a temporary name beside `path`, syncs, and renames.
    static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let temporary = path + ".kestrel-partial"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapshotError("cannot create \(path): \(String(cString: strerror(errno)))") }
        var done = 0
        var failure: Int32 = 0
        while done < bytes.count {
            // Sound: the range [done, count) lies inside the array.
            let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if result < 0 && errno == EINTR { continue }
            if result <= 0 { failure = result < 0 ? errno : ENOSPC; break }
            done += result
        }
        if failure == 0 && fsync(fd) != 0 { failure = errno }
        close(fd)
        guard failure == 0, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(failure == 0 ? errno : failure))
            unlink(temporary)
            throw SnapshotError("cannot write \(path): \(reason)")
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
