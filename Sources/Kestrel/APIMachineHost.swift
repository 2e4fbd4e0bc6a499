import ControlAPI
import HostSystem
import TextFormat
import Virtio
import VMM

/// `kestrel run --api-sock`: the API's `MicroVMControl`. The API thread asks
/// for a start or a snapshot load; the main thread, waiting in `nextRequest`,
/// builds or restores the machine and answers through `started` or
/// `failed`, then runs it. Pause, resume and snapshots go to the running
/// `Machine`.
final class APIMachineHost: MicroVMControl, @unchecked Sendable {
    // @unchecked Sendable: every `var` is read and written only under `lock`.
    private let lock = ConditionLock()
    private var request: Request?
    private var answer: Result<MachineConfiguration, any Error>?
    private var machine: Machine?
    private var delivery = Delivery.none
    private let log: @Sendable (String) -> Void
    /// The API's own socket, which no snapshot may replace.
    private let apiSocket: String?

    /// How far the answer to a start or load has gone.
    private enum Delivery { case none, taken, sent }

    /// What the main thread is asked to make.
    enum Request {
        case boot(MachineConfiguration)
        case restore(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions)
    }

    /// A host for a machine that is already running (started from flags or
    /// a configuration file). `log` hears of snapshots taken; `apiSocket` is
    /// the socket the API is served on.
    init(running machine: Machine? = nil, apiSocket: String? = nil, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.machine = machine
        self.apiSocket = apiSocket
        self.log = log
    }

    private func ask(_ wanted: Request) throws -> MachineConfiguration {
        lock.withLockBroadcasting {
            request = wanted
            answer = nil
        }
        let result = lock.wait(until: { answer != nil }) { answer! }
        lock.withLockBroadcasting {
            answer = nil
            delivery = .taken
        }
        return try result.get()
    }

