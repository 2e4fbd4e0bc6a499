import Virtio
import VMM

/// What the API asks of the VMM behind it. `kestrel run --api-sock`
/// implements it over a `Machine`; the tests implement it with a recorder.
/// Each call returns once the change has taken effect, or throws what
/// stopped it (the API answers 400 with that text).
public protocol MicroVMControl: Sendable {
    /// Builds the machine from `configuration` and starts its vCPUs
    /// (`InstanceStart`).
    func start(_ configuration: MachineConfiguration) throws
    /// Stops every vCPU at a consistent point and quiesces the devices
    /// (`PATCH /vm {"state": "Paused"}`).
    func pause() throws
    /// Lets a paused machine run again (`"Resumed"`).
    func resume() throws
    /// Types Ctrl+Alt+Del on the guest's i8042 keyboard
    /// (`PUT /actions {"action_type": "SendCtrlAltDel"}`); keys typed while
    /// paused reach the guest when it resumes.
    func sendCtrlAltDel() throws
    /// Writes a snapshot of the paused machine, of all its RAM or of the
    /// pages changed since the last one (`PUT /snapshot/create`).
    func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType) throws
    /// Restores a snapshot in this fresh process instead of booting
    /// (`PUT /snapshot/load`) and returns the configuration it holds. The
    /// machine runs at once when `resume` is true, else it waits paused;
    /// `options` are the load's overrides (vsock path, realtime clock).
    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions) throws -> MachineConfiguration
    /// Called on the API thread once the answers to the requests it has
    /// just handled are written to their connection (or queued there, when
    /// the client is slow to read). A start or a load can hold its vCPUs
    /// until then, so that the answer does not queue behind them for a core.
    func answersSent()
    /// `PATCH /drives/{id}`: a new image and/or rate limiter for a running microVM's drive.
    func updateDrive(id: String, path: String?, rateLimiter: RateLimiterConfiguration?) throws
    /// `PATCH /network-interfaces/{id}`: new rate limiters for a running microVM's interface.
    func updateNetworkInterface(id: String, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?) throws
    /// `PATCH /balloon` after the start.
    func updateBalloon(amountMiB: UInt32) throws
    /// `PATCH /balloon/statistics`.
    func updateBalloonStatistics(intervalSeconds: Int) throws
    /// `GET /balloon/statistics`: the balloon's state and the guest's last figures.
    func balloonStatus() throws -> BalloonDevice.Status
    /// `PATCH /balloon/hinting/start`: a new free page hinting run.
    func startBalloonHinting(acknowledgeOnStop: Bool) throws
    /// `PATCH /balloon/hinting/stop`: the driver takes its hinted pages back.
    func stopBalloonHinting() throws
    /// `GET /balloon/hinting/status`: the host's and the driver's last command ids.
    func balloonHintingStatus() throws -> (host: UInt32, guest: UInt32?)
    /// `GET /kestrel/memory`: the guest RAM regions and their backing.
    func memoryRegions() throws -> [Machine.MemoryRegionInfo]
    /// `GET /kestrel/memory/dirty`: the pages changed since the last snapshot or reset.
    func dirtyPages() throws -> Machine.DirtyPageReport
    /// `PUT /kestrel/memory/dirty/reset`: the dirty page report starts over.
    func resetDirtyPages() throws
    /// `PUT /kestrel/memory/dump`: guest RAM into a file laid out like a snapshot's.
    func dumpMemory(path: String, dirtyOnly: Bool) throws -> Machine.MemoryDump
    /// `PUT /kestrel/snapshot/live`: a Full snapshot of the machine as it was
    /// at one instant, taken while it runs (`Machine.createLiveSnapshot`).
    func createLiveSnapshot(statePath: String, memoryPath: String) throws -> Machine.LiveSnapshotReport
}

extension MicroVMControl {
    public func answersSent() {}
    public func updateDrive(id: String, path: String?, rateLimiter: RateLimiterConfiguration?) throws {
        throw ConfigurationError("this microVM's drives cannot be changed")
    }
    public func updateNetworkInterface(id: String, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?) throws {
        throw ConfigurationError("this microVM's interfaces cannot be changed")
    }
    public func updateBalloon(amountMiB: UInt32) throws { throw ConfigurationError("this microVM's balloon cannot be changed") }
    public func updateBalloonStatistics(intervalSeconds: Int) throws { throw ConfigurationError("this microVM's balloon cannot be changed") }
    public func balloonStatus() throws -> BalloonDevice.Status { throw ConfigurationError("this microVM has no balloon to report") }
    public func startBalloonHinting(acknowledgeOnStop: Bool) throws { throw ConfigurationError("this microVM's balloon cannot be changed") }
    public func stopBalloonHinting() throws { throw ConfigurationError("this microVM's balloon cannot be changed") }
    public func balloonHintingStatus() throws -> (host: UInt32, guest: UInt32?) { throw ConfigurationError("this microVM has no balloon to report") }
    public func memoryRegions() throws -> [Machine.MemoryRegionInfo] { throw ConfigurationError("this microVM's memory cannot be inspected") }
    public func dirtyPages() throws -> Machine.DirtyPageReport { throw ConfigurationError("this microVM's memory cannot be inspected") }
    public func resetDirtyPages() throws { throw ConfigurationError("this microVM's memory cannot be inspected") }
    public func dumpMemory(path: String, dirtyOnly: Bool) throws -> Machine.MemoryDump { throw ConfigurationError("this microVM's memory cannot be dumped") }
    public func createLiveSnapshot(statePath: String, memoryPath: String) throws -> Machine.LiveSnapshotReport {
        throw ConfigurationError("this microVM cannot take live snapshots")
    }
}

/// The state `GET /` reports, with Firecracker's names.
public enum MicroVMState: String, Sendable {
    case notStarted = "Not started"
    case running = "Running"
    case paused = "Paused"
}
