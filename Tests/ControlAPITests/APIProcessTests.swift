import Glibc
import Lab
import Testing
import VMM

/// `kestrel run --api-sock` as a process on this machine's KVM, driven by
/// curl and by firecracker-python (a client written for Firecracker, run
/// unchanged). The guest is a crafted vmlinux whose 64-bit entry prints a
/// line to COM1 about seven times a second here, so that a pause shows: the
/// lines stop while paused and come again after a resume.
@Suite(.serialized, .timeLimit(.minutes(5))) struct APIProcessTests {
    /// The `kestrel` executable built beside this test bundle.
    static func kestrel() throws -> String {
        guard let path = LabExecutable.builtBesideThisProcess() else {
            throw LabError("no kestrel executable beside the test bundle: run `swift build` first")
        }
        return path
    }

    static func tickerKernel() -> [UInt8] { CraftedGuest.ticker() }
    static func counterKernel() -> [UInt8] { CraftedGuest.counter() }

    /// Whether `text` is the counter's lines 0, 1, 2, ... with nothing
    /// missing or repeated (the last line may be cut short); returns the
    /// number of whole lines, or nil with the first break.
    static func unbrokenCount(_ text: String) -> Result<Int, LabError> {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() {
            let last = index == lines.count - 1
            let expected = String(format8: UInt32(index))
            if last ? !expected.hasPrefix(line) : line != expected {
                return .failure(LabError("line \(index) is \"\(line)\", not \"\(expected)\""))
            }
        }
        return .success(lines.count - 1)
    }

    /// The exit status, or nil (after SIGKILL) when the process outlives `seconds`.
    static func exitStatus(_ process: HostProcess, within seconds: Double) -> Int32? {
        var status: Int32?
        _ = waitFor(seconds) { status = process.poll(); return status != nil }
        if status == nil { process.signal(SIGKILL); _ = process.wait() }
        return status
    }

    /// The firecracker-python venv's interpreter and scripts/firecracker-client.py.
    static func firecrackerClient() throws -> (python: String, script: String) {
        let home = String(cString: getenv("HOME"))
        let python = (getenv("XDG_CACHE_HOME").map { String(cString: $0) } ?? home + "/.cache") + "/kestrel/firecracker-python/bin/python"
        try #require(access(python, X_OK) == 0, "no firecracker-python venv at \(python): run scripts/prepare-host test")
        var script = #filePath
        for _ in 0..<3 { script = String(script[..<script.lastIndex(of: "/")!]) }
        return (python, script + "/scripts/firecracker-client.py")
    }

    static func requireKVM() -> Bool { access("/dev/kvm", R_OK | W_OK) == 0 }

    static func lines(_ path: String) -> Int { ((try? readText(path)) ?? "").split(separator: "\n").count }

    static func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < end {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// curl --unix-socket; returns the status and the body.
    static func curl(_ socket: String, _ method: String, _ path: String, _ body: String? = nil) throws -> (Int, String) {
        var arguments = ["curl", "-s", "-S", "--max-time", "20", "--unix-socket", socket, "-X", method, "-w", "\n%{http_code}", "http://localhost" + path]
        if let body { arguments += ["-H", "Content-Type: application/json", "-d", body] }
        let result = try HostProcess.output(arguments)
        let parts = result.output.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(parts.last ?? "") ?? -1, parts.dropLast().joined(separator: "\n"))
    }

    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm")) func curlConfiguresStartsPausesAndResumesTheGuest() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-api")
        let kernel = directory.path + "/ticker.elf", socket = directory.path + "/api.sock", out = directory.path + "/out"
        try writeFileAtomically(Self.tickerKernel(), to: kernel)
        let start = ContinuousClock.now
        let process = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket, "--id", "curl-test"],
                                            stdout: .file(out), stderr: .file(directory.path + "/err"))
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 }, "the API socket never appeared")
        print("exec to API socket: \(ContinuousClock.now - start) (a debug build, polled every 20 ms)")
        #expect(try Self.curl(socket, "GET", "/") == (200, #"{"app_name":"Kestrel","id":"curl-test","state":"Not started","vmm_version":"1.16.0+kestrel.0.2.0"}"#))
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)", "boot_args": "console=ttyS0"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).0 == 204)
        let missing = try Self.curl(socket, "PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "no-such-tap0"}"#)
        #expect(missing.0 == 400 && missing.1.contains("tap no-such-tap0 does not exist"), "\(missing)")
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(Self.waitFor(20) { Self.lines(out) >= 3 }, "the guest printed \(Self.lines(out)) lines")
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        #expect(try Self.curl(socket, "GET", "/").1.contains(#""state":"Paused""#))
        let atPause = Self.lines(out)
        // A bad request while paused changes nothing.
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "/x"}"#).0 == 400)
        #expect(try Self.curl(socket, "GET", "/nowhere").0 == 400)
        usleep(1_000_000)
        #expect(Self.lines(out) == atPause, "the guest printed while paused")
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
        #expect(Self.waitFor(20) { Self.lines(out) >= atPause + 3 }, "the guest did not go on after the resume: \(Self.lines(out)) lines")
        let configuration = try Self.curl(socket, "GET", "/vm/config")
        #expect(configuration.0 == 200 && configuration.1.contains(#""mem_size_mib":64"#), "\(configuration)")
        process.signal(SIGTERM)
        #expect(Self.exitStatus(process, within: 10) == 128 + SIGTERM, "SIGTERM did not end kestrel")
        withExtendedLifetime(directory) {}
        #expect(access(socket, F_OK) != 0, "the socket file outlived Kestrel")
    }

    /// `kestrel run --api-sock` reads Firecracker's launch options without
    /// ArgumentParser (main.swift); a line it does not take plainly still gets
    /// ArgumentParser's messages and exit status.
    @Test func theShortLaunchPathKeepsTheUsualMessages() throws {
        let kestrel = try Self.kestrel()
        let missing = try HostProcess.output([kestrel, "run", "--api-sock", "/tmp/kestrel-never.sock", "--id"])
        #expect(missing.status == 64 && missing.errors.contains("Missing value for '--id <id>'"), "\(missing)")
        let unknown = try HostProcess.output([kestrel, "run", "--api-sock", "/tmp/kestrel-never.sock", "--bogus"])
        #expect(unknown.status == 64 && unknown.errors.contains("Unknown option '--bogus'"), "\(unknown)")
        let help = try HostProcess.output([kestrel, "run", "--api-sock", "/tmp/kestrel-never.sock", "--help"])
        #expect(help.status == 0 && help.output.contains("USAGE: kestrel run"), "\(help.output.prefix(300))")
        let contradiction = try HostProcess.output([kestrel, "run", "--api-sock", "/tmp/kestrel-never.sock", "--no-api"])
        #expect(contradiction.status != 0 && contradiction.errors.contains("contradict"), "\(contradiction)")
        #expect(access("/tmp/kestrel-never.sock", F_OK) != 0, "no socket was made")
    }

    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm")) func firecrackerPythonDrivesKestrelUnchanged() throws {
        let (python, script) = try Self.firecrackerClient()
        let directory = try TemporaryDirectory(prefix: "kestrel-fcpy")
        // The socket's path is all lower case: the client puts it in a URL's host
        // part, which requests lower-cases (mkdtemp's names have capitals).
        let kernel = directory.path + "/ticker.elf", socket = "/tmp/kestrel-fcpy-\(getpid()).sock", out = directory.path + "/out"
        try writeFileAtomically(Self.tickerKernel(), to: kernel)
        let vmm = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(directory.path + "/err"))
        defer { if vmm.poll() == nil { vmm.signal(SIGKILL); _ = vmm.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        var pipe: [Int32] = [0, 0]
        try #require(Glibc.pipe(&pipe) == 0)
        let client = try HostProcess.start([python, script, socket, kernel], stdin: .descriptor(pipe[0]), stdout: .file(directory.path + "/client"),
                                           stderr: .file(directory.path + "/client-err"))
        close(pipe[0])
        let clientOut = directory.path + "/client"
        #expect(Self.waitFor(30) { ((try? readText(clientOut)) ?? "").contains("paused ") },
                "\((try? readText(clientOut)) ?? "")\nkestrel: \((try? readText(directory.path + "/err")) ?? "")")
        let atPause = Self.lines(out)
        usleep(700_000)
        #expect(Self.lines(out) == atPause, "the guest printed while paused")
        _ = write(pipe[1], "\n", 1)
        close(pipe[1])
        #expect(Self.exitStatus(client, within: 60) == 0, "\((try? readText(directory.path + "/client-err")) ?? "")")
        let text = try readText(clientOut)
        func result(_ step: String) -> String {
            text.split(separator: "\n").first { $0.hasPrefix(step + " ") }.map { String($0.dropFirst(step.count + 1)) } ?? "(no \(step) line)"
        }
        #expect(result("describe").contains(#""state":"Not started""#), "\(text)")
        #expect(result("boot") == "ok" && result("machine") == "ok" && result("start") == "ok", "\(text)")
        #expect(result("bad-drive").hasPrefix("fault ") && result("bad-drive").contains("/nonexistent.img does not exist"), "\(text)")
        // The logger, metrics and MMDS store, as the client set them up.
        #expect(result("logger") == "ok" && result("metrics") == "ok" && result("mmds") == "ok" && result("flush") == "ok", "\(text)")
        #expect(result("mmds-patch") == "ok" && result("mmds-get").contains(#""instance-id":"i-kestrel","note":"patched""#), "\(text)")
        let log = (try? readText(socket + ".log")) ?? ""
        #expect(log.contains(":INFO] The API server received a PUT request on \"/actions\".") && log.contains("[anonymous-instance:api:"), "\(log)")
        let metricLines = ((try? readText(socket + ".metrics")) ?? "").split(separator: "\n")
        let flushed = metricLines.first.flatMap { try? JSONValue.parse(Array($0.utf8)) }?.objectValue
        #expect(metricLines.count == 1 && flushed?["utc_timestamp_ms"]?.wholeNumber != nil, "\(metricLines)")
        #expect(flushed?["put_api_requests"]?.objectValue?["actions_count"] == .number(2), "InstanceStart and FlushMetrics: \(metricLines)")
        #expect(flushed?["get_api_requests"]?.objectValue?["mmds_count"] == .number(1), "\(metricLines)")
        unlink(socket + ".log")
        unlink(socket + ".metrics")
        #expect(result("running").contains(#""state":"Running""#) && result("paused").contains(#""state":"Paused""#), "\(text)")
        #expect(result("late-machine").contains("not supported after starting"), "\(text)")
        #expect(result("resume") == "ok" && result("config").contains(#""vcpu_count":1"#) && result("version").contains("firecracker_version"), "\(text)")
        #expect(Self.waitFor(20) { Self.lines(out) >= atPause + 3 }, "the guest did not go on after the resume")
        vmm.signal(SIGHUP)
        #expect(Self.exitStatus(vmm, within: 10) == 128 + SIGHUP, "SIGHUP (flintlock's stop) did not end kestrel")
        #expect(access(socket, F_OK) != 0, "the socket file outlived Kestrel")
        withExtendedLifetime(directory) {}
    }

    /// A full snapshot through the API, restored in a new process: pause the
    /// counter guest, snapshot it, SIGKILL the VMM, then in a fresh `kestrel
    /// run --api-sock` load the snapshot (after refusing a corrupt, a
    /// truncated and another version's state file, and a short memory
    /// file). The count goes on where it stopped, mid-line or not, and the
    /// new process maps the memory file rather than reading it.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm")) func aSnapshotOfAPausedGuestRestoresInANewProcess() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-snap")
        let kernel = directory.path + "/counter.elf", state = directory.path + "/vm.state", memory = directory.path + "/vm.mem"
        try writeFileAtomically(Self.counterKernel(), to: kernel)
        let socket = directory.path + "/a.sock", out = directory.path + "/out-a"
        let first = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(directory.path + "/err-a"))
        defer { if first.poll() == nil { first.signal(SIGKILL); _ = first.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(Self.waitFor(20) { Self.lines(out) >= 4 }, "the guest printed \(Self.lines(out)) lines")
        let create = #"{"snapshot_type": "Full", "snapshot_path": "\#(state)", "mem_file_path": "\#(memory)"}"#
        let running = try Self.curl(socket, "PUT", "/snapshot/create", create)
        #expect(running.0 == 400 && running.1.contains("pause it first"), "\(running)")
        let pauseStart = ContinuousClock.now
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        let pauseTook = ContinuousClock.now - pauseStart
        let createStart = ContinuousClock.now
        let created = try Self.curl(socket, "PUT", "/snapshot/create", create)
        let createTook = ContinuousClock.now - createStart
        #expect(created.0 == 204, "\(created) \((try? readText(directory.path + "/err-a")) ?? "")")
        usleep(300_000)
        first.signal(SIGKILL)
        _ = first.wait()
        let before = try readText(out)
        let counted = try Self.unbrokenCount(before).get()
        var status = stat()
        #expect(stat(memory, &status) == 0 && status.st_size == 128 << 20, "the memory file holds all 128 MiB (apparent size)")
        print("snapshot: pause \(pauseTook), create \(createTook) (curl round trips, debug build), state \(((try? readBytes(state)) ?? []).count) bytes, "
            + "memory \(status.st_size >> 20) MiB apparent, \((status.st_blocks * 512) >> 10) KiB on disk; \(counted) lines before the kill")

        // Bad files first, in the same fresh process: each is a 400 and nothing starts.
        let good = try readBytes(state)
        var flipped = good
        flipped[good.count / 2] ^= 0x01
        var version = good
        version[8] = 9
        let bad = [("flipped", flipped, "CRC-32"), ("truncated", Array(good.prefix(good.count - 100)), "CRC-32"), ("version", version, "format version 9")]
        for (name, bytes, _) in bad { try writeFileAtomically(bytes, to: directory.path + "/" + name) }
        let shortMemory = directory.path + "/short.mem"
        _ = try HostProcess.output(["sh", "-c", "head -c 1048576 \(memory) > \(shortMemory)"])

        let socketB = directory.path + "/b.sock", outB = directory.path + "/out-b"
        let restoreStart = ContinuousClock.now
        let second = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socketB], stdout: .file(outB), stderr: .file(directory.path + "/err-b"))
        defer { if second.poll() == nil { second.signal(SIGKILL); _ = second.wait() } }
        #expect(Self.waitFor(10) { access(socketB, F_OK) == 0 })
        func load(_ statePath: String, _ memoryPath: String, resume: Bool = true) throws -> (Int, String) {
            try Self.curl(socketB, "PUT", "/snapshot/load",
                          #"{"snapshot_path": "\#(statePath)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memoryPath)"}, "resume_vm": \#(resume)}"#)
        }
        for (name, _, expected) in bad {
            let answer = try load(directory.path + "/" + name, memory)
            #expect(answer.0 == 400 && answer.1.contains(expected), "\(name): \(answer)")
        }
        let short = try load(state, shortMemory)
        #expect(short.0 == 400 && short.1.contains("has 1048576 bytes"), "\(short)")
        #expect(try Self.curl(socketB, "GET", "/").1.contains(#""state":"Not started""#))
        let loadStart = ContinuousClock.now
        let loaded = try load(state, memory, resume: false)
        let loadTook = ContinuousClock.now - loadStart
        #expect(loaded.0 == 204, "\(loaded) \((try? readText(directory.path + "/err-b")) ?? "")")
        // resume_vm false: it waits paused, printing nothing, until PATCH /vm.
        #expect(try Self.curl(socketB, "GET", "/").1.contains(#""state":"Paused""#))
        usleep(600_000)
        #expect(Self.lines(outB) == 0 && ((try? readText(outB)) ?? "").isEmpty, "the restored guest ran before the resume")
        #expect(try Self.curl(socketB, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
        #expect(try Self.curl(socketB, "GET", "/").1.contains(#""state":"Running""#))
        #expect(try Self.curl(socketB, "GET", "/vm/config").1.contains(#""mem_size_mib":128"#))
        let maps = (try? readText("/proc/\(second.process)/maps")) ?? ""
        #expect(maps.contains(memory), "the restored guest's RAM is a mapping of the memory file")
        #expect(Self.waitFor(20) { Self.lines(outB) >= 4 }, "the restored guest printed \(Self.lines(outB)) lines")
        print("restore: \(ContinuousClock.now - restoreStart) from exec to 4 lines; PUT /snapshot/load answered in \(loadTook) (debug build, 4 bad loads first)")
        second.signal(SIGTERM)
        #expect(Self.exitStatus(second, within: 10) == 128 + SIGTERM)
        let after = try readText(outB)
        switch Self.unbrokenCount(before + after) {
        case .success(let total): #expect(total > counted + 3, "the count went on: \(counted) lines, then \(total)")
        case .failure(let error): Issue.record("the count broke at the restore: \(error)\nbefore: \(before.suffix(40))\nafter: \(after.prefix(40))")
        }
        withExtendedLifetime(directory) {}
    }
}

