#if canImport(Glibc)
import Glibc
#endif
import Metadata
import Synchronization
import Virtio
import VMM

/// Firecracker's REST API (src/firecracker/swagger/firecracker.yaml) over the
/// resources Kestrel supports: routes a request to the pre-boot
/// configuration it assembles, or to the `MicroVMControl` once the machine
/// runs, and answers with Firecracker's status codes and
/// `{"fault_message": ...}` bodies. Resources Kestrel does not have are
/// refused by name. Requests are answered one at a time (the API thread);
/// a bad one changes nothing.
public final class FirecrackerAPI: Sendable {
    public let instanceID: String
    public let version: String
    /// The MMDS data store (`/mmds`), shared with the machine's interfaces.
    public let metadata: MetadataService
    /// `/logger` and `/metrics`: the process's log and metrics.
    public let logger: EventLogger
    public let metrics: MetricsReporter
    let control: any MicroVMControl
    /// Requests by Firecracker's metric names ("put_api_requests.drive_count").
    private let requestCounts = Mutex<[String: Int]>([:])
    private let state: Mutex<State>

    struct State {
        /// The pre-boot resources as Firecracker documents them (the
        /// sections of a `--config-file`); drives and interfaces in the order
        /// they were first put.
        var sections: [String: JSONValue]
        var drives: [(id: String, value: JSONValue)] = []
        var interfaces: [(id: String, value: JSONValue)] = []
        var vm: MicroVMState = .notStarted

        /// Takes the resources of a whole configuration document (a machine
        /// started from a file, or restored from a snapshot).
        mutating func adopt(_ document: JSONValue) {
            guard let root = document.objectValue else { return }
            sections = [:]
            for (key, value) in root {
                switch key {
                case "drives":
                    if case .array(let items) = value { drives = items.map { ($0.objectValue?["drive_id"]?.stringValue ?? "", $0) } }
                case "network-interfaces":
                    if case .array(let items) = value { interfaces = items.map { ($0.objectValue?["iface_id"]?.stringValue ?? "", $0) } }
                default: sections[key] = value
                }
            }
        }

        /// The resources as one Firecracker configuration document.
        var document: JSONValue {
            var root = sections
            root["drives"] = .array(drives.map(\.value))
            root["network-interfaces"] = .array(interfaces.map(\.value))
            return .object(root)
        }
    }

    /// Firecracker's machine-config before any PUT: 1 vCPU, 128 MiB.
    public static let defaultMachineConfig: JSONValue = .object([
        "vcpu_count": .number(1), "mem_size_mib": .number(128), "smt": .bool(false), "track_dirty_pages": .bool(false), "huge_pages": .string("None"),
    ])

    /// Resources Firecracker has and Kestrel does not, refused by name.
    static let unsupportedResources: [String: String] = [
                "pmem": "virtio-pmem devices",
        "hotplug": "memory hot-plug",
    ]

    /// An API for a machine that `control` will start. `running` describes a
    /// machine already started from a configuration file (its sections
    /// become what `GET /vm/config` shows).
    public init(instanceID: String, version: String, control: any MicroVMControl, running document: JSONValue? = nil,
                metadata: MetadataService = MetadataService(), logger: EventLogger? = nil, metrics: MetricsReporter? = nil) {
        self.instanceID = instanceID
        self.version = version
        self.metadata = metadata
        self.logger = logger ?? EventLogger(instanceID: instanceID)
        self.metrics = metrics ?? MetricsReporter(instanceID: instanceID)
        self.control = control
        var state = State(sections: ["machine-config": Self.defaultMachineConfig])
        if let document {
            state.adopt(document)
            state.vm = .running
        }
        self.state = Mutex(state)
    }

    /// What `GET /` reports now.
    public var vmState: MicroVMState { state.withLock { $0.vm } }

    /// Tells the control that the answers just given are on their way
    /// (`MicroVMControl.answersSent`); the server calls it after writing.
    public func answersSent() { control.answersSent() }

