import KVM

/// What a snapshot load may change from what the snapshot recorded, as
/// Firecracker's `PUT /snapshot/load` allows (SnapshotLoadParams).
public struct SnapshotLoadOptions: Equatable, Sendable {
    /// `vsock_override.uds_path`: the vsock device's host socket path, when
    /// the one recorded is not available here.
    public var vsockPath: String?
    /// `clock_realtime`: move kvmclock on by the wall-clock time since the
    /// snapshot was taken (KVM_SET_CLOCK with KVM_CLOCK_REALTIME), instead
    /// of resuming it where it stopped.
    public var clockRealtime: Bool
    /// `track_dirty_pages` (or the older `enable_diff_snapshots`): log the
    /// pages the restored guest and its devices change, for Diff snapshots
    /// against the loaded one. The snapshot's own setting does not carry over.
    public var trackDirtyPages: Bool

    public init(vsockPath: String? = nil, clockRealtime: Bool = false, trackDirtyPages: Bool = false) {
        self.vsockPath = vsockPath
        self.clockRealtime = clockRealtime
        self.trackDirtyPages = trackDirtyPages
    }

    /// Applies the overrides to the snapshot's configuration; throws when
    /// one cannot apply: a vsock path for a machine with no vsock device,
    /// or realtime for a clock reading that has no wall-clock time.
    func apply(to configuration: inout MachineConfiguration, clock: ClockState) throws {
        if let vsockPath {
            guard configuration.vsock != nil else {
                throw SnapshotError("vsock_override: the snapshot's machine has no vsock device")
            }
            configuration.vsock?.udsPath = vsockPath
        }
        configuration.trackDirtyPages = trackDirtyPages
        try configuration.checkDirtyTracking()
        if clockRealtime && clock.flags & ClockState.realtimeFlag == 0 {
            throw SnapshotError("clock_realtime: the snapshot's kvmclock reading carries no wall-clock time "
                + "(KVM_GET_CLOCK did not set KVM_CLOCK_REALTIME on the host that took it)")
        }
    }
}