extension APIProcessTests {
    /// firecracker-python (unchanged) through a snapshot: it boots the counter
    /// guest, is refused a snapshot while running, pauses, snapshots; the VMM
    /// is SIGKILLed; in a fresh VMM it loads the snapshot and resumes, and the
    /// count goes on unbroken; SIGTERM shuts the restored VMM down.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm")) func firecrackerPythonSnapshotsAndRestoresUnchanged() throws {
        let (python, script) = try Self.firecrackerClient()
        let directory = try TemporaryDirectory(prefix: "kestrel-fcsnap")
        let kernel = directory.path + "/counter.elf", state = directory.path + "/vm.state", memory = directory.path + "/vm.mem"
        try writeFileAtomically(Self.counterKernel(), to: kernel)
        // Lower-case socket paths: the client puts them in a URL's host part.
        let socketA = "/tmp/kestrel-fcsnap-a-\(getpid()).sock", socketB = "/tmp/kestrel-fcsnap-b-\(getpid()).sock"
        let outA = directory.path + "/out-a", outB = directory.path + "/out-b"
        let first = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socketA], stdout: .file(outA), stderr: .file(directory.path + "/err-a"))
        defer { if first.poll() == nil { first.signal(SIGKILL); _ = first.wait() } }
        #expect(Self.waitFor(10) { access(socketA, F_OK) == 0 })
        var pipe: [Int32] = [0, 0]
        try #require(Glibc.pipe(&pipe) == 0)
        let client = try HostProcess.start([python, script, socketA, kernel, "snapshot", state, memory], stdin: .descriptor(pipe[0]),
                                           stdout: .file(directory.path + "/client-a"), stderr: .file(directory.path + "/client-a-err"))
        close(pipe[0])
        #expect(Self.waitFor(20) { Self.lines(outA) >= 3 }, "the guest printed \(Self.lines(outA)) lines")
        _ = write(pipe[1], "\n", 1)
        close(pipe[1])
        #expect(Self.exitStatus(client, within: 60) == 0, "\((try? readText(directory.path + "/client-a-err")) ?? "")")
        first.signal(SIGKILL)
        _ = first.wait()
        let created = try readText(directory.path + "/client-a")
        func result(_ text: String, _ step: String) -> String {
            text.split(separator: "\n").first { $0.hasPrefix(step + " ") }.map { String($0.dropFirst(step.count + 1)) } ?? "(no \(step) line)"
        }
        #expect(result(created, "start") == "ok" && result(created, "pause") == "ok" && result(created, "snapshot") == "ok", "\(created)")
        #expect(result(created, "running-snapshot").hasPrefix("fault ") && result(created, "running-snapshot").contains("pause it first"), "\(created)")

        let second = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socketB], stdout: .file(outB), stderr: .file(directory.path + "/err-b"))
        defer { if second.poll() == nil { second.signal(SIGKILL); _ = second.wait() } }
        #expect(Self.waitFor(10) { access(socketB, F_OK) == 0 })
        let loader = try HostProcess.start([python, script, socketB, "-", "load", state, memory],
                                           stdout: .file(directory.path + "/client-b"), stderr: .file(directory.path + "/client-b-err"))
        #expect(Self.exitStatus(loader, within: 60) == 0, "\((try? readText(directory.path + "/client-b-err")) ?? "")")
        let loaded = try readText(directory.path + "/client-b")
        #expect(result(loaded, "fresh").contains(#""state":"Not started""#) && result(loaded, "load") == "ok", "\(loaded)")
        #expect(result(loaded, "restored").contains(#""state":"Running""#) && result(loaded, "config").contains(#""mem_size_mib":64"#), "\(loaded)")
        #expect(Self.waitFor(20) { Self.lines(outB) >= 3 }, "the restored guest printed \(Self.lines(outB)) lines")
        second.signal(SIGTERM)
        #expect(Self.exitStatus(second, within: 10) == 128 + SIGTERM, "SIGTERM shut the restored VMM down")
        let before = try readText(outA), after = try readText(outB)
        if case .failure(let error) = Self.unbrokenCount(before + after) {
            Issue.record("the count broke at the restore: \(error)")
        }
        unlink(socketA)
        withExtendedLifetime(directory) {}
    }
}