    /// Answers one request, and counts it under Firecracker's metric names.
    public func respond(to request: HTTPRequest) -> HTTPResponse {
        // Firecracker's line for each request, where a log was asked for (not on stderr).
        if logger.isConfigured {
            logger.log(.info, "The API server received a \(request.method) request on \"\(request.path)\".", module: "ControlAPI")
        }
        // Counted before it is served, as Firecracker counts (a FlushMetrics line includes itself).
        let metric = Self.metricName(request).flatMap { name in
            ["GET": "get_api_requests", "PUT": "put_api_requests", "PATCH": "patch_api_requests"][request.method].map { "\($0).\(name)" }
        }
        if let metric { requestCounts.withLock { $0["\(metric)_count", default: 0] += 1 } }
        let response: HTTPResponse
        do { response = try route(request) } catch { response = error.response }
        if response.status >= 400, logger.isConfigured {
            logger.log(.error, "Received Error. Status code: \(response.status). Message: \(String(decoding: response.body, as: UTF8.self))", module: "ControlAPI")
        }
        if let metric, response.status >= 400, request.method != "GET" { requestCounts.withLock { $0["\(metric)_fails", default: 0] += 1 } }
        return response
    }

    /// Firecracker's metric name for a request's resource, if it has one.
    static func metricName(_ request: HTTPRequest) -> String? {
        let resource = request.path.split(separator: "/").first.map(String.init) ?? ""
        switch (request.method, resource) {
        case ("GET", ""): return "instance_info"
        case ("GET", "version"): return "vmm_version"
        case (_, "machine-config"): return "machine_cfg"
        case (_, "mmds"): return "mmds"
        case ("PUT", "actions"): return "actions"
        case ("PUT", "boot-source"): return "boot_source"
        case (_, "drives"): return "drive"
        case (_, "network-interfaces"): return "network"
        case ("PUT", "logger"): return "logger"
        case ("PUT", "metrics"): return "metrics"
        case ("PUT", "vsock"): return "vsock"
        case ("PUT", "serial"): return "serial"
        case ("PUT", "cpu-config"): return "cpu_cfg"
        case (_, "balloon"): return "balloon"
        case ("PATCH", "vm"): return "vm"
        default: return nil
        }
    }

    /// The API's metric groups: every count Firecracker names, zero until used.
    public func metricGroups() -> MetricsReporter.Groups {
        let counts = requestCounts.withLock { $0 }
        var groups: MetricsReporter.Groups = [
            "get_api_requests": [:], "put_api_requests": [:], "patch_api_requests": [:],
        ]
        let names: [(String, [String], Bool)] = [
            ("get_api_requests", ["balloon", "instance_info", "machine_cfg", "mmds", "vmm_version"], false),
            ("put_api_requests", ["actions", "balloon", "boot_source", "cpu_cfg", "drive", "logger", "machine_cfg", "metrics", "mmds", "network", "serial",
                                  "vsock"], true),
            ("patch_api_requests", ["balloon", "drive", "machine_cfg", "mmds", "network", "vm"], true),
        ]
        for (group, fields, fails) in names {
            for field in fields {
                groups[group]!["\(field)_count"] = .counter(counts["\(group).\(field)_count"] ?? 0)
                if fails { groups[group]!["\(field)_fails"] = .counter(counts["\(group).\(field)_fails"] ?? 0) }
            }
        }
        return groups
    }

