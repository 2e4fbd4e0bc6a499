import KVM

/// What a snapshot load may change from what the snapshot recorded, as
/// Firecracker's `PUT /snapshot/load` allows (SnapshotLoadParams).
public struct SnapshotLoadOptions: Equatable, Sendable {
    /// `vsock_override.uds_path`: the vsock device's host socket path, when
    /// the one recorded is not available here.
    public var vsockPath: String?
    /// `network_overrides`: interface id → the host tap it uses from now on
    /// (`host_dev_name`), for interfaces whose recorded tap is not the one
    /// to use here, as each clone of one snapshot needs its own.
    public var networkOverrides: [NetworkOverride]
    /// `clock_realtime`: move kvmclock on by the wall-clock time since the
    /// snapshot was taken (KVM_SET_CLOCK with KVM_CLOCK_REALTIME), instead
    /// of resuming it where it stopped.
    public var clockRealtime: Bool
    /// `track_dirty_pages` (or the older `enable_diff_snapshots`): log the
    /// pages the restored guest and its devices change, for Diff snapshots
    /// against the loaded one. The snapshot's own setting does not carry over.
    public var trackDirtyPages: Bool
    /// `mem_backend`: where the restored RAM's contents come from.
    public var memoryBackend: SnapshotMemoryBackend

    public init(vsockPath: String? = nil, networkOverrides: [NetworkOverride] = [], clockRealtime: Bool = false, trackDirtyPages: Bool = false,
                memoryBackend: SnapshotMemoryBackend = .file(.mapped)) {
        self.vsockPath = vsockPath
        self.networkOverrides = networkOverrides
        self.clockRealtime = clockRealtime
        self.trackDirtyPages = trackDirtyPages
        self.memoryBackend = memoryBackend
    }

    /// Applies the overrides to the snapshot's configuration; throws when
    /// one cannot apply: a vsock path for a machine with no vsock device,
    /// a network override for an interface it does not have (or two for
    /// one), or realtime for a clock reading that has no wall-clock time.
    func apply(to configuration: inout MachineConfiguration, clock: ClockState) throws {
        if let vsockPath {
            guard configuration.vsock != nil else {
                throw SnapshotError("vsock_override: the snapshot's machine has no vsock device")
            }
            configuration.vsock?.udsPath = vsockPath
        }
        for (index, override) in networkOverrides.enumerated() {
            guard networkOverrides[..<index].allSatisfy({ $0.interfaceID != override.interfaceID }) else {
                throw SnapshotError("network_overrides: interface \"\(override.interfaceID)\" is overridden twice")
            }
            guard let target = configuration.networkInterfaces.firstIndex(where: { $0.id == override.interfaceID }) else {
                let known = configuration.networkInterfaces.map { "\"\($0.id)\"" }
                throw SnapshotError("network_overrides: the snapshot's machine has no interface \"\(override.interfaceID)\" "
                    + (known.isEmpty ? "(it has none)" : "(it has \(known.joined(separator: ", ")))"))
            }
            configuration.networkInterfaces[target].tapName = override.hostDeviceName
        }
        configuration.trackDirtyPages = trackDirtyPages
        // The snapshot's ring choice holds only while pages are tracked.
        if !trackDirtyPages { configuration.dirtyLog = .bitmap }
        try configuration.checkDirtyTracking()
        if clockRealtime && clock.flags & ClockState.realtimeFlag == 0 {
            throw SnapshotError("clock_realtime: the snapshot's kvmclock reading carries no wall-clock time "
                + "(KVM_GET_CLOCK did not set KVM_CLOCK_REALTIME on the host that took it)")
        }
    }
}

/// `mem_backend` of a snapshot load: how the restored RAM gets the memory
/// file's contents, and what the load's memory path names.
public enum SnapshotMemoryBackend: Equatable, Sendable {
    /// `backend_type: File`: the path is the memory file, read into RAM as
    /// `FilePaging` says.
    case file(FilePaging)
    /// `backend_type: Uffd`: the path is the Unix socket of a page-fault
    /// handler written to Firecracker's documentation. RAM is anonymous and
    /// registered with a userfaultfd, which goes to the handler with the
    /// regions' layout (`UserfaultHandshake`); the handler fills every page
    /// from a memory file Kestrel never sees.
    case uffd
}

/// How a File backend's memory file becomes guest RAM (`mem_backend.paging`,
/// a Kestrel extension).
public enum FilePaging: String, CaseIterable, Equatable, Sendable {
    /// RAM maps the file MAP_PRIVATE: the kernel reads each page on its first
    /// touch, writes are copy-on-write, and the file must stay unchanged while
    /// the guest runs. The default, and Firecracker's File backend.
    case mapped = "Mapped"
    /// The file's data is read into anonymous RAM before the guest runs: the
    /// restore's time grows with the data, and the file is free at once.
    case eager = "Eager"
    /// Anonymous RAM, filled page by page on first touch by Kestrel's own
    /// userfaultfd pager thread (`RestorePager`), which keeps the file open.
    case onDemand = "OnDemand"
    /// As `onDemand`, while the pager also copies the rest of the file's data
    /// in the background; once it is all in, the pager lets go of the
    /// userfaultfd and the file, and RAM is plain anonymous memory.
    case prefault = "Prefault"
}

/// One of `network_overrides` (Firecracker's NetworkOverride): the interface
/// `iface_id` of the snapshot's machine uses the tap `host_dev_name`. The
/// guest's MAC stays the one recorded: the guest has it.
public struct NetworkOverride: Equatable, Sendable {
    public var interfaceID: String
    public var hostDeviceName: String

    public init(interfaceID: String, hostDeviceName: String) {
        self.interfaceID = interfaceID
        self.hostDeviceName = hostDeviceName
    }
}