extension String {
    /// Eight upper-case hex digits.
    init(format8 value: UInt32) {
        let digits = String(value, radix: 16, uppercase: true)
        self = String(repeating: "0", count: 8 - digits.count) + digits
    }
}

extension APIProcessTests {
    /// A snapshot create that fails has no side effects: a mistyped
    /// snapshot_path, a FIFO, the API's own socket, the kernel the machine
    /// booted from and a directory are each a 400 before a byte is written.
    /// The earlier snapshot's files keep their inode and bytes, no partial
    /// file is left, the socket stays, and the machine resumes.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(2)))
    func aFailedSnapshotCreateChangesNothing() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-snapfail")
        let kernel = directory.path + "/counter.elf", state = directory.path + "/vm.state", memory = directory.path + "/vm.mem"
        try writeFileAtomically(Self.counterKernel(), to: kernel)
        let fifo = directory.path + "/fifo"
        try #require(mkfifo(fifo, 0o600) == 0)
        let socket = directory.path + "/a.sock", out = directory.path + "/out"
        let vmm = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(directory.path + "/err"))
        defer { if vmm.poll() == nil { vmm.signal(SIGKILL); _ = vmm.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(Self.waitFor(20) { Self.lines(out) >= 2 }, "the guest printed \(Self.lines(out)) lines")
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        func create(_ statePath: String, _ memoryPath: String) throws -> (Int, String) {
            try Self.curl(socket, "PUT", "/snapshot/create", #"{"snapshot_path": "\#(statePath)", "mem_file_path": "\#(memoryPath)"}"#)
        }
        let first = try create(state, memory)
        try #require(first.0 == 204, "\(first)")
        func identity(_ path: String) -> (ino_t, Int, [UInt8]) {
            var status = stat()
            _ = stat(path, &status)
            return (status.st_ino, Int(status.st_mtim.tv_nsec) + Int(status.st_mtim.tv_sec) * 1_000_000_000, (try? readBytes(path)) ?? [])
        }
        let stateBefore = identity(state), memoryBefore = identity(memory)
        let refusals: [(String, String, String)] = [
            (directory.path + "/no-such-dir/vm.state", memory, "cannot create the state file"),
            (fifo, memory, "snapshot_path \(fifo) is a FIFO"),
            (state, socket, "mem_file_path \(socket) is a socket"),
            (state, kernel, "mem_file_path \(kernel) is the kernel this microVM uses"),
            (directory.path, memory, "snapshot_path \(directory.path) is a directory"),
        ]
        for (statePath, memoryPath, expected) in refusals {
            let answer = try create(statePath, memoryPath)
            #expect(answer.0 == 400 && answer.1.contains(expected), "\(statePath), \(memoryPath): \(answer)")
        }
        let stateAfter = identity(state), memoryAfter = identity(memory)
        #expect(stateAfter.0 == stateBefore.0 && stateAfter.1 == stateBefore.1 && stateAfter.2 == stateBefore.2, "the state file changed")
        #expect(memoryAfter.0 == memoryBefore.0 && memoryAfter.1 == memoryBefore.1 && memoryAfter.2 == memoryBefore.2, "the memory file changed")
        let names = try HostProcess.output(["ls", "-A", directory.path]).output.split(separator: "\n").map(String.init).sorted()
        #expect(names == ["a.sock", "counter.elf", "err", "fifo", "out", "vm.mem", "vm.state"], "\(names)")
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204, "the API socket still answers")
        let printed = Self.lines(out)
        #expect(Self.waitFor(20) { Self.lines(out) > printed }, "the guest runs again")
        vmm.signal(SIGTERM)
        #expect(Self.exitStatus(vmm, within: 10) == 128 + SIGTERM)
    }
}

