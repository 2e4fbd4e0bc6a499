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
        var snapshot = try captureState(kestrelVersion: kestrelVersion)
        let regions = virtualMachine.regions.compactMap { region in
            region.mapping.map { (start: region.start.rawValue, mapping: $0, fromFile: ramFromSnapshot || region.guestMemfd != nil) }
        }
        let (ranges, written) = try SnapshotMemoryFile.write(regions, to: memoryPath)
        snapshot.memory = ranges
        let bytes = snapshot.encoded()
        let file = try AtomicFile(creating: statePath, what: statePath)
        do {
            try bytes.withUnsafeBytes { try file.write($0.baseAddress!, count: $0.count, at: 0) }
            try file.commit()
        } catch {
            file.abandon()
            throw error
        }
        return SnapshotReport(stateBytes: bytes.count, memoryBytes: snapshot.memoryFileSize, memoryBytesWritten: written,
                              duration: ContinuousClock.now - start)
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