    private func route(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let segments = request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        let resource = segments.first ?? ""
        let method = request.method
        func invalid() -> HTTPResponse {
            .fault(400, "Invalid request method and/or path: \(method) \(request.path).")
        }
        if let what = Self.unsupportedResources[resource] {
            return .fault(400, "\(request.method) /\(segments.joined(separator: "/")): Kestrel does not support \(what).")
        }
        if resource == "balloon", segments.count == 3, segments[1] == "hinting" {
            return try balloonHinting(request, segments[2]) ?? invalid()
        }
        if resource == "kestrel" { return try kestrelExtension(request, Array(segments.dropFirst())) ?? invalid() }
        guard segments.count <= 2 else { return invalid() }
        let second: String? = segments.count == 2 ? segments[1] : nil
        switch (method, resource, second) {
        case ("GET", "", nil): return instanceInfo()
        case ("GET", "version", nil): return .json(200, JSONValue.object(["firecracker_version": .string(version)]).rendered)
        case ("GET", "machine-config", nil): return .json(200, effectiveMachineConfig().rendered)
        case ("GET", "vm", "config"?): return .json(200, fullConfiguration().rendered)
        case ("PUT", "actions", nil): return try action(request)
        case ("PATCH", "vm", nil): return try changeState(request)
        case ("PUT", "boot-source", nil): return try preBoot(request) { body, state in
            try Self.require(body, ["kernel_image_path"], in: "boot-source")
            state.sections["boot-source"] = body
        }
        case ("PUT", "machine-config", nil): return try preBoot(request) { body, state in
            try Self.require(body, ["vcpu_count", "mem_size_mib"], in: "machine-config")
            state.sections["machine-config"] = body
        }
        case ("PATCH", "machine-config", nil): return try preBoot(request) { body, state in
            guard case .object(let changes) = body else { throw ConfigurationError("machine-config must be an object") }
            var merged = state.sections["machine-config"]?.objectValue ?? [:]
            for (key, value) in changes { merged[key] = value }
            state.sections["machine-config"] = .object(merged)
        }
        case ("PUT", "drives", let id?): return try preBoot(request) { body, state in
            try Self.require(body, ["drive_id", "is_root_device"], in: "drive", matching: ("drive_id", id))
            if let index = state.drives.firstIndex(where: { $0.id == id }) { state.drives[index].value = body } else { state.drives.append((id, body)) }
        }
        case ("PUT", "network-interfaces", let id?): return try preBoot(request) { body, state in
            try Self.require(body, ["iface_id", "host_dev_name"], in: "network interface", matching: ("iface_id", id))
            if let index = state.interfaces.firstIndex(where: { $0.id == id }) { state.interfaces[index].value = body } else { state.interfaces.append((id, body)) }
        }
        case ("PUT", "vsock", nil): return try preBoot(request) { body, state in
            try Self.require(body, ["guest_cid", "uds_path"], in: "vsock")
            state.sections["vsock"] = body
        }
        case ("PUT", "entropy", nil): return try preBoot(request) { body, state in
            state.sections["entropy"] = body
        }
        case ("PUT", "cpu-config", nil): return try preBoot(request) { body, state in
            state.sections["cpu-config"] = body
        }
        case ("PUT", "serial", nil): return try preBoot(request) { body, state in
            state.sections["serial"] = body
            if let path = body.objectValue?["serial_out_path"]?.stringValue { try MachineConfiguration.checkSerialOutput(path) }
        }
        case ("PATCH", "drives", let id?): return try patchDevice(request, id: id, kind: "drives")
        case ("PATCH", "network-interfaces", let id?): return try patchDevice(request, id: id, kind: "network-interfaces")
        case ("PUT", "logger", nil): return try configureObservability(request) { body in
            try self.logger.configure(try EventLogger.Settings.parse(body, source: "PUT /logger"))
        }
        case ("PUT", "metrics", nil): return try configureObservability(request) { body in
            try self.metrics.configure(try MetricsReporter.Settings.parse(body, source: "PUT /metrics"))
        }
        case ("PUT", "balloon", nil): return try preBoot(request) { body, state in
            try Self.require(body, ["amount_mib", "deflate_on_oom"], in: "balloon")
            state.sections["balloon"] = body
        }
        case ("GET", "balloon", nil):
            guard let balloon = fullConfiguration().objectValue?["balloon"] else { return .fault(400, "No balloon device configured.") }
            return .json(200, balloon.rendered)
        case ("PATCH", "balloon", nil): return try patchBalloon(request)
        case ("GET", "balloon", "statistics"?): return balloonStatistics()
        case ("PATCH", "balloon", "statistics"?): return try patchBalloon(request, statistics: true)
        case ("PUT", "mmds", "config"?): return try preBoot(request) { body, state in
            try Self.require(body, ["network_interfaces"], in: "MMDS configuration")
            state.sections["mmds-config"] = body
        }
        case ("PUT", "mmds", nil), ("PATCH", "mmds", nil): return try changeMetadata(request)
        case ("GET", "mmds", nil): return .json(200, metadata.contents.rendered)
        case ("PUT", "snapshot", "create"?): return try createSnapshot(request)
        case ("PUT", "snapshot", "load"?): return try loadSnapshot(request)
        default: return invalid()
        }
    }

    private func instanceInfo() -> HTTPResponse {
        .json(200, JSONValue.object([
            "app_name": .string("Kestrel"), "id": .string(instanceID), "state": .string(vmState.rawValue), "vmm_version": .string(version),
        ]).rendered)
    }

    /// The machine-config in effect: what was put, with every default filled
    /// in (Firecracker's GET /machine-config). Every PUT was checked by the
    /// same parse, so it cannot fail; the section as put is the fallback.
    func effectiveMachineConfig() -> JSONValue {
        let document = fullConfiguration()
        guard let configuration = try? MachineConfigFile.parse(document, source: "GET /machine-config", requireBootSource: false) else {
            return document.objectValue?["machine-config"] ?? Self.defaultMachineConfig
        }
        return MachineConfigFile.machineConfigSection(for: configuration)
    }

    /// The assembled resources as one Firecracker configuration document.
    func fullConfiguration() -> JSONValue {
        state.withLock { $0.document }
    }