extension APIProcessTests {
    /// `kestrel run --config-file` with a configuration Kestrel refuses ends
    /// with status 2 and one line, as the README says, without hanging on a
    /// FIFO and without wrapping a huge mem_size_mib; a bad --id and a
    /// repeated option are refused before anything starts.
    @Test(.timeLimit(.minutes(1))) func aRefusedConfigFileExitsWithStatus2() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-badconfig")
        let fifo = directory.path + "/vmlinux.fifo", kernel = directory.path + "/vmlinux"
        try #require(mkfifo(fifo, 0o600) == 0)
        try writeFileAtomically(Self.counterKernel(), to: kernel)
        let cases: [(String, String)] = [
            ("{not json", "is not valid JSON"),
            (#"{"boot-source": {"kernel_image_path": "\#(kernel)"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 17592186044480}}"#,
             "mem_size_mib 17592186044480 is more than Kestrel's maximum"),
            (#"{"boot-source": {"kernel_image_path": "\#(kernel)"}, "machine-config": {"vcpu_count": 33, "mem_size_mib": 64}}"#,
             "vcpu_count must be between 1 and 32, not 33"),
            (#"{"boot-source": {"kernel_image_path": "\#(fifo)"}}"#, "the kernel \(fifo) is a FIFO, not a regular file"),
        ]
        for (index, (text, expected)) in cases.enumerated() {
            let path = directory.path + "/vm-\(index).json"
            try writeFileAtomically(Array(text.utf8), to: path)
            let result = try HostProcess.output([try Self.kestrel(), "run", "--config-file", path])
            #expect(result.status == 2 && result.errors.contains(expected), "\(text): \(result.status) \(result.errors)")
        }
        // Firecracker's launch rules: an instance id of its alphabet, and no option twice.
        for (arguments, expected) in [(["--api-sock", directory.path + "/a.sock", "--id", "vm 1"], "--id vm 1: an instance id is 1 to 64"),
                                      (["--api-sock", directory.path + "/a.sock", "--api-sock", directory.path + "/b.sock"],
                                       "--api-sock is given more than once"),
                                      (["--kernel", kernel, "--memory", "64M", "--memory=128M"], "--memory is given more than once")] {
            let result = try HostProcess.output([try Self.kestrel(), "run"] + arguments)
            #expect(result.status != 0 && result.errors.contains(expected), "\(arguments): \(result.status) \(result.errors)")
            #expect(access(directory.path + "/a.sock", F_OK) != 0, "no socket was made")
        }
    }
}

