import ArgumentParser
import Glibc
import HostSystem
import Lab
import TextFormat

/// `kestrel bench snapshot`: the API and snapshot timings of issue 14, each a
/// median of fresh `kestrel run --api-sock` processes of this executable,
/// with a baseline from the same run beside it.
struct SnapshotBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Exec to API socket, snapshot create and restore, pause and resume: medians against baselines from the same run.",
        discussion: """
            The guest is a crafted vmlinux that counts on COM1 (it runs on any KVM, the software one too). \
            Exec to socket: from posix_spawn of `kestrel run --api-sock` until connect(2) on the socket succeeds \
            (the bench sleeps until inotify reports the socket, so that it does not take the new process's core); baseline: posix_spawn to exit of /bin/true, the floor of any process. \
            Restore: from posix_spawn until PUT /snapshot/load with resume_vm answers 204 (Kestrel writes it once every vCPU thread has started and stands at its first KVM_RUN, then lets them enter the guest); \
            baseline: the same guest booted through the API (spawn until InstanceStart answers 204). \
            Exec to socket is also measured after 50 ms of idling, with /bin/true after the same idling as its baseline. \
            Pause and resume: PATCH /vm round trips; baseline: GET / round trips. Run it here and in the lab: \
            kestrel lab run --kernel 6.1 -- kestrel bench snapshot.
            """)

    @Option(help: "Processes (or round trips, times 10) per measurement; the median is reported.")
    var rounds = 11

    @Option(help: "Guest memory sizes in MiB, comma-separated.")
    var memory = "128,1024"

    @Option(help: "Where the snapshot files go (a directory; they are removed afterwards).")
    var directory = "/tmp"

    func validate() throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 32 }) else { throw ValidationError("--memory: sizes in MiB, each at least 32") }
    }

    var sizes: [Int] { memory.split(separator: ",").compactMap { Int($0) } }

    func run() throws {
        // This executable, as LabCheckMatrix runs it.
        let kestrel = "/proc/self/exe"
        let work = "\(directory)/kestrel-bench-\(getpid())"
        guard mkdir(work, 0o700) == 0 else { throw ValidationError("cannot create \(work): \(String(cString: strerror(errno)))") }
        defer { _ = try? HostProcess.output(["rm", "-rf", work]) }
        let kernel = work + "/counter.elf"
        try writeFileAtomically(CraftedGuest.counter(), to: kernel)
        let bench = try Bench(kestrel: kestrel, work: work, kernel: kernel)

        var execs: [Double] = [], floors: [Double] = [], idleExecs: [Double] = [], idleFloors: [Double] = []
        for round in 0..<rounds {
            floors.append(try bench.spawnToExit(["/bin/true"]))
            execs.append(try bench.execToSocket(round))
        }
        // The same after 50 ms of idling, when the cores have gone to sleep.
        for round in 0..<rounds {
            usleep(50_000)
            idleFloors.append(try bench.spawnToExit(["/bin/true"]))
            usleep(50_000)
            idleExecs.append(try bench.execToSocket(rounds + round))
        }
        print("measurement                        median      baseline    ratio")
        row("exec to API socket", execs, "spawn of /bin/true", floors)
        row("  the same, after 50 ms idle", idleExecs, "/bin/true after 50 ms idle", idleFloors)

        for size in sizes {
            let (create, stateBytes, memoryBytes, onDisk) = try bench.snapshot(memoryMiB: size)
            var restores: [Double] = [], boots: [Double] = []
            for round in 0..<rounds {
                boots.append(try bench.boot(memoryMiB: size, round: round))
                restores.append(try bench.restore(round: round))
            }
            row("restore, \(size) MiB, to running", restores, "boot through the API", boots)
            print("  snapshot create, \(size) MiB: \(ms(create)) (PUT round trip); state file \(stateBytes) bytes, "
                + "memory file \(memoryBytes >> 20) MiB apparent, \(onDisk >> 10) KiB written")
        }
        let (pauses, resumes, gets) = try bench.pauseResume(rounds: rounds * 10)
        row("PATCH /vm Paused", pauses, "GET /", gets)
        row("PATCH /vm Resumed", resumes, "GET /", gets)
        print("(medians of \(rounds) processes, or \(rounds * 10) round trips for PATCH and GET; this build: \(Kestrel.buildConfiguration))")
    }

    func row(_ name: String, _ values: [Double], _ baselineName: String, _ baseline: [Double]) {
        let median = ConversionsBench.median(values), floor = ConversionsBench.median(baseline)
        print(name.padded(to: 35) + ms(median).padded(to: 12) + ms(floor).padded(to: 12) + (median / floor).text(places: 2) + "x  (baseline: \(baselineName))")
    }

    func ms(_ seconds: Double) -> String { (seconds * 1000).text(places: 2) + " ms" }
}

/// The processes and requests the snapshot bench times.
struct Bench {
    let kestrel: String
    let work: String
    let kernel: String
    /// Where the bench waits for the API sockets, all made in `work`.
    let sockets: SocketDirectoryWatch

