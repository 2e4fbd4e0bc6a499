@testable import ControlAPI
import Glibc
import Synchronization
import Testing
import VMM

/// A `MicroVMControl` that records what the API asked for, and can be told to fail.
final class RecordingControl: MicroVMControl {
    let calls = Mutex<[String]>([])
    let started = Mutex<MachineConfiguration?>(nil)
    let failStart: String?
    /// A client descriptor to look at when the server reports answers sent,
    /// and what was seen there each time: whether a byte was waiting.
    let watchedClient = Mutex<Int32>(-1)

    /// A load's overrides as the recorded call shows them ("" when none).
    static func describe(_ options: SnapshotLoadOptions) -> String {
        let backend: String
        switch options.memoryBackend {
        case .file(.mapped): backend = ""
        case .file(let paging): backend = " paging=\(paging.rawValue)"
        case .uffd: backend = " uffd"
        }
        return (options.vsockPath.map { " vsock=\($0)" } ?? "") + options.networkOverrides.map { " net=\($0.interfaceID):\($0.hostDeviceName)" }.joined() + (options.clockRealtime ? " realtime" : "") + (options.trackDirtyPages ? " track" : "") + backend
    }
    let bytesWaitingWhenSent = Mutex<[Bool]>([])

    init(failStart: String? = nil) { self.failStart = failStart }

    func start(_ configuration: MachineConfiguration) throws {
        calls.withLock { $0.append("start") }
        if let failStart { throw ConfigurationError(failStart) }
        started.withLock { $0 = configuration }
    }
    func pause() throws { calls.withLock { $0.append("pause") } }
    func resume() throws { calls.withLock { $0.append("resume") } }
    func sendCtrlAltDel() throws { calls.withLock { $0.append("ctrl-alt-del") } }
    func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType) throws {
        calls.withLock { $0.append("snapshot \(type.rawValue) \(statePath) \(memoryPath)") }
    }
    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions) throws -> MachineConfiguration {
        calls.withLock { $0.append("load \(statePath) \(memoryPath) \(resume)" + Self.describe(options)) }
        if let failStart { throw ConfigurationError(failStart) }
        return MachineConfiguration(kernelPath: "/restored/vmlinux", vcpuCount: 2, memorySize: 256 << 20)
    }
    func memoryRegions() throws -> [Machine.MemoryRegionInfo] {
        [.init(slot: 0, guestAddress: 0, size: 128 << 20, hostAddress: 0x7F00_0000_0000, fileOffset: 0, pageSize: 4096, backing: "anonymous", logsDirtyPages: true)]
    }
    func dirtyPages() throws -> Machine.DirtyPageReport {
        .init(tracking: "dirty_log", since: "snapshot", pageSize: 4096, regions: [(0, 128 << 20, [3..<5, 100..<101])])
    }
    func resetDirtyPages() throws { calls.withLock { $0.append("reset dirty") } }
    func dumpMemory(path: String, dirtyOnly: Bool) throws -> Machine.MemoryDump {
        calls.withLock { $0.append("dump \(path) \(dirtyOnly)") }
        return .init(size: 128 << 20, bytesWritten: 12_288)
    }
    func createLiveSnapshot(statePath: String, memoryPath: String) throws -> Machine.LiveSnapshotReport {
        calls.withLock { $0.append("live \(statePath) \(memoryPath)") }
        return .init(stateBytes: 11_000, memoryBytes: 128 << 20, memoryBytesWritten: 1 << 20, pause: .microseconds(2_500), faults: 7,
                     duration: .milliseconds(40))
    }
    func answersSent() {
        let client = watchedClient.withLock { $0 }
        guard client >= 0 else { return }
        var byte: UInt8 = 0
        let waiting = recv(client, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 1
        bytesWaitingWhenSent.withLock { $0.append(waiting) }
    }
}

/// A control that records PATCHes, and refuses them when told to.
final class PatchingControl: MicroVMControl {
    let calls = Mutex<[String]>([])
    let refuse = Mutex(false)
    func start(_ configuration: MachineConfiguration) throws {}
    func pause() throws {}
    func resume() throws {}
    func sendCtrlAltDel() throws {}
    func createSnapshot(statePath: String, memoryPath: String, type: SnapshotType) throws {}
    func loadSnapshot(statePath: String, memoryPath: String, resume: Bool, options: SnapshotLoadOptions) throws -> MachineConfiguration {
        throw ConfigurationError("no")
    }
    func updateDrive(id: String, path: String?, rateLimiter: RateLimiterConfiguration?) throws {
        if refuse.withLock({ $0 }) { throw ConfigurationError("cannot open the drive \(path ?? "")") }
        calls.withLock { $0.append("drive \(id) \(path ?? "-")" + (rateLimiter?.bandwidth.map { " bandwidth \($0.size)" } ?? "")) }
    }
    func updateNetworkInterface(id: String, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?) throws {
        calls.withLock { $0.append("interface \(id) rx \(receive != nil) tx \(transmit != nil)") }
    }
    func startBalloonHinting(acknowledgeOnStop: Bool) throws {
        if refuse.withLock({ $0 }) { throw ConfigurationError("free page hinting was not enabled") }
        calls.withLock { $0.append("hinting start \(acknowledgeOnStop)") }
    }
    func stopBalloonHinting() throws { calls.withLock { $0.append("hinting stop") } }
    func balloonHintingStatus() throws -> (host: UInt32, guest: UInt32?) { (2, calls.withLock { $0.count } > 1 ? 0 : nil) }
}