extension APIProcessTests {
    /// `PUT /serial` (Firecracker's serial_out_path): the guest's COM1 output
    /// goes to the file instead of standard output; a directory is refused
    /// when it is put.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(2)))
    func serialOutputGoesToTheFileThatWasPut() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-serial")
        let kernel = directory.path + "/counter.elf", serial = directory.path + "/serial.log"
        try writeFileAtomically(Self.counterKernel(), to: kernel)
        let socket = directory.path + "/a.sock", out = directory.path + "/out"
        let vmm = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(directory.path + "/err"))
        defer { if vmm.poll() == nil { vmm.signal(SIGKILL); _ = vmm.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        let refused = try Self.curl(socket, "PUT", "/serial", #"{"serial_out_path": "\#(directory.path)"}"#)
        #expect(refused.0 == 400 && refused.1.contains("is a directory, not a regular file or a FIFO"), "\(refused)")
        #expect(try Self.curl(socket, "PUT", "/serial", #"{"serial_out_path": "\#(serial)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(Self.waitFor(20) { Self.lines(serial) >= 3 }, "the guest wrote \(Self.lines(serial)) lines to the file")
        #expect(try Self.curl(socket, "GET", "/vm/config").1.contains("serial_out_path"))
        vmm.signal(SIGTERM)
        #expect(Self.exitStatus(vmm, within: 10) == 128 + SIGTERM)
        #expect(Self.lines(out) == 0, "nothing went to standard output: \((try? readText(out)) ?? "")")
    }
}