    init(kestrel: String, work: String, kernel: String) throws {
        self.kestrel = kestrel
        self.work = work
        self.kernel = kernel
        sockets = try SocketDirectoryWatch(directory: work)
    }

    var state: String { work + "/vm.state" }
    var memoryFile: String { work + "/vm.mem" }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    func spawnToExit(_ arguments: [String]) throws -> Double {
        let start = Self.now()
        let process = try HostProcess.start(arguments, stdout: .null, stderr: .null)
        _ = process.wait()
        return Self.now() - start
    }

    /// Spawns `kestrel run --api-sock` and returns it with the time until its socket accepted.
    func startAPI(_ socket: String) throws -> (HostProcess, Double, Double) {
        unlink(socket)
        let start = Self.now()
        let process = try HostProcess.start([kestrel, "run", "--api-sock", socket], stdout: .null, stderr: .file(socket + ".err"))
        // Every socket is made in `work`, the watched directory.
        precondition(socket.hasPrefix(work + "/"))
        do {
            close(try sockets.connect(to: String(socket.dropFirst(work.count + 1)), timeout: .seconds(30), stillWaiting: { process.poll() == nil }))
        } catch {
            let ended = process.poll() != nil
            process.signal(SIGKILL)
            _ = process.wait()
            throw ValidationError(ended ? "kestrel ended before serving its socket: \((try? readText(socket + ".err")) ?? "")" : "no API socket after 30 s")
        }
        return (process, start, Self.now() - start)
    }

    func stop(_ process: HostProcess) {
        process.signal(SIGKILL)
        _ = process.wait()
    }

    func execToSocket(_ round: Int) throws -> Double {
        let (process, _, took) = try startAPI("\(work)/exec-\(round).sock")
        stop(process)
        return took
    }

    @discardableResult
    func request(_ socket: String, _ method: String, _ path: String, _ body: String? = nil, expect: Int = 204) throws -> (Int, String) {
        let answer = try APIRequest.send(socket: socket, method: method, path: path, body: body)
        guard answer.0 == expect else {
            throw ValidationError("\(method) \(path): \(answer.0) \(answer.1); kestrel: \((try? readText(socket + ".err")) ?? "")")
        }
        return answer
    }

    func configure(_ socket: String, memoryMiB: Int) throws {
        try request(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#)
        try request(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": \#(memoryMiB)}"#)
    }

    /// Boots the counter guest, pauses it and takes a snapshot: the create's
    /// round trip and the files' sizes.
    func snapshot(memoryMiB: Int) throws -> (Double, Int, UInt64, UInt64) {
        let socket = work + "/snap.sock"
        let (process, _, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: memoryMiB)
        try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        usleep(300_000)
        try request(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
        let start = Self.now()
        try request(socket, "PUT", "/snapshot/create", #"{"snapshot_type": "Full", "snapshot_path": "\#(state)", "mem_file_path": "\#(memoryFile)"}"#)
        let took = Self.now() - start
        var info = stat(), stateInfo = stat()
        stat(memoryFile, &info)
        stat(state, &stateInfo)
        return (took, Int(stateInfo.st_size), UInt64(info.st_size), UInt64(info.st_blocks) * 512)
    }

    func boot(memoryMiB: Int, round: Int) throws -> Double {
        let socket = "\(work)/boot-\(round).sock"
        let (process, start, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: memoryMiB)
        try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        return Self.now() - start
    }

    func restore(round: Int) throws -> Double {
        let socket = "\(work)/restore-\(round).sock"
        let (process, start, _) = try startAPI(socket)
        defer { stop(process) }
        try request(socket, "PUT", "/snapshot/load",
                    #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memoryFile)"}, "resume_vm": true}"#)
        return Self.now() - start
    }

    func pauseResume(rounds: Int) throws -> ([Double], [Double], [Double]) {
        let socket = work + "/pause.sock"
        let (process, _, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: 64)
        try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        var pauses: [Double] = [], resumes: [Double] = [], gets: [Double] = []
        for _ in 0..<rounds {
            var start = Self.now()
            try request(socket, "GET", "/", expect: 200)
            gets.append(Self.now() - start)
            start = Self.now()
            try request(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
            pauses.append(Self.now() - start)
            start = Self.now()
            try request(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#)
            resumes.append(Self.now() - start)
        }
        return (pauses, resumes, gets)
    }
}

/// One HTTP/1.1 request over a Unix socket, and its status and body.
enum APIRequest {
    static func send(socket: String, method: String, path: String, body: String?) throws -> (Int, String) {
        let fd = try UnixSocket.connect(to: socket)
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        let payload = Array((body ?? "").utf8)
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body != nil { text += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
        let bytes = Array((text + "\r\n").utf8) + payload
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + sent, bytes.count - sent) }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw ValidationError("write to \(socket): \(String(cString: strerror(errno)))") }
            sent += result
        }
        // Connection: close, so the answer ends where the stream does.
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            answer += chunk[0..<count]
        }
        let response = String(decoding: answer, as: UTF8.self)
        let status = response.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? -1
        let body = response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (status, body)
    }
}