    /// A pre-boot PUT or PATCH: refused once the machine started; otherwise
    /// `change` applies the body to a copy of the state, the whole
    /// configuration is checked as `kestrel run --config-file` would check
    /// it (without needing a boot source yet), and only then kept.
    private func preBoot(_ request: HTTPRequest, _ change: (JSONValue, inout State) throws -> Void) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        return state.withLock { state in
            guard state.vm == .notStarted else {
                return .fault(400, "The requested operation is not supported after starting the microVM.")
            }
            var candidate = state
            do {
                try change(body, &candidate)
                let configuration = try MachineConfigFile.parse(candidate.document, source: "\(request.method) \(request.path)", requireBootSource: false)
                // Files and taps are checked when they are put, as Firecracker does.
                for (what, path) in [("kernel", configuration.kernelPath), ("initrd", configuration.initrdPath ?? "")] where !path.isEmpty {
                    try MachineConfiguration.checkBootFile(path, what: what)
                }
                try configuration.validateDevices()
            } catch {
                return .fault(400, "\(error)")
            }
            state = candidate
            return .noContent
        }
    }

    private func action(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard let type = body.objectValue?["action_type"]?.stringValue else {
            return .fault(400, "PUT /actions: the body must be {\"action_type\": \"InstanceStart\"} (or another action)")
        }
        switch type {
        case "InstanceStart":
            let document: JSONValue
            let started: Bool = state.withLock { $0.vm != .notStarted }
            if started { return .fault(400, "InstanceStart: the microVM is already running.") }
            document = fullConfiguration()
            let configuration: MachineConfiguration
            do {
                configuration = try MachineConfigFile.parse(document, source: "InstanceStart")
                try configuration.validate()
            } catch {
                return .fault(400, "Cannot start the microVM: \(error)")
            }
            do { try control.start(configuration) } catch {
                return .fault(400, "Cannot start the microVM: \(error)")
            }
            state.withLock { $0.vm = .running }
            return .noContent
        case "SendCtrlAltDel":
            // As in Firecracker: the keys go to the guest's i8042 keyboard; a
            // Linux guest with atkbd reboots, and the i8042 reset ends Kestrel.
            let vm = state.withLock { $0.vm }
            if vm == .notStarted { return .fault(400, "SendCtrlAltDel: the operation is not supported before starting the microVM.") }
            do { try control.sendCtrlAltDel() } catch {
                return .fault(400, "SendCtrlAltDel: \(error)")
            }
            return .noContent
        case "FlushMetrics":
            guard metrics.flush() else {
                return .fault(400, "FlushMetrics: the metrics system is not configured (PUT /metrics or --metrics-path first).")
            }
            return .noContent
        default:
            return .fault(400, "Unknown action_type \"\(type)\"; known: InstanceStart, SendCtrlAltDel, FlushMetrics.")
        }
    }

    /// `PUT /snapshot/create` (SnapshotCreateParams): a Full or Diff
    /// snapshot of the paused microVM (Full when `snapshot_type` is absent).
    private func createSnapshot(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard let object = body.objectValue else { return .fault(400, "PUT /snapshot/create: the body must be a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !["snapshot_path", "mem_file_path", "snapshot_type", "version"].contains($0) }) {
            return .fault(400, "PUT /snapshot/create: unknown field \(unknown)")
        }
        guard let statePath = object["snapshot_path"]?.stringValue, let memoryPath = object["mem_file_path"]?.stringValue,
              !statePath.isEmpty, !memoryPath.isEmpty else {
            return .fault(400, "PUT /snapshot/create: snapshot_path and mem_file_path are required strings")
        }
        guard statePath != memoryPath else { return .fault(400, "PUT /snapshot/create: snapshot_path and mem_file_path must differ") }
        var type = SnapshotType.full
        if let given = object["snapshot_type"], given != .null {
            guard let name = given.stringValue, let known = SnapshotType(rawValue: name) else {
                return .fault(400, "PUT /snapshot/create: snapshot_type must be \"Full\" or \"Diff\", not \(given.rendered)")
            }
            type = known
        }
        switch vmState {
        case .notStarted: return .fault(400, "Cannot create a snapshot before the microVM has started.")
        case .running: return .fault(400, "Cannot create a snapshot of a running microVM; pause it first (PATCH /vm {\"state\": \"Paused\"}).")
        case .paused: break
        }
        do { try control.createSnapshot(statePath: statePath, memoryPath: memoryPath, type: type) } catch {
            return .fault(400, "Cannot create the snapshot: \(error)")
        }
        return .noContent
    }

    /// `PUT /snapshot/load` (SnapshotLoadParams): only on a fresh microVM,
    /// with nothing configured; the memory comes from a File backend (or
    /// the older mem_file_path), and `resume_vm` says whether it runs at once.
    private func loadSnapshot(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard let object = body.objectValue else { return .fault(400, "PUT /snapshot/load: the body must be a JSON object") }
        let known = ["snapshot_path", "mem_file_path", "mem_backend", "resume_vm", "enable_diff_snapshots", "track_dirty_pages", "network_overrides",
                     "vsock_override", "clock_realtime", "huge_pages"]
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            return .fault(400, "PUT /snapshot/load: unknown field \(unknown)")
        }
        guard let statePath = object["snapshot_path"]?.stringValue, !statePath.isEmpty else {
            return .fault(400, "PUT /snapshot/load: snapshot_path is a required string")
        }
        let memoryPath: String
        var options = SnapshotLoadOptions()
        switch (object["mem_file_path"], object["mem_backend"]) {
        case (let path?, nil) where path.stringValue?.isEmpty == false:
            memoryPath = path.stringValue!
        case (nil, let backend?):
            guard let fields = backend.objectValue, let type = fields["backend_type"]?.stringValue,
                  let path = fields["backend_path"]?.stringValue, !path.isEmpty else {
                return .fault(400, "PUT /snapshot/load: mem_backend needs backend_type and backend_path")
            }
            if let unknown = fields.keys.sorted().first(where: { !["backend_type", "backend_path", "paging"].contains($0) }) {
                return .fault(400, "PUT /snapshot/load: mem_backend: unknown field \(unknown)")
            }
            switch (type, fields["paging"]) {
            case ("File", nil), ("File", .null?):
                options.memoryBackend = .file(.mapped)
            case ("File", let paging?):
                guard let name = paging.stringValue, let value = FilePaging(rawValue: name) else {
                    return .fault(400, "PUT /snapshot/load: mem_backend.paging must be one of "
                        + FilePaging.allCases.map(\.rawValue).joined(separator: ", ") + ", not \(paging.rendered)")
                }
                options.memoryBackend = .file(value)
            case ("Uffd", nil), ("Uffd", .null?):
                options.memoryBackend = .uffd
            case ("Uffd", _?):
                return .fault(400, "PUT /snapshot/load: mem_backend.paging is for the File backend; with Uffd the page-fault handler fills RAM")
            default:
                return .fault(400, "PUT /snapshot/load: mem_backend.backend_type must be File or Uffd, not \"\(type)\"")
            }
            memoryPath = path
        default:
            return .fault(400, "PUT /snapshot/load: give exactly one of mem_backend and mem_file_path")
        }
        for flag in ["enable_diff_snapshots", "track_dirty_pages"] {
            guard let value = object[flag] else { continue }
            guard let track = value.boolValue else { return .fault(400, "PUT /snapshot/load: \(flag) must be a boolean") }
            options.trackDirtyPages = options.trackDirtyPages || track
        }
        if let overrides = object["network_overrides"], overrides != .null {
            guard case .array(let items) = overrides else {
                return .fault(400, "PUT /snapshot/load: network_overrides must be an array of {\"iface_id\": ID, \"host_dev_name\": TAP}")
            }
            for item in items {
                guard let fields = item.objectValue, let id = fields["iface_id"]?.stringValue, let tap = fields["host_dev_name"]?.stringValue,
                      !id.isEmpty, !tap.isEmpty, fields.count == 2 else {
                    return .fault(400, "PUT /snapshot/load: each of network_overrides is {\"iface_id\": ID, \"host_dev_name\": TAP}, not \(item.rendered)")
                }
                options.networkOverrides.append(NetworkOverride(interfaceID: id, hostDeviceName: tap))
            }
        }
        if let override = object["vsock_override"], override != .null {
            guard let fields = override.objectValue, let path = fields["uds_path"]?.stringValue, !path.isEmpty,
                  fields.keys.allSatisfy({ $0 == "uds_path" }) else {
                return .fault(400, "PUT /snapshot/load: vsock_override must be {\"uds_path\": PATH}")
            }
            options.vsockPath = path
        }
        if let realtime = object["clock_realtime"], realtime != .null {
            guard let value = realtime.boolValue else { return .fault(400, "PUT /snapshot/load: clock_realtime must be a boolean") }
            options.clockRealtime = value
        }
        switch object["huge_pages"] {
        case nil, .null?, .string("Snapshot")?, .string("None")?:
            // A Kestrel snapshot's machine has no huge pages (machine-config huge_pages is always None).
            break
        case .string("Transparent")?:
            return .fault(400, "PUT /snapshot/load: huge_pages Transparent is not supported; Kestrel maps the memory file copy-on-write, "
                + "which gets no transparent huge pages (give Snapshot or None)")
        case .string("2M")?:
            return .fault(400, "PUT /snapshot/load: huge_pages 2M needs a snapshot of a machine with hugetlbfs RAM, which Kestrel does not make (give Snapshot or None)")
        case let other?:
            return .fault(400, "PUT /snapshot/load: huge_pages must be one of Snapshot, None, Transparent, 2M, not \(other.rendered)")
        }
        let resume = object["resume_vm"]?.boolValue ?? false
        let fresh: Bool = state.withLock { state in
            state.vm == .notStarted && state.drives.isEmpty && state.interfaces.isEmpty
                && state.sections.keys.allSatisfy { $0 == "machine-config" } && state.sections["machine-config"] == Self.defaultMachineConfig
        }
        guard fresh else {
            return .fault(400, "Loading a snapshot is only allowed on a fresh microVM, before any resource is configured or the microVM started.")
        }
        let configuration: MachineConfiguration
        do { configuration = try control.loadSnapshot(statePath: statePath, memoryPath: memoryPath, resume: resume, options: options) } catch {
            return .fault(400, "Cannot load the snapshot: \(error)")
        }
        state.withLock { state in
            state.adopt(MachineConfigFile.document(for: configuration))
            state.vm = resume ? .running : .paused
        }
        return .noContent
    }

    /// `PATCH /drives/{id}` (PartialDrive: `path_on_host`, `rate_limiter`) and
    /// `PATCH /network-interfaces/{id}` (PartialNetworkInterface:
    /// `rx_rate_limiter`, `tx_rate_limiter`), after the start, as in
    /// Firecracker. The body is checked whole before anything changes; the
    /// change then shows in `GET /vm/config`.
    private func patchDevice(_ request: HTTPRequest, id: String, kind: String) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        let source = "\(request.method) \(request.path)"
        let isDrive = kind == "drives"
        let idField = isDrive ? "drive_id" : "iface_id"
        do {
            try Self.require(body, [idField], in: isDrive ? "drive" : "network interface", matching: (idField, id))
            let object = body.objectValue ?? [:]
            let allowed: Set<String> = isDrive ? ["drive_id", "path_on_host", "rate_limiter"] : ["iface_id", "rx_rate_limiter", "tx_rate_limiter"]
            try MachineConfigFile.refuseUnknownKeys(object, allowed: allowed, section: isDrive ? "drive" : "network interface", source: source)
            guard vmState != .notStarted else {
                return .fault(400, "The requested operation is not supported before starting the microVM.")
            }
            let known = state.withLock { state in (isDrive ? state.drives.map(\.id) : state.interfaces.map(\.id)).contains(id) }
            guard known else { throw ConfigurationError("no \(isDrive ? "drive" : "network interface") has the id \"\(id)\"") }
            var changes: [String: JSONValue] = [:]
            if isDrive {
                let path = try MachineConfigFile.Fields(object: object, place: "drive", source: source).string("path_on_host")
                let limiter = try RateLimiterConfiguration.parse(object["rate_limiter"], place: "rate_limiter", source: source)
                try control.updateDrive(id: id, path: path, rateLimiter: limiter)
                if let path { changes["path_on_host"] = .string(path) }
                if let limiter { changes["rate_limiter"] = limiter.document }
            } else {
                let receive = try RateLimiterConfiguration.parse(object["rx_rate_limiter"], place: "rx_rate_limiter", source: source)
                let transmit = try RateLimiterConfiguration.parse(object["tx_rate_limiter"], place: "tx_rate_limiter", source: source)
                try control.updateNetworkInterface(id: id, receive: receive, transmit: transmit)
                if let receive { changes["rx_rate_limiter"] = receive.document }
                if let transmit { changes["tx_rate_limiter"] = transmit.document }
            }
            state.withLock { state in
                func apply(_ value: JSONValue) -> JSONValue {
                    var fields = value.objectValue ?? [:]
                    for (key, change) in changes {
                        // A limiter's buckets merge into the one before.
                        fields[key] = key.hasSuffix("rate_limiter") ? (fields[key] ?? .object([:])).merging(change) : change
                    }
                    return .object(fields)
                }
                if isDrive, let index = state.drives.firstIndex(where: { $0.id == id }) { state.drives[index].value = apply(state.drives[index].value) }
                if !isDrive, let index = state.interfaces.firstIndex(where: { $0.id == id }) { state.interfaces[index].value = apply(state.interfaces[index].value) }
            }
        } catch {
            return .fault(400, "\(error)")
        }
        return .noContent
    }

    /// `PATCH /balloon` (`amount_mib`) and `PATCH /balloon/statistics`
    /// (`stats_polling_interval_s`): before the start they change the
    /// balloon that will be made; after it, the running device.
    private func patchBalloon(_ request: HTTPRequest, statistics: Bool = false) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        let field = statistics ? "stats_polling_interval_s" : "amount_mib"
        guard let object = body.objectValue, object.keys.allSatisfy({ $0 == field }), let value = object[field]?.wholeNumber, value >= 0,
              value <= (statistics ? 86400 : Int(UInt32.max >> 8)) else {
            return .fault(400, "\(request.method) \(request.path): the body must be {\"\(field)\": N}, N a whole number")
        }
        guard state.withLock({ $0.sections["balloon"] }) != nil else { return .fault(400, "No balloon device configured.") }
        if vmState == .notStarted {
            return try preBoot(request) { _, state in
                var balloon = state.sections["balloon"]?.objectValue ?? [:]
                balloon[field] = .number(Double(value))
                state.sections["balloon"] = .object(balloon)
            }
        }
        do {
            if statistics { try control.updateBalloonStatistics(intervalSeconds: value) } else { try control.updateBalloon(amountMiB: UInt32(value)) }
        } catch {
            return .fault(400, "\(request.method) \(request.path): \(error)")
        }
        state.withLock { state in
            var balloon = state.sections["balloon"]?.objectValue ?? [:]
            balloon[field] = .number(Double(value))
            state.sections["balloon"] = .object(balloon)
        }
        return .noContent
    }

    /// `GET /balloon/statistics` (Firecracker's BalloonStats): the target and
    /// actual size in pages and MiB, and the guest's last figures.
    private func balloonStatistics() -> HTTPResponse {
        guard vmState != .notStarted else { return .fault(400, "The requested operation is not supported before starting the microVM.") }
        let status: BalloonDevice.Status
        do { status = try control.balloonStatus() } catch { return .fault(400, "GET /balloon/statistics: \(error)") }
        guard status.statisticsEnabled else { return .fault(400, "GET /balloon/statistics: statistics are not enabled (stats_polling_interval_s is 0).") }
        var fields: [String: JSONValue] = [
            "target_pages": .number(Double(status.targetPages)), "actual_pages": .number(Double(status.actualPages)),
            "target_mib": .number(Double(status.targetPages >> 8)), "actual_mib": .number(Double(status.actualPages >> 8)),
        ]
        for (name, value) in status.statistics { fields[name] = .number(Double(value)) }
        return .json(200, JSONValue.object(fields).rendered)
    }

    /// `PATCH /balloon/hinting/start` (an optional BalloonStartCmd,
    /// `acknowledge_on_stop` true unless it says otherwise), `PATCH
    /// /balloon/hinting/stop` and `GET /balloon/hinting/status`
    /// (BalloonHintingStatus): a running balloon made with
    /// `free_page_hinting`. Nil for a method and path that name none of them.
    private func balloonHinting(_ request: HTTPRequest, _ action: String) throws(ResponseError) -> HTTPResponse? {
        let place = "\(request.method) \(request.path)"
        switch (request.method, action) {
        case ("PATCH", "start"), ("PATCH", "stop"), ("GET", "status"): break
        default: return nil
        }
        var acknowledge = true
        if !request.body.isEmpty {
            guard let value = try? JSONValue.parse(request.body), let object = value.objectValue else {
                return .fault(400, "\(place): the body must be a JSON object")
            }
            let allowed: Set<String> = action == "start" ? ["acknowledge_on_stop"] : []
            if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
                return .fault(400, "\(place): unknown field \"\(unknown)\"")
            }
            if let value = object["acknowledge_on_stop"], value != .null {
                guard case .bool(let flag) = value else { return .fault(400, "\(place): acknowledge_on_stop must be true or false") }
                acknowledge = flag
            }
        }
        guard state.withLock({ $0.sections["balloon"] }) != nil else { return .fault(400, "No balloon device configured.") }
        guard vmState != .notStarted else { return .fault(400, "The requested operation is not supported before starting the microVM.") }
        do {
            switch action {
            case "start": try control.startBalloonHinting(acknowledgeOnStop: acknowledge)
            case "stop": try control.stopBalloonHinting()
            default:
                let status = try control.balloonHintingStatus()
                var fields: [String: JSONValue] = ["host_cmd": .number(Double(status.host))]
                if let guest = status.guest { fields["guest_cmd"] = .number(Double(guest)) }
                return .json(200, JSONValue.object(fields).rendered)
            }
        } catch {
            return .fault(400, "\(place): \(error)")
        }
        return .noContent
    }

    /// `PUT /logger` and `PUT /metrics`: before the machine starts, as in
    /// Firecracker; a body or path that is refused changes nothing.
    private func configureObservability(_ request: HTTPRequest, _ apply: (JSONValue) throws -> Void) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard vmState == .notStarted else { return .fault(400, "The requested operation is not supported after starting the microVM.") }
        do { try apply(body) } catch {
            return .fault(400, "\(error)")
        }
        return .noContent
    }

    /// `PUT /mmds` replaces the data store, `PATCH /mmds` merges into it (RFC
    /// 7396); both at any time, both with a JSON object, both within the
    /// store's limit.
    private func changeMetadata(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard body.objectValue != nil else { return .fault(400, "\(request.method) /mmds: the body must be a JSON object") }
        do {
            if request.method == "PUT" { try metadata.put(body) } else { try metadata.patch(body) }
        } catch {
            return .fault(400, "\(request.method) /mmds: \(error)")
        }
        return .noContent
    }

    private func changeState(_ request: HTTPRequest) throws(ResponseError) -> HTTPResponse {
        let body = try Self.jsonBody(request)
        guard let wanted = body.objectValue?["state"]?.stringValue, wanted == "Paused" || wanted == "Resumed" else {
            return .fault(400, "PATCH /vm: the body must be {\"state\": \"Paused\"} or {\"state\": \"Resumed\"}")
        }
        let current = vmState
        guard current != .notStarted else { return .fault(400, "The requested operation is not supported before starting the microVM.") }
        do {
            if wanted == "Paused" {
                if current == .running { try control.pause() }
                state.withLock { $0.vm = .paused }
            } else {
                if current == .paused { try control.resume() }
                state.withLock { $0.vm = .running }
            }
        } catch {
            return .fault(400, "Cannot change the microVM's state to \(wanted): \(error)")
        }
        return .noContent
    }

    /// The request's body as JSON; throws the 400 that says why it is not
    /// (`respond` answers with it).
    static func jsonBody(_ request: HTTPRequest) throws(ResponseError) -> JSONValue { try body(of: request).get() }

    /// The request's body as JSON, or the 400 that says why it is not.
    static func body(of request: HTTPRequest) -> Result<JSONValue, ResponseError> {
        guard !request.body.isEmpty else { return .failure(ResponseError(.fault(400, "\(request.method) \(request.path) needs a JSON body."))) }
        let value: JSONValue
        do { value = try JSONValue.parse(request.body) } catch {
            return .failure(ResponseError(.fault(400, "\(request.method) \(request.path): the body is not valid JSON.")))
        }
        // A NUL would end a path or a command line early wherever it reaches C.
        guard !containsNUL(value) else {
            return .failure(ResponseError(.fault(400, "\(request.method) \(request.path): a string in the body contains NUL (\\u0000).")))
        }
        if request.method == "PATCH", value.objectValue?.isEmpty == true {
            return .failure(ResponseError(.fault(400, "\(request.method) \(request.path): the body has no field to change.")))
        }
        return .success(value)
    }

    /// Whether any string (or object key) in `value` holds U+0000.
    static func containsNUL(_ value: JSONValue) -> Bool {
        switch value {
        case .string(let text): return text.utf8.contains(0)
        case .array(let items): return items.contains(where: containsNUL)
        case .object(let fields): return fields.contains { $0.key.utf8.contains(0) || containsNUL($0.value) }
        default: return false
        }
    }

    struct ResponseError: Error {
        let response: HTTPResponse
        init(_ response: HTTPResponse) { self.response = response }
    }

    /// Checks that `body` is an object with `fields`, and that the id field
    /// agrees with the path's id.
    static func require(_ body: JSONValue, _ fields: [String], in what: String, matching id: (field: String, value: String)? = nil) throws {
        guard let object = body.objectValue else { throw ConfigurationError("the \(what) must be a JSON object") }
        for field in fields where object[field] == nil || object[field] == .null {
            throw ConfigurationError("the \(what) needs the field \(field)")
        }
        if let id, object[id.field]?.stringValue != id.value {
            throw ConfigurationError("The id from the path [\(id.value)] does not match the id from the body [\(object[id.field]?.stringValue ?? object[id.field]?.rendered ?? "")]!")
        }
    }
}