    func start(_ configuration: MachineConfiguration) throws { _ = try ask(.boot(configuration)) }

    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions) throws -> MachineConfiguration {
        try ask(.restore(statePath: statePath, memoryPath: memoryPath, resume: resume, options: options))
    }

    /// Blocks the main thread until the API asks for a start or a restore.
    func nextRequest() -> Request {
        lock.wait(until: { request != nil }) {
            defer { request = nil }
            return request!
        }
    }

    /// Answers the start or load; returns once the API thread has written
    /// the answer (or after 100 ms). `Machine.run` calls it before the vCPUs
    /// first enter the guest: a vCPU let go first can keep the API thread
    /// from a core for up to a scheduler tick (measured with perf sched:
    /// 2 to 3.5 ms of a 5 ms restore on kvm_pvm).
    func started(_ machine: Machine) {
        lock.withLockBroadcasting {
            self.machine = machine
            answer = .success(machine.configuration)
            delivery = .none
        }
        _ = lock.wait(until: { delivery == .sent }, timeout: .milliseconds(100))
    }

    /// The API thread has written what it answered; `started` goes on.
    func answersSent() {
        lock.withLockBroadcasting { if delivery == .taken { delivery = .sent } }
    }

    func failed(_ error: any Error) {
        lock.withLockBroadcasting { answer = .failure(error) }
    }

    private var runningMachine: Machine {
        get throws {
            guard let machine = lock.withLock({ machine }) else { throw ConfigurationError("the microVM has not started") }
            return machine
        }
    }

    func pause() throws { try runningMachine.pause() }

    func updateDrive(id: String, path: String?, rateLimiter: RateLimiterConfiguration?) throws {
        try runningMachine.updateDrive(id: id, path: path, rateLimiter: rateLimiter)
        if let path { log("drive \(id) now serves \(path)") }
    }

    func updateNetworkInterface(id: String, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?) throws {
        try runningMachine.updateNetworkInterface(id: id, receive: receive, transmit: transmit)
    }

    func updateBalloon(amountMiB: UInt32) throws { try runningMachine.updateBalloon(amountMiB: amountMiB) }
    func updateBalloonStatistics(intervalSeconds: Int) throws { try runningMachine.updateBalloonStatistics(intervalSeconds: intervalSeconds) }

    func balloonStatus() throws -> BalloonDevice.Status {
        guard let balloon = try runningMachine.balloon else { throw ConfigurationError("the microVM has no balloon") }
        return balloon.status
    }

    func startBalloonHinting(acknowledgeOnStop: Bool) throws {
        try runningMachine.withBalloon { try $0.startHinting(acknowledgeOnStop: acknowledgeOnStop) }
    }
    func stopBalloonHinting() throws { try runningMachine.withBalloon { try $0.stopHinting() } }
    func balloonHintingStatus() throws -> (host: UInt32, guest: UInt32?) { try runningMachine.withBalloon { try $0.hintingStatus() } }
    func resume() throws { try runningMachine.resume() }

    func sendCtrlAltDel() throws {
        guard try runningMachine.keyboard.typeControlAltDelete() else {
            throw ConfigurationError("the guest's keyboard is not taking keys (it is not scanning, or the guest is not reading them)")
        }
    }

    func memoryRegions() throws -> [Machine.MemoryRegionInfo] { try runningMachine.memoryRegions() }
    func dirtyPages() throws -> Machine.DirtyPageReport { try runningMachine.dirtyPageReport() }
    func resetDirtyPages() throws { try runningMachine.resetDirtyPages() }

    /// Writes the dump and logs one line, as a snapshot does.
    func dumpMemory(path: String, dirtyOnly: Bool) throws -> Machine.MemoryDump {
        let start = ContinuousClock.now
        let dump = try runningMachine.dumpMemory(to: path, dirtyOnly: dirtyOnly, served: apiSocket.map { [("the API socket", $0)] } ?? [])
        log("memory dump: \(path) (\(dump.size >> 20) MiB of RAM, \(dump.bytesWritten >> 20) MiB written\(dirtyOnly ? ", the pages changed" : "")) "
            + "in \(SecondsText.text(ContinuousClock.now - start)) s")
        return dump
    }

    /// Writes the live snapshot and logs one line: the files, the pause, the faults and the time.
    func createLiveSnapshot(statePath: String, memoryPath: String) throws -> Machine.LiveSnapshotReport {
        let report = try runningMachine.createLiveSnapshot(statePath: statePath, memoryPath: memoryPath, kestrelVersion: Kestrel.version,
                                                           served: apiSocket.map { [("the API socket", $0)] } ?? [])
        func milliseconds(_ duration: Duration) -> String { (duration.inSeconds * 1000).text(places: 3) }
        let pauseMs = milliseconds(report.pause) + " ms (" + report.pauseSteps.map { "\($0.step) \(milliseconds($0.duration))" }.joined(separator: ", ") + ")"
        let files = "\(statePath) (\(report.stateBytes) bytes), \(memoryPath) (\(report.memoryBytes >> 20) MiB of RAM, \(report.memoryBytesWritten >> 20) MiB written)"
        log("snapshot: Live \(files) in \(SecondsText.text(report.duration)) s; the guest paused for \(pauseMs), \(report.faults) writes waited for their page")
        return report
    }

    /// Writes the snapshot and logs one line: the files, their sizes and the time.
    func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType) throws {
        let report = try runningMachine.createSnapshot(statePath: statePath, memoryPath: memoryPath, type: type, kestrelVersion: Kestrel.version,
                                                       served: apiSocket.map { [("the API socket", $0)] } ?? [])
        let mib = { (bytes: UInt64) in "\(bytes >> 20) MiB" }
        let pages = report.type == .diff ? ", \(report.memoryBytesWritten / 4096) pages changed" : ""
        log("snapshot: \(report.type.rawValue) \(statePath) (\(report.stateBytes) bytes), \(memoryPath) (\(mib(report.memoryBytes)) of RAM, "
            + "\(mib(report.memoryBytesWritten)) written\(pages)\(report.mergedOnto ? ", onto the earlier file's data" : "")) "
            + "in \(SecondsText.text(report.duration)) s")
    }
}