/// The routes of Firecracker's API over Kestrel's configuration, driven as
/// a Firecracker client drives them, without sockets.
@Suite(.timeLimit(.minutes(5))) struct FirecrackerAPITests {
    /// A readable file that stands for a kernel image, a disk and an initrd.
    static let file: String = {
        let path = "/tmp/kestrel-apitest-\(getpid()).img"
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = ftruncate(fd, 1 << 20)
        close(fd)
        return path
    }()

    static func request(_ method: String, _ path: String, _ body: String? = nil) -> HTTPRequest {
        HTTPRequest(method: method, path: path, headers: [("content-type", "application/json")], body: Array((body ?? "").utf8))
    }

    static func send(_ api: FirecrackerAPI, _ method: String, _ path: String, _ body: String? = nil) -> (Int, String) {
        let response = api.respond(to: request(method, path, body))
        return (response.status, String(decoding: response.body, as: UTF8.self))
    }

    static func fault(_ text: String) -> String {
        (try? JSONValue.parse(Array(text.utf8)))?.objectValue?["fault_message"]?.stringValue ?? "(not a fault body: \(text))"
    }

    @Test func aClientConfiguresAndStartsTheMachineTheFirecrackerWay() throws {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm-1", version: "0.1.0", control: control)
        #expect(Self.send(api, "GET", "/").1 == #"{"app_name":"Kestrel","id":"vm-1","state":"Not started","vmm_version":"0.1.0"}"#)
        #expect(Self.send(api, "GET", "/machine-config").1 == #"{"huge_pages":"None","mem_size_mib":128,"smt":false,"track_dirty_pages":false,"vcpu_count":1}"#)
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)", "boot_args": "console=ttyS0 reboot=k panic=1"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#).0 == 204)
        #expect(Self.send(api, "PATCH", "/machine-config", #"{"mem_size_mib": 512}"#).0 == 204)
        // GET gives the effective configuration: defaults filled in, not only what was put.
        #expect(Self.send(api, "GET", "/machine-config").1 == #"{"huge_pages":"None","mem_size_mib":512,"smt":false,"track_dirty_pages":false,"vcpu_count":2}"#)
        #expect(Self.send(api, "PATCH", "/machine-config", #"{"cpu_template": "conservative"}"#).0 == 204)
        #expect(Self.send(api, "GET", "/machine-config").1.contains(#""cpu_template":"conservative""#))
        #expect(Self.send(api, "PATCH", "/machine-config", #"{"cpu_template": "None"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(Self.file)", "is_root_device": true, "is_read_only": true}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/drives/scratch", #"{"drive_id": "scratch", "path_on_host": "\#(Self.file)", "is_root_device": false, "is_read_only": false}"#).0 == 204)
        // A second PUT of the same id replaces the drive, in its place.
        #expect(Self.send(api, "PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(Self.file)", "is_root_device": true, "is_read_only": false}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/vsock", #"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/entropy", "{}").0 == 204)
        let (status, text) = Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(status == 204, "\(text)")
        let started = try #require(control.started.withLock { $0 })
        #expect(started.vcpuCount == 2 && started.memorySize == 512 << 20 && started.kernelPath == Self.file)
        #expect(started.drives.map(\.id) == ["rootfs", "scratch"] && started.drives[0].isRoot && !started.drives[0].readOnly)
        #expect(started.vsock == VsockConfiguration(guestCID: 3, udsPath: "/tmp/v.sock") && started.entropy)
        #expect(api.vmState == .running)
        let configuration = try JSONValue.parse(Array(Self.send(api, "GET", "/vm/config").1.utf8))
        #expect(try MachineConfigFile.parse(configuration, source: "GET /vm/config").drives == started.drives)
    }

    @Test func preBootResourcesAreRefusedOnceRunningAndStateChangesOnlyThen() {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        #expect(Self.fault(Self.send(api, "PATCH", "/vm", #"{"state": "Paused"}"#).1).contains("before starting"))
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        let refused = Self.send(api, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#)
        #expect(refused.0 == 400 && Self.fault(refused.1) == "The requested operation is not supported after starting the microVM.")
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 400)
        #expect(Self.send(api, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        #expect(Self.send(api, "GET", "/").1.contains(#""state":"Paused""#))
        #expect(Self.send(api, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)   // already paused: nothing more to do
        #expect(Self.send(api, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
        #expect(Self.send(api, "PATCH", "/vm", #"{"state": "Frozen"}"#).0 == 400)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#).0 == 204)
        #expect(control.calls.withLock { $0 } == ["start", "pause", "resume", "ctrl-alt-del"])
    }

    /// PUT /cpu-config: a custom CPU template, checked when put (a bad one is
    /// a 400 naming the field and changes nothing), reaching the machine
    /// InstanceStart builds; refused once it runs.
    @Test func aCustomCPUTemplateIsPutCheckedAndStarted() throws {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        let bad = Self.send(api, "PUT", "/cpu-config", #"{"cpuid_modifiers": [{"leaf": "1", "modifiers": []}]}"#)
        #expect(bad.0 == 400 && Self.fault(bad.1).contains("leaf \"1\" is not a 32-bit number"), "\(bad)")
        let body = #"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#
        #expect(Self.send(api, "PUT", "/cpu-config", body).0 == 204)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        let started = try #require(control.started.withLock { $0 })
        #expect(started.customCPUTemplate?.cpuid.first?.registers.first?.filter.mask == 1 << 23)
        #expect(Self.send(api, "PUT", "/cpu-config", body).0 == 400)
    }

    /// Snapshots the Firecracker way: create only while paused, Full or
    /// Diff; load only on a fresh microVM, from a File backend, and then the
    /// API shows the restored configuration and state.
    @Test func snapshotsAreTakenWhenPausedAndLoadedOnlyIntoAFreshMicroVM() throws {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        let create = #"{"snapshot_type": "Full", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#
        let loads: [(String, String)] = [
            (#"{"snapshot_path": "/s"}"#, "exactly one of mem_backend and mem_file_path"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#, "exactly one"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Memfd", "backend_path": "/m"}}"#, "backend_type must be File or Uffd, not \"Memfd\""),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd"}}"#, "needs backend_type and backend_path"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u", "paging": "Prefault"}}"#, "paging is for the File backend"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "paging": "Lazy"}}"#,
             "paging must be one of Mapped, Eager, OnDemand, Prefault, not \"Lazy\""),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "paging": true}}"#, "paging must be one of"),
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m", "prefault": true}}"#, "mem_backend: unknown field prefault"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": "yes"}"#, "enable_diff_snapshots must be a boolean"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "track_dirty_pages": 1}"#, "track_dirty_pages must be a boolean"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": {"iface_id": "a", "host_dev_name": "t"}}"#, "network_overrides must be an array"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a"}]}"#, "each of network_overrides is"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": ""}]}"#, "each of network_overrides is"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t", "guest_mac": "x"}]}"#,
             "each of network_overrides is"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "bogus": 1}"#, "unknown field bogus"),
            // Firecracker 1.17's fields: known, and checked like the swagger.
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"path": "/v"}}"#, "vsock_override must be"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": "yes"}"#, "clock_realtime must be a boolean"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "2M"}"#, "hugetlbfs RAM"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "Transparent"}"#, "no transparent huge pages"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "1G"}"#, "must be one of Snapshot, None, Transparent, 2M"),
        ]
        for (body, expected) in loads {
            let (status, text) = Self.send(api, "PUT", "/snapshot/load", body)
            #expect(status == 400 && Self.fault(text).contains(expected), "\(body): \(status) \(text)")
        }
        // Something configured: a load would throw it away, so it is refused.
        let configured = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        #expect(Self.send(configured, "PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64}"#).0 == 204)
        let late = Self.send(configured, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(late.0 == 400 && Self.fault(late.1).contains("only allowed on a fresh microVM"), "\(late)")
        #expect(control.calls.withLock { $0 }.isEmpty, "no refused request reached the VMM")

        let load = Self.send(api, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": false, "vsock_override": {"uds_path": "/v.sock"}, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}], "clock_realtime": true, "huge_pages": "Snapshot", "track_dirty_pages": true}"#)
        #expect(load.0 == 204, "\(load)")
        #expect(control.calls.withLock { $0 } == ["load /s /m false vsock=/v.sock net=eth0:tap7 realtime track"])
        #expect(Self.send(api, "GET", "/").1.contains(#""state":"Paused""#))
        let configuration = Self.send(api, "GET", "/vm/config").1
        #expect(configuration.contains(#""kernel_image_path":"/restored/vmlinux""#) && configuration.contains(#""vcpu_count":2"#), "\(configuration)")
        let again = Self.send(api, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(again.0 == 400, "a second load: \(again)")
        // Every backend reaches the VMM as it was asked for.
        for (backend, recorded) in [(#"{"backend_type": "Uffd", "backend_path": "/u.sock"}"#, "load /s /u.sock true uffd"),
                                    (#"{"backend_type": "File", "backend_path": "/m", "paging": "Prefault"}"#, "load /s /m true paging=Prefault"),
                                    (#"{"backend_type": "File", "backend_path": "/m", "paging": "Mapped"}"#, "load /s /m true")] {
            let fresh = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
            let answer = Self.send(fresh, "PUT", "/snapshot/load", #"{"snapshot_path": "/s", "mem_backend": \#(backend), "resume_vm": true}"#)
            #expect(answer.0 == 204, "\(backend): \(answer)")
            #expect(control.calls.withLock { $0.popLast() } == recorded)
        }
        for type in [#""Incremental""#, "1", "null"] {
            let bad = Self.send(api, "PUT", "/snapshot/create", #"{"snapshot_type": \#(type), "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#)
            if type == "null" { continue }  // absent: Full
            #expect(bad.0 == 400 && Self.fault(bad.1).contains("snapshot_type must be \"Full\" or \"Diff\""), "\(type): \(bad)")
        }
        let diff = Self.send(api, "PUT", "/snapshot/create", #"{"snapshot_type": "Diff", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/d"}"#)
        #expect(diff.0 == 204, "\(diff)")
        #expect(Self.send(api, "PUT", "/snapshot/create", create).0 == 204)
        #expect(Self.send(api, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
        let running = Self.send(api, "PUT", "/snapshot/create", create)
        #expect(running.0 == 400 && Self.fault(running.1).contains("pause it first"), "\(running)")
        #expect(control.calls.withLock { $0 } == ["load /s /m false vsock=/v.sock net=eth0:tap7 realtime track", "snapshot Full /tmp/s /tmp/m",
                                                  "snapshot Diff /tmp/s /tmp/d", "snapshot Full /tmp/s /tmp/m", "resume"])
    }

    /// Kestrel's memory introspection routes under /kestrel/: refused by
    /// name before the start and for bad bodies, and answered with the
    /// regions, the dirty runs and the dump's figures after it.
    @Test func memoryIntrospectionRoutesAreCheckedAndAnswered() {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        let early = Self.send(api, "GET", "/kestrel/memory")
        #expect(early.0 == 400 && Self.fault(early.1).contains("has not started"), "\(early)")
        let earlyLive = Self.send(api, "PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
        #expect(earlyLive.0 == 400 && Self.fault(earlyLive.1).contains("before the microVM has started"), "\(earlyLive)")
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        let regions = Self.send(api, "GET", "/kestrel/memory")
        #expect(regions.0 == 200 && regions.1.contains(#""base_host_virt_addr":139637976727552"#) && regions.1.contains(#""backing":"anonymous""#)
                && regions.1.contains(#""total_bytes":134217728"#), "\(regions)")
        let dirty = Self.send(api, "GET", "/kestrel/memory/dirty")
        #expect(dirty.0 == 200 && dirty.1.contains(#""dirty_pages":3"#) && dirty.1.contains(#""runs":[[3,2],[100,1]]"#), "\(dirty)")
        #expect(Self.send(api, "PUT", "/kestrel/memory/dirty/reset").0 == 204)
        let dump = Self.send(api, "PUT", "/kestrel/memory/dump", #"{"mem_file_path": "/tmp/d.mem", "dirty_only": true}"#)
        #expect(dump.0 == 200 && dump.1.contains(#""bytes_written":12288"#), "\(dump)")
        let live = Self.send(api, "PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "/tmp/l.state", "mem_file_path": "/tmp/l.mem"}"#)
        #expect(live.0 == 200 && live.1.contains(#""pause_us":2500"#) && live.1.contains(#""faults":7"#) && live.1.contains(#""duration_us":40000"#), "\(live)")
        let bad: [(String, String, String?, String)] = [
            ("PUT", "/kestrel/memory/dump", #"{"dirty_only": true}"#, "mem_file_path is a required string"),
            ("PUT", "/kestrel/memory/dump", #"{"mem_file_path": "/m", "dirty_only": "yes"}"#, "dirty_only must be a boolean"),
            ("PUT", "/kestrel/memory/dump", #"{"mem_file_path": "/m", "compress": true}"#, "unknown field compress"),
            ("PUT", "/kestrel/memory/dump", #"[1]"#, "must be a JSON object"),
            ("GET", "/kestrel/memory/dirty", #"{}"#, "takes no body"),
            ("PUT", "/kestrel/memory", nil, "Invalid request method and/or path"),
            ("GET", "/kestrel/cpus", nil, "Invalid request method and/or path"),
            ("PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "/s"}"#, "snapshot_path and mem_file_path are required strings"),
            ("PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "/s", "mem_file_path": "/s"}"#, "must differ"),
            ("PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}"#, "unknown field snapshot_type"),
            ("GET", "/kestrel/snapshot/live", nil, "Invalid request method and/or path"),
        ]
        for (method, path, body, expected) in bad {
            let answer = Self.send(api, method, path, body)
            #expect(answer.0 == 400 && Self.fault(answer.1).contains(expected), "\(method) \(path): \(answer)")
        }
        #expect(control.calls.withLock { $0 } == ["start", "reset dirty", "dump /tmp/d.mem true", "live /tmp/l.state /tmp/l.mem"])
    }

    @Test func badRequestsAreRefusedByNameAndChangeNothing() {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        let before = api.fullConfiguration()
        let cases: [(String, String, String?, String)] = [
            ("PUT", "/machine-config", #"{"vcpu_count": 2}"#, "mem_size_mib"),
            ("PUT", "/machine-config", #"{"vcpu_count": "two", "mem_size_mib": 128}"#, "vcpu_count must be a whole number"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#, "huge_pages"),
            // 2^44 + 64 MiB wrapped to 64 MiB once (shifted into bytes unchecked).
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 17592186044480}"#, "mem_size_mib 17592186044480 is more than"),
            ("PATCH", "/machine-config", #"{"mem_size_mib": 1048577}"#, "more than Kestrel's maximum of 1048576"),
            ("PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 128}"#, "vcpu_count must be between 1 and 32, not 0"),
            ("PUT", "/machine-config", #"{"vcpu_count": -1, "mem_size_mib": 128}"#, "vcpu_count must be between 1 and 32, not -1"),
            ("PUT", "/machine-config", #"{"vcpu_count": 33, "mem_size_mib": 128}"#, "vcpu_count must be between 1 and 32, not 33"),
            ("PATCH", "/machine-config", #"{"vcpu_count": 1000}"#, "vcpu_count must be between 1 and 32, not 1000"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#,
             #"cpu_template "T2" is one of Firecracker's static templates, which Kestrel does not serve"#),
            ("PATCH", "/machine-config", #"{"cpu_template": "bogus"}"#, #"cpu_template "bogus" is unknown"#),
            ("PATCH", "/machine-config", "{}", "the body has no field to change"),
            ("PATCH", "/vm", "{}", "the body has no field to change"),
            ("PUT", "/boot-source", #"{"kernel_image_path": "/tmp/k\u0000x"}"#, "contains NUL"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "k\u0000": 1}"#, "contains NUL"),
            ("PUT", "/machine-config", "{not json", "not valid JSON"),
            ("PUT", "/machine-config", nil, "needs a JSON body"),
            ("PUT", "/drives/a", #"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#, "does not match"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1}}}"#,
             "rate_limiter.bandwidth.refill_time is required"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "rate_limiter": {"ops": {"size": -1, "refill_time": 1}}}"#,
             "rate_limiter.ops.size must be a whole number from 0 to 2^53"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 5, "refill_time": 0}}}"#,
             "refill_time must be at least 1 ms"),
            ("PATCH", "/drives/a", #"{"drive_id": "a", "path_on_host": "/x"}"#, "not supported before starting the microVM"),
            ("PATCH", "/drives/a", #"{"drive_id": "a", "is_read_only": true}"#, "drive.is_read_only is not supported"),
            ("PATCH", "/network-interfaces/eth0", #"{"iface_id": "eth0", "mtu": 1400}"#, "network interface.mtu is not supported"),
            ("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0"}"#, "host_dev_name"),
            ("PUT", "/balloon", #"{"amount_mib": 1}"#, "needs the field deflate_on_oom"),
            ("PUT", "/balloon", #"{"amount_mib": 1024, "deflate_on_oom": true}"#, "balloon.amount_mib 1024 is more than the guest's 128 MiB"),
            ("PATCH", "/balloon", #"{"amount_mib": 1}"#, "No balloon device configured"),
            ("PATCH", "/balloon/hinting/start", "{}", "No balloon device configured"),
            ("PUT", "/logger", #"{"log_path": "/nonexistent/l"}"#, "cannot open the log file /nonexistent/l"),
            ("PUT", "/logger", #"{"level": "Loud"}"#, #"level "Loud" is not one of"#),
            ("PUT", "/logger", #"{"show_level": "yes"}"#, "show_level must be true or false"),
            ("PUT", "/metrics", #"{"emit_id": true}"#, "metrics_path is required"),
            ("PUT", "/metrics", #"{"metrics_path": "/tmp/m", "extra": 1}"#, "metrics.extra is not supported"),
            ("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#, "the metrics system is not configured"),
            ("PUT", "/mmds/config", #"{"network_interfaces": ["eth9"]}"#, #"no network interface has the id "eth9""#),
            ("PUT", "/mmds/config", #"{"version": "V2"}"#, "needs the field network_interfaces"),
            ("PUT", "/mmds", #"["not", "an", "object"]"#, "the body must be a JSON object"),
            ("PATCH", "/mmds", #"{"a": 1}"#, "the MMDS data store is empty"),
            ("PUT", "/snapshot/create", #"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#, "before the microVM has started"),
            ("PUT", "/actions", #"{"action_type": "Reboot"}"#, "Unknown action_type"),
            ("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#, "not supported before starting"),
            ("DELETE", "/drives/a", nil, "Invalid request method and/or path: DELETE /drives/a."),
            ("GET", "/drives/a/b", nil, "Invalid request method and/or path"),
        ]
        for (method, path, body, expected) in cases {
            let (status, text) = Self.send(api, method, path, body)
            #expect(status == 400 && Self.fault(text).contains(expected), "\(method) \(path): \(status) \(text)")
        }
        #expect(api.fullConfiguration() == before)
        // A kernel that is not there is refused when it is put (as Firecracker
        // opens it then), and InstanceStart without a boot source is a 400: nothing starts.
        let kernel = Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "/nonexistent/vmlinux"}"#)
        #expect(kernel.0 == 400 && Self.fault(kernel.1).contains("cannot read the kernel /nonexistent/vmlinux"), "\(kernel)")
        #expect(Self.fault(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).1).contains("boot-source"))
        #expect(control.calls.withLock { $0 }.isEmpty && api.vmState == .notStarted)
    }

    /// `/mmds` at any time, `/mmds/config` checked against the interfaces,
    /// `/logger` and `/metrics` once and before boot, FlushMetrics writing
    /// a line with the API's counts as changes since the last.
    @Test func metadataLoggerAndMetricsAreServed() throws {
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "obs-1", version: "1.16.0+kestrel.0.2.0", control: control)
        let directory = "/tmp/kestrel-apitest-obs-\(getpid())"
        mkdir(directory, 0o700)
        defer { for name in ["log", "metrics"] { unlink(directory + "/" + name) }; rmdir(directory) }
        #expect(Self.send(api, "GET", "/mmds") == (200, "{}"))
        #expect(Self.send(api, "PUT", "/mmds", #"{"latest": {"meta-data": {"id": "i-1", "gone": "x"}}}"#).0 == 204)
        #expect(Self.send(api, "PATCH", "/mmds", #"{"latest": {"meta-data": {"gone": null, "new": "y"}}}"#).0 == 204)
        #expect(Self.send(api, "GET", "/mmds") == (200, #"{"latest":{"meta-data":{"id":"i-1","new":"y"}}}"#))
        #expect(Self.send(api, "PUT", "/logger", #"{"log_path": "\#(directory)/log", "level": "Warning", "show_level": true}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/metrics", #"{"metrics_path": "\#(directory)/metrics", "emit_id": true, "properties": {"team": "k"}}"#).0 == 204)
        let again = Self.send(api, "PUT", "/metrics", #"{"metrics_path": "\#(directory)/metrics"}"#)
        #expect(again.0 == 400 && Self.fault(again.1).contains("cannot be configured again"), "\(again)")
        #expect(Self.send(api, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "lo"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.170.2"}"#).0 == 204)
        let badAddress = Self.send(api, "PUT", "/mmds/config", #"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#)
        #expect(badAddress.0 == 400 && Self.fault(badAddress.1).contains("is not in 169.254.1.0 to 169.254.254.255"), "\(badAddress)")
        #expect(api.fullConfiguration().objectValue?["mmds-config"]?.objectValue?["version"] == .string("V2"))
        api.metrics.addSource { api.metricGroups() }
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "FlushMetrics"}"#).0 == 204)
        let lines = try String(decoding: Self.readAll(directory + "/metrics"), as: UTF8.self).split(separator: "\n")
        try #require(lines.count == 2)
        let first = try #require(try JSONValue.parse(Array(lines[0].utf8)).objectValue)
        let second = try #require(try JSONValue.parse(Array(lines[1].utf8)).objectValue)
        #expect(first["id"] == .string("obs-1") && first["properties"] == .object(["team": .string("k")]))
        #expect(lines[0].hasPrefix(#"{"utc_timestamp_ms":"#) && lines[0].contains(#","id":"obs-1","properties":{"team":"k"},"#))
        let puts = first["put_api_requests"]?.objectValue
        #expect(puts?["mmds_count"] == .number(3) && puts?["mmds_fails"] == .number(1) && puts?["metrics_count"] == .number(2) && puts?["metrics_fails"] == .number(1), "\(lines[0])")
        #expect(first["patch_api_requests"]?.objectValue?["mmds_count"] == .number(1) && first["get_api_requests"]?.objectValue?["mmds_count"] == .number(2))
        // The second line counts only what came after the first: one FlushMetrics.
        #expect(second["put_api_requests"]?.objectValue?["actions_count"] == .number(1) && second["put_api_requests"]?.objectValue?["mmds_count"] == .number(0))
        // Warning and up reach the log: the refused second /metrics, not the accepted requests.
        let log = String(decoding: try Self.readAll(directory + "/log"), as: UTF8.self)
        #expect(log.contains("[obs-1:") && log.contains(":ERROR] Received Error. Status code: 400.") && !log.contains("received a PUT"), "\(log)")
        // After the start, /logger and /metrics are refused; /mmds is still served.
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "lo"}"#).0 == 204)
        _ = Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(Self.send(api, "PUT", "/logger", #"{"level": "Info"}"#).0 == 400)
        #expect(Self.send(api, "PUT", "/mmds", #"{"after": "boot"}"#).0 == 204)
    }

    /// Free page hinting's three routes, as the swagger has them: PATCH start
    /// (an optional body, acknowledge_on_stop true by default) and stop, GET
    /// status; only once the machine runs, and bodies checked.
    @Test func balloonHintingIsStartedStoppedAndReported() throws {
        let control = PatchingControl()
        let api = FirecrackerAPI(instanceID: "hint", version: "v", control: control)
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/balloon", #"{"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}"#).0 == 204)
        let early = Self.send(api, "PATCH", "/balloon/hinting/start", nil)
        #expect(early.0 == 400 && Self.fault(early.1).contains("not supported before starting the microVM"), "\(early)")
        #expect(Self.send(api, "GET", "/balloon", nil).1.contains(#""free_page_hinting":true"#))
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(Self.send(api, "PATCH", "/balloon/hinting/start", nil).0 == 204)
        #expect(Self.send(api, "GET", "/balloon/hinting/status", nil) == (200, #"{"host_cmd":2}"#))
        #expect(Self.send(api, "PATCH", "/balloon/hinting/start", #"{"acknowledge_on_stop": false}"#).0 == 204)
        #expect(Self.send(api, "PATCH", "/balloon/hinting/stop", "{}").0 == 204)
        #expect(Self.send(api, "GET", "/balloon/hinting/status", nil) == (200, #"{"guest_cmd":0,"host_cmd":2}"#))
        #expect(control.calls.withLock { $0 } == ["hinting start true", "hinting start false", "hinting stop"])
        for (method, path, body, expected) in [
            ("PATCH", "/balloon/hinting/start", #"{"acknowledge_on_stop": "yes"}"#, "acknowledge_on_stop must be true or false"),
            ("PATCH", "/balloon/hinting/start", #"{"ack": true}"#, #"unknown field "ack""#),
            ("PATCH", "/balloon/hinting/start", "[true]", "the body must be a JSON object"),
            ("PATCH", "/balloon/hinting/stop", #"{"acknowledge_on_stop": true}"#, #"unknown field "acknowledge_on_stop""#),
            ("POST", "/balloon/hinting/start", nil, "Invalid request method and/or path"),
            ("GET", "/balloon/hinting/start", nil, "Invalid request method and/or path"),
            ("PATCH", "/balloon/hinting/status", nil, "Invalid request method and/or path"),
            ("GET", "/balloon/hinting", nil, "Invalid request method and/or path"),
            ("GET", "/balloon/hinting/status/x", nil, "Invalid request method and/or path"),
        ] as [(String, String, String?, String)] {
            let (status, text) = Self.send(api, method, path, body)
            #expect(status == 400 && Self.fault(text).contains(expected), "\(method) \(path): \(status) \(text)")
        }
        control.refuse.withLock { $0 = true }
        let refused = Self.send(api, "PATCH", "/balloon/hinting/start", nil)
        #expect(refused.0 == 400 && Self.fault(refused.1).contains("free page hinting was not enabled"), "\(refused)")
        #expect(control.calls.withLock { $0 }.count == 3)
    }

    /// PATCH after the start: the control is asked, the configuration shows
    /// the change (limiter buckets merged), and a refusal changes nothing.
    @Test func drivesAndInterfacesArePatchedAfterTheStart() throws {
        let control = PatchingControl()
        let api = FirecrackerAPI(instanceID: "patch", version: "v", control: control)
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(Self.file)", "is_root_device": false, "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "lo"}"#).0 == 204)
        #expect(Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        let patched = Self.send(api, "PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/tmp/new.img", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}"#)
        #expect(patched.0 == 204, "\(patched)")
        #expect(control.calls.withLock { $0 } == ["drive data /tmp/new.img bandwidth 1048576"])
        let drive = api.fullConfiguration().objectValue?["drives"]?.rendered ?? ""
        #expect(drive.contains(#""path_on_host":"/tmp/new.img""#) && drive.contains(#""ops":{"refill_time":1000,"size":10}"#)
                && drive.contains(#""bandwidth":{"one_time_burst":0,"refill_time":1000,"size":1048576}"#), "\(drive)")
        #expect(Self.send(api, "PATCH", "/network-interfaces/eth0", #"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 100}}}"#).0 == 204)
        #expect(control.calls.withLock { $0 }.last == "interface eth0 rx true tx false")
        let unknown = Self.send(api, "PATCH", "/drives/other", #"{"drive_id": "other", "path_on_host": "/tmp/x"}"#)
        #expect(unknown.0 == 400 && Self.fault(unknown.1).contains(#"no drive has the id "other""#), "\(unknown)")
        control.refuse.withLock { $0 = true }
        let before = api.fullConfiguration()
        let refused = Self.send(api, "PATCH", "/drives/data", #"{"drive_id": "data", "path_on_host": "/nonexistent"}"#)
        #expect(refused.0 == 400 && Self.fault(refused.1).contains("cannot open"), "\(refused)")
        #expect(api.fullConfiguration() == before)
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ConfigurationError("cannot open \(path)") }
        defer { close(fd) }
        var bytes: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { return bytes }
            bytes += buffer[0..<count]
        }
    }

    /// A FIFO as kernel, initrd or drive passes access(2), and its open at
    /// InstanceStart would block the API thread: it is refused when it is put.
    @Test(.timeLimit(.minutes(1))) func aFIFOIsRefusedWhenItIsPut() throws {
        let fifo = "/tmp/kestrel-apitest-\(getpid()).fifo"
        unlink(fifo)
        try #require(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let control = RecordingControl()
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control)
        let kernel = Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(fifo)"}"#)
        #expect(kernel.0 == 400 && Self.fault(kernel.1) == "the kernel \(fifo) is a FIFO, not a regular file", "\(kernel)")
        let initrd = Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)", "initrd_path": "\#(fifo)"}"#)
        #expect(initrd.0 == 400 && Self.fault(initrd.1) == "the initrd \(fifo) is a FIFO, not a regular file", "\(initrd)")
        let drive = Self.send(api, "PUT", "/drives/root", #"{"drive_id": "root", "path_on_host": "\#(fifo)", "is_root_device": true}"#)
        #expect(drive.0 == 400 && Self.fault(drive.1) == "drive root: \(fifo) is a FIFO, not a regular file", "\(drive)")
        #expect(api.fullConfiguration() == FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: control).fullConfiguration())
    }

    @Test func aStartTheVMMRefusesIsA400AndTheAPIStaysPreBoot() {
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: RecordingControl(failStart: "KVM_CREATE_VM: EINVAL"))
        #expect(Self.send(api, "PUT", "/boot-source", #"{"kernel_image_path": "\#(Self.file)"}"#).0 == 204)
        let (status, text) = Self.send(api, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        #expect(status == 400 && Self.fault(text) == "Cannot start the microVM: KVM_CREATE_VM: EINVAL")
        #expect(api.vmState == .notStarted)
        #expect(Self.send(api, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).0 == 204)
    }

    @Test func aMachineStartedFromAFileShowsItsConfiguration() throws {
        var configuration = MachineConfiguration(kernelPath: Self.file, initrdPath: Self.file, vcpuCount: 2, memorySize: 192 << 20)
        configuration.drives = [DriveConfiguration(id: "root", path: Self.file, readOnly: true, isRoot: true, partUUID: "1234-01")]
        configuration.networkInterfaces = [NetworkInterfaceConfiguration(id: "eth0", tapName: "tap0", guestMAC: "06:00:ac:10:00:02")]
        configuration.vsock = VsockConfiguration(guestCID: 7, udsPath: "/tmp/v.sock")
        configuration.entropy = true
        configuration.memoryBackend = .guestMemfd
        let document = MachineConfigFile.document(for: configuration)
        let api = FirecrackerAPI(instanceID: "vm", version: "0.1.0", control: RecordingControl(), running: document)
        #expect(api.vmState == .running)
        let shown = try JSONValue.parse(Array(Self.send(api, "GET", "/vm/config").1.utf8))
        let back = try MachineConfigFile.parse(shown, source: "GET /vm/config")
        #expect(back.kernelPath == configuration.kernelPath && back.initrdPath == configuration.initrdPath)
        #expect(back.commandLine == configuration.commandLine && back.vcpuCount == 2 && back.memorySize == 192 << 20)
        #expect(back.drives == configuration.drives && back.networkInterfaces == configuration.networkInterfaces)
        #expect(back.vsock == configuration.vsock && back.entropy && back.memoryBackend == .guestMemfd)
    }

    @Test func jsonRendersEscapedAndInKeyOrder() throws {
        let value = JSONValue.object(["b": .array([.number(1), .number(2.5), .null, .bool(true)]), "a": .string("q\"\\\n\u{1}é")])
        #expect(value.rendered == #"{"a":"q\"\\\n\u0001é","b":[1,2.5,null,true]}"#)
        #expect(try JSONValue.parse(Array(value.rendered.utf8)) == value)
    }
}
