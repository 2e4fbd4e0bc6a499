#if canImport(Glibc)
import Glibc
#endif
import ControlAPI
import HostSystem
import Metadata
import Virtio
import VMM

/// What one `kestrel run` process keeps beside its machine, whichever way it
/// was launched: the log, the metrics, and the MMDS data store, which the
/// API and the machine's interfaces share.
final class RunServices: Sendable {
    let logger: EventLogger
    let metrics: MetricsReporter
    let metadata: MetadataService
    /// Where the process's clock started: `--start-time-us` from a jailer,
    /// else the moment Kestrel began (CLOCK_MONOTONIC, in microseconds).
    let startMicroseconds: Int64
    /// CPU time already used before Kestrel began (`--start-time-cpu-us`).
    let startCPUMicroseconds: Int64

    init(instanceID: String, metadataSizeLimit: Int, startMicroseconds: Int64? = nil, startCPUMicroseconds: Int64? = nil) {
        logger = EventLogger(instanceID: instanceID)
        metrics = MetricsReporter(instanceID: instanceID)
        metadata = MetadataService(sizeLimit: metadataSizeLimit)
        self.startMicroseconds = startMicroseconds ?? (LaunchLine.startMicroseconds > 0 ? LaunchLine.startMicroseconds : HostClock.microseconds(CLOCK_MONOTONIC))
        self.startCPUMicroseconds = startCPUMicroseconds ?? 0
    }

    func log(_ level: EventLogger.Level, _ message: String, file: String = #fileID, line: Int = #line) {
        logger.log(level, message, file: file, line: line)
    }

    /// A line that belongs on standard error whatever the log's settings (the
    /// run's closing diagnosis), and in the log too once it has a path.
    func announce(_ message: String) {
        if logger.isConfigured { logger.log(.info, message) }
        printError("kestrel: \(message)")
    }


    /// Records Firecracker's `api_server` start-up gauges: the time from the
    /// process's start to now (the API listening, or the machine booting
    /// without one), wall and CPU.
    func recordStartup() {
        let wall = HostClock.microseconds(CLOCK_MONOTONIC) - startMicroseconds
        let cpu = HostClock.microseconds(CLOCK_PROCESS_CPUTIME_ID) + startCPUMicroseconds
        metrics.addSource {
            ["api_server": ["process_startup_time_us": .gauge(Int(wall)), "process_startup_time_cpu_us": .gauge(Int(cpu))]]
        }
    }

    /// Adds `machine`'s device groups to every metrics line: Firecracker's
    /// aggregate `block`, `net`, `vsock` and `entropy` groups and one per
    /// drive (`block_ID`) and interface (`net_ID`); `mmds` from the data
    /// store and each interface's MMDS stack; and Kestrel's own `kestrel`
    /// group.
    func addMachine(_ machine: Machine) {
        let devices = machine.devices.transports.map { (name: $0.name, device: $0.device) }
        let metadata = metadata
        let vcpuCount = machine.vcpuThreads.count
        metrics.addSource { [machine] in
            // Every aggregate group is on every line, zero without its device, as in Firecracker.
            var groups: MetricsReporter.Groups = [
                "block": Dictionary(uniqueKeysWithValues: ["read_count", "write_count", "read_bytes", "write_bytes", "flush_count", "invalid_reqs_count"].map { ($0, .counter(0)) }),
                "net": Dictionary(uniqueKeysWithValues: ["rx_bytes_count", "rx_packets_count", "tx_bytes_count", "tx_packets_count", "dropped_frames",
                                                         "tx_mmds_frames", "rx_mmds_frames"].map { ($0, .counter(0)) }),
                "entropy": ["entropy_bytes": .counter(0)],
                "balloon": Dictionary(uniqueKeysWithValues: BalloonDevice.metricNames.map { ($0, .counter(0)) }),
            ]
            for (name, device) in devices {
                let parts = name.split(separator: " ", maxSplits: 1).map(String.init)
                let kind = ["virtio-blk": "block", "virtio-net": "net", "virtio-vsock": "vsock", "virtio-rng": "entropy", "virtio-balloon": "balloon"][parts[0]] ?? parts[0]
                for (field, value) in device.metricCounts {
                    if case .counter(let sum)? = groups[kind]?[field] { groups[kind]![field] = .counter(sum + value) } else { groups[kind, default: [:]][field] = .counter(value) }
                    if parts.count == 2 { groups["\(kind)_\(parts[1])", default: [:]][field] = .counter(value) }
                }
            }
            let requests = metadata.counters
            var mmds: [String: MetricsReporter.Metric] = [
                "rx_count": .counter(requests.requests), "rx_bad_requests": .counter(requests.badRequests), "rx_no_token": .counter(requests.noToken),
                "rx_invalid_token": .counter(requests.invalidToken), "tokens_issued": .counter(requests.tokensIssued),
            ]
            let stacks = devices.compactMap { ($0.device as? NetDevice)?.interceptor as? MetadataNetworkStack }.map(\.counts)
            mmds["rx_accepted"] = .counter(stacks.map(\.framesReceived).reduce(0, +))
            mmds["rx_accepted_err"] = .counter(stacks.map(\.framesDropped).reduce(0, +))
            mmds["tx_frames"] = .counter(stacks.map(\.framesSent).reduce(0, +))
            mmds["tx_bytes"] = .counter(stacks.map(\.bytesSent).reduce(0, +))
            mmds["connections_created"] = .counter(stacks.map(\.connectionsCreated).reduce(0, +))
            mmds["connections_destroyed"] = .counter(stacks.map(\.connectionsDestroyed).reduce(0, +))
            groups["mmds"] = mmds
            let uptime = machine.startTime.map { ContinuousClock.now - $0 } ?? .zero
            groups["kestrel"] = ["uptime_ms": .gauge(Int(uptime.components.seconds) * 1000 + Int(uptime.components.attoseconds / 1_000_000_000_000_000)),
                                 "vcpu_count": .gauge(vcpuCount)]
            return groups
        }
    }

    /// The logger's own counts, on every line.
    func addLogger() {
        let logger = logger
        metrics.addSource {
            let counts = logger.counts
            return ["logger": ["missed_log_count": .counter(counts.missedLines), "log_fails": .counter(counts.failedWrites)]]
        }
    }
}
