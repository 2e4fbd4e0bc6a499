#if canImport(Glibc)
import Glibc
#endif
import HostSystem
import Synchronization
import WireFormats

/// Kestrel's metrics, written as Firecracker writes its own
/// (docs/metrics.md): one JSON object per line to a file or named pipe set
/// by `--metrics-path` or `PUT /metrics` (once, before the machine starts),
/// every 60 s and on each `FlushMetrics` action. Each line has
/// `utc_timestamp_ms`, then `id` and `properties` when asked for, then a
/// group per component. Counters give the change since the previous line
/// (Firecracker's IncMetric); gauges give the value now (its StoreMetric).
/// Field names are Firecracker's where they mean the same thing.
public final class MetricsReporter: Sendable {
    /// One value in a line.
    public enum Metric: Equatable, Sendable {
        case counter(Int)
        case gauge(Int)
    }

    /// A component's groups: group name to field name to value.
    public typealias Groups = [String: [String: Metric]]

    public struct Settings: Equatable, Sendable {
        public var path: String
        /// Firecracker's `emit_id`: the instance id on every line.
        public var emitID = false
        /// Firecracker's `properties`: the operator's key-value pairs on every line.
        public var properties: [String: String] = [:]
        public init(path: String) { self.path = path }
    }

    private struct State {
        var settings: Settings?
        var fd: Int32 = -1
        var previous: [String: Int] = [:]
        var missedLines = 0, failedWrites = 0
        var sources: [@Sendable () -> Groups] = []
    }

    public let instanceID: String
    private let state = Mutex(State())
    private let wake = ConditionLock()
    private let stopping = Atomic<Bool>(false)

    public init(instanceID: String) {
        self.instanceID = instanceID
    }

    public var isConfigured: Bool { state.withLock { $0.fd >= 0 } }

    /// Opens the target (read-write and non-blocking, as Firecracker does:
    /// a FIFO needs no reader yet, and a line that would block is counted as
    /// missed). A second configuration is refused, as in Firecracker.
    public func configure(_ settings: Settings) throws {
        guard !isConfigured else { throw HostFileError("the metrics system is already configured; it cannot be configured again") }
        let fd = try HostFile.open(settings.path, O_RDWR | O_CREAT | O_APPEND, mode: 0o600, allowed: [.regular, .fifo, .characterDevice],
                                   what: "the metrics file", keepNonBlocking: true)
        let kept = state.withLock { state -> Bool in
            guard state.fd < 0 else { return false }
            state.fd = fd
            state.settings = settings
            return true
        }
        if !kept {
            close(fd)
            throw HostFileError("the metrics system is already configured; it cannot be configured again")
        }
    }

    /// Adds a component whose groups every line carries.
    public func addSource(_ source: @escaping @Sendable () -> Groups) {
        state.withLock { $0.sources.append(source) }
    }

    /// Writes one line now. False when no path is configured.
    @discardableResult
    public func flush() -> Bool {
        let sources = state.withLock { $0.sources }
        // The sources are read outside the lock: they take their own.
        var groups: Groups = [:]
        for source in sources { groups.merge(source()) { $0.merging($1) { _, new in new } } }
        return state.withLock { state -> Bool in
            guard state.fd >= 0, let settings = state.settings else { return false }
            groups["logger", default: [:]]["missed_metrics_count"] = .counter(state.missedLines)
            groups["logger", default: [:]]["metrics_fails"] = .counter(state.failedWrites)
            let line = Self.render(groups, previous: &state.previous, timestamp: Self.utcMilliseconds(),
                                   id: settings.emitID ? instanceID : nil, properties: settings.properties)
            if EventLogger.write(Array((line + "\n").utf8), to: state.fd) { return true }
            state.missedLines += 1
            state.failedWrites += 1
            return true
        }
    }

    /// One line's JSON: the timestamp, id and properties first (as
    /// Firecracker orders them), then the groups and their fields by name;
    /// counters as the change since `previous`, which is updated.
    static func render(_ groups: Groups, previous: inout [String: Int], timestamp: Int64, id: String?, properties: [String: String]) -> String {
        var text = "{\"utc_timestamp_ms\":\(timestamp)"
        if let id { text += ",\"id\":" + JSONValue.string(id).rendered }
        if !properties.isEmpty { text += ",\"properties\":" + JSONValue.object(properties.mapValues { .string($0) }).rendered }
        for group in groups.keys.sorted() {
            text += "," + JSONValue.string(group).rendered + ":{"
            let fields = groups[group]!
            for (index, field) in fields.keys.sorted().enumerated() {
                let value: Int
                switch fields[field]! {
                case .gauge(let now): value = now
                case .counter(let total):
                    let key = group + "." + field
                    value = total - (previous[key] ?? 0)
                    previous[key] = total
                }
                text += (index > 0 ? "," : "") + JSONValue.string(field).rendered + ":\(value)"
            }
            text += "}"
        }
        return text + "}"
    }

    static func utcMilliseconds() -> Int64 { HostClock.microseconds(CLOCK_REALTIME) / 1000 }

    /// Flushes every `interval` on a thread of its own (`setUp` runs on it
    /// first: its seccomp list) until `stop`.
    public func startPeriodicFlush(every interval: Duration = .seconds(60), setUp: @escaping @Sendable () -> Void = {}) throws {
        _ = try POSIXThread.start(stackSize: 256 << 10) { [self] in
            setUp()
            var next = ContinuousClock.now + interval
            while !stopping.load(ordering: .acquiring) {
                if wake.wait(until: { stopping.load(ordering: .acquiring) }, timeout: next - ContinuousClock.now) { break }
                flush()
                next += interval
            }
        }
    }

    /// Stops the periodic flush and writes a last line (as Firecracker does
    /// when its VMM stops), once.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wake.withLockBroadcasting {}
        flush()
    }
}
