import ArgumentParser
import Glibc
import HostSystem
import Lab
import TextFormat
import VMM

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
            Restore: from posix_spawn until PUT /snapshot/load with resume_vm answers 204 (Kestrel writes it once every vCPU thread has started and stands at its first KVM_RUN, then lets them enter the guest), \
            and until the guest's next byte on COM1 (its first work after the restore), for each --paging mode and --memory size; \
            each memory file gets --fill MiB of data the guest never touches, which Eager reads before the guest runs, Prefault copies in behind it, and Mapped and OnDemand leave alone; \
            baseline: the same guest booted through the API (spawn until InstanceStart answers 204). The ratios against the smallest size show whether a mode's restore grows with memory. \
            Exec to socket is also measured after 50 ms of idling, with /bin/true after the same idling as its baseline. \
            Pause and resume: PATCH /vm round trips; baseline: GET / round trips. \
            Fork pause: the crafted writing guest (it rewrites 32 MiB over and over) on --fork-memory MiB of shared RAM, \
            snapshotted live (PUT /kestrel/snapshot/live, which answers the pause); baseline: the same snapshot the Firecracker way, \
            PATCH Paused, PUT /snapshot/create and PATCH Resumed, timed by the bench. \
            Clones: --clones processes loading one live snapshot of the counting guest on 256 MiB of shared RAM, all left running: \
            spawn until the load answered against restores of the same snapshot with no clone running, and each clone's Pss and \
            private memory in its mapping of the memory file (/proc/PID/smaps) against the guest's RAM. \
            Run it here and in the lab: \
            kestrel lab run --kernel 6.1 -- kestrel bench snapshot.
            """)

    @Option(help: "Processes (or round trips, times 10) per measurement; the median is reported.")
    var rounds = 11

    @Option(help: "Guest memory sizes in MiB, comma-separated.")
    var memory = "128,1024,8192"

    @Option(help: "Restore paging modes to compare (mem_backend File's paging), comma-separated: Mapped, Eager, OnDemand, Prefault.")
    var paging = "Mapped,Eager,OnDemand,Prefault"

    @Option(help: "Guest RAM backends to compare (machine-config memory_backend), comma-separated: anonymous, guest_memfd, shared. guest_memfd RAM is always read in before the guest runs, so only Mapped and Eager apply to it.")
    var memoryBackends = "anonymous"

    @Flag(help: "After each mode's restores, one more with --verbose, and the set-up steps it logs.")
    var steps = false

    @Option(help: "MiB of data written into each memory file past its first 64 MiB (which the guest does not touch), so that a restore has data to bring in; default: half the guest's memory, at most 1024.")
    var fill: Int?

    @Option(help: "Where the snapshot files go (a directory; they are removed afterwards).")
    var directory = "/tmp"

    @Option(help: "MiB of shared RAM of the guest forked live for the fork pause rows; 0 leaves them out.")
    var forkMemory = 1024

    @Option(help: "Clones of one live snapshot for the clone rows; 0 leaves them out.")
    var clones = 10

    func validate() throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 32 }) else { throw ValidationError("--memory: sizes in MiB, each at least 32") }
        let names = paging.split(separator: ",").map(String.init)
        guard !names.isEmpty, let bad = Optional(names.filter { FilePaging(rawValue: $0) == nil }), bad.isEmpty else {
            throw ValidationError("--paging: known modes are " + FilePaging.allCases.map(\.rawValue).joined(separator: ", "))
        }
        if let fill, fill < 0 { throw ValidationError("--fill must be at least 0") }
        let backendNames = memoryBackends.split(separator: ",").map(String.init)
        guard !backendNames.isEmpty, backendNames.allSatisfy({ MemoryBackend(rawValue: $0) != nil }) else {
            throw ValidationError("--memory-backends: known backends are " + MemoryBackend.allCases.map(\.rawValue).joined(separator: ", "))
        }
        guard forkMemory == 0 || forkMemory >= 128 else { throw ValidationError("--fork-memory: at least 128 MiB (the writing guest's 32 MiB lie at 64 MiB), or 0") }
        guard clones >= 0 else { throw ValidationError("--clones must be at least 0") }
    }

    var sizes: [Int] { memory.split(separator: ",").compactMap { Int($0) } }
    var modes: [String] { paging.split(separator: ",").map(String.init) }
    var backends: [MemoryBackend] { memoryBackends.split(separator: ",").compactMap { MemoryBackend(rawValue: String($0)) } }

    /// The modes that apply to `backend`: guest_memfd RAM takes Mapped and Eager only (both read it in).
    func modes(for backend: MemoryBackend) -> [String] {
        backend == .guestMemfd ? modes.filter { $0 == FilePaging.mapped.rawValue || $0 == FilePaging.eager.rawValue } : modes
    }

    /// The data written into a memory file of `size` MiB (after its first 64 MiB).
    func fillMiB(_ size: Int) -> Int { min(fill ?? min(size / 2, 1024), max(size - 64, 0)) }

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

        // Per backend and mode, the restore-to-running median of each size, for the ratios against the smallest.
        var running: [String: [Int: Double]] = [:]
        let labelled = backends.count > 1
        for size in sizes {
            for backend in backends {
                let label = labelled ? "\(backend.rawValue), " : ""
                let (create, stateBytes, memoryBytes, onDisk) = try bench.snapshot(memoryMiB: size, backend: backend)
                print("snapshot create, \(label)\(size) MiB: \(ms(create)) (PUT round trip); state file \(stateBytes) bytes, "
                    + "memory file \(memoryBytes >> 20) MiB apparent, \(onDisk >> 10) KiB written")
                let filled = fillMiB(size)
                try bench.fillMemoryFile(fromMiB: 64, mebibytes: filled)
                var boots: [Double] = []
                for round in 0..<rounds { boots.append(try bench.boot(memoryMiB: size, round: round, backend: backend)) }
                print("  with \(filled) MiB of data written into the memory file past its first 64 MiB (the guest does not touch it):")
                for mode in modes(for: backend) {
                    var restores: [Double] = [], outputs: [Double] = [], prefaults: [Double] = []
                    for round in 0..<rounds {
                        let measured = try bench.restore(round: round, paging: mode)
                        restores.append(measured.running)
                        outputs.append(measured.firstOutput)
                        if let prefault = measured.prefault { prefaults.append(prefault) }
                    }
                    running[label + mode, default: [:]][size] = ConversionsBench.median(restores)
                    row("  \(label)\(mode), to running", restores, "boot through the API", boots)
                    row("  \(label)\(mode), to next output", outputs, "boot through the API", boots)
                    if steps { print("    set-up (one more, --verbose): " + (try bench.restoreSteps(paging: mode))) }
                    if !prefaults.isEmpty {
                        let median = ConversionsBench.median(prefaults)
                        print("  \(label)\(mode): all data in after " + (median.isFinite ? ms(median) : "more than 30 s") + " (median; the pager's own count from its start)")
                    }
                }
            }
        }
        if sizes.count > 1, let smallest = sizes.min() {
            for key in running.keys.sorted() {
                guard let base = running[key]?[smallest] else { continue }
                let ratios = sizes.filter { $0 != smallest }.sorted().compactMap { size in
                    running[key]?[size].map { "\(size) MiB \(($0 / base).text(places: 2))x" }
                }
                print("restore to running, \(key), against \(smallest) MiB: " + ratios.joined(separator: ", "))
            }
        }
        if labelled, let anonymous = backends.first(where: { $0 == .anonymous }) {
            // Each backend's restore against anonymous RAM's, size by size.
            for backend in backends where backend != anonymous {
                for mode in modes(for: backend) {
                    let ratios = sizes.compactMap { size -> String? in
                        guard let other = running["\(backend.rawValue), \(mode)"]?[size], let base = running["\(anonymous.rawValue), \(mode)"]?[size] else { return nil }
                        return "\(size) MiB \((other / base).text(places: 2))x"
                    }
                    print("restore to running, \(backend.rawValue) against anonymous, \(mode): " + ratios.joined(separator: ", "))
                }
            }
        }
        let (pauses, resumes, gets) = try bench.pauseResume(rounds: rounds * 10)
        row("PATCH /vm Paused", pauses, "GET /", gets)
        row("PATCH /vm Resumed", resumes, "GET /", gets)
        if forkMemory > 0 {
            let writer = work + "/writer.elf"
            try writeFileAtomically(CraftedGuest.writer(), to: writer)
            let fork = try bench.forkPauses(memoryMiB: forkMemory, rounds: rounds, writer: writer)
            row("fork pause, \(forkMemory) MiB", fork.live, "pause, Full create, resume", fork.stopped)
            print("  (the writing guest; each live snapshot wrote \(Int(fork.bytes) >> 20) MiB; pauses: "
                + fork.live.map { ms($0) }.joined(separator: ", ") + ")")
        }
        if clones > 0 {
            let cloned = try bench.clones(count: clones, memoryMiB: 256, rounds: rounds)
            row("clone to running (\(clones) side by side)", cloned.clones, "restore alone", cloned.single)
            print("  (in start order: " + cloned.clones.map { ms($0) }.joined(separator: ", ") + "; alone: " + cloned.single.map { ms($0) }.joined(separator: ", ") + ")")
            let pss = cloned.pssKiB.sorted(), privateKiB = cloned.privateKiB.sorted()
            print("clone Pss in its RAM mapping: median \(pss[pss.count / 2]) KiB, at most \(pss.last!) KiB, "
                + "\((Double(pss.last!) / Double(256 * 1024) * 100).text(places: 2))% of the guest's 256 MiB; private: median \(privateKiB[privateKiB.count / 2]) KiB, "
                + "at most \(privateKiB.last!) KiB (\(clones) clones of the counting guest)")
        }
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
    func startAPI(_ socket: String, stdout: HostProcess.Stream = .null, verbose: Bool = false) throws -> (HostProcess, Double, Double) {
        unlink(socket)
        let start = Self.now()
        let process = try HostProcess.start([kestrel, "run", "--api-sock", socket] + (verbose ? ["--verbose"] : []), stdout: stdout,
                                            stderr: .file(socket + ".err"))
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

    /// Boot source (`guest`, the counting guest by default) and machine-config of a fresh API process.
    func configure(_ socket: String, memoryMiB: Int, backend: MemoryBackend = .anonymous, guest: String? = nil) throws {
        try request(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(guest ?? kernel)"}"#)
        try request(socket, "PUT", "/machine-config",
                    #"{"vcpu_count": 1, "mem_size_mib": \#(memoryMiB), "memory_backend": "\#(backend.rawValue)"}"#)
    }

    /// Boots the counter guest, pauses it and takes a snapshot: the create's
    /// round trip and the files' sizes.
    func snapshot(memoryMiB: Int, backend: MemoryBackend = .anonymous) throws -> (Double, Int, UInt64, UInt64) {
        let socket = work + "/snap.sock"
        let (process, _, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: memoryMiB, backend: backend)
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

    func boot(memoryMiB: Int, round: Int, backend: MemoryBackend = .anonymous) throws -> Double {
        let socket = "\(work)/boot-\(round).sock"
        let (process, start, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: memoryMiB, backend: backend)
        try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        return Self.now() - start
    }

    /// Writes `mebibytes` of non-zero data into the memory file from
    /// `fromMiB`, pages the counter guest never touches: data a restore must
    /// bring in (Eager, Prefault) or may leave (Mapped, OnDemand).
    func fillMemoryFile(fromMiB: Int, mebibytes: Int) throws {
        guard mebibytes > 0 else { return }
        let fd = open(memoryFile, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ValidationError("cannot open \(memoryFile): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for index in 0..<mebibytes {
            for word in stride(from: 0, to: chunk.count, by: 8) { chunk[word] = UInt8(truncatingIfNeeded: index &+ word >> 12 | 1) }
            guard pwrite(fd, chunk, chunk.count, off_t(fromMiB + index) << 20) == chunk.count else {
                throw ValidationError("cannot write \(memoryFile): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// One restore with `paging`: spawn until the load answered, spawn until
    /// the guest's first byte on COM1 after it, and for Prefault the pager's
    /// own time to have all data in (from its log line).
    /// One more restore with `kestrel run --verbose`, outside the timings:
    /// its set-up steps, as the restored process logs them.
    func restoreSteps(paging: String) throws -> String {
        let socket = "\(work)/steps.sock"
        let (process, _, _) = try startAPI(socket, verbose: true)
        defer { stop(process) }
        try request(socket, "PUT", "/snapshot/load",
                    #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memoryFile)", "paging": "\#(paging)"}, "resume_vm": true}"#)
        let deadline = Self.now() + 5
        while Self.now() < deadline {
            if let line = ((try? readText(socket + ".err")) ?? "").split(separator: "\n").first(where: { $0.contains("set-up ") }) {
                return line.split(separator: "set-up ", maxSplits: 1).last.map(String.init) ?? String(line)
            }
            usleep(2_000)
        }
        return "(no set-up line)"
    }

    func restore(round: Int, paging: String) throws -> (running: Double, firstOutput: Double, prefault: Double?) {
        let socket = "\(work)/restore-\(round).sock"
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw ValidationError("pipe: \(String(cString: strerror(errno)))") }
        // Neither end leaks into the child (posix_spawn's dup2 makes its stdout).
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        let started: (HostProcess, Double, Double)
        do { started = try startAPI(socket, stdout: .descriptor(ends[1])) } catch { close(ends[1]); throw error }
        close(ends[1])
        let (process, start, _) = started
        defer { stop(process) }
        try request(socket, "PUT", "/snapshot/load",
                    #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memoryFile)", "paging": "\#(paging)"}, "resume_vm": true}"#)
        let running = Self.now() - start
        var waiting = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
        var byte: UInt8 = 0
        guard poll(&waiting, 1, 30_000) == 1, read(ends[0], &byte, 1) == 1 else {
            throw ValidationError("the restored guest (\(paging)) printed nothing within 30 s; kestrel: \((try? readText(socket + ".err")) ?? "")")
        }
        let firstOutput = Self.now() - start
        var prefault: Double?
        if paging == FilePaging.prefault.rawValue {
            let deadline = Self.now() + 30
            while prefault == nil && Self.now() < deadline {
                let log = (try? readText(socket + ".err")) ?? ""
                if let line = log.split(separator: "\n").first(where: { $0.contains("restore pager: all") }),
                   let milliseconds = line.split(separator: " ").reversed().drop(while: { $0 != "ms;" }).dropFirst().first.flatMap({ Double($0) }) {
                    prefault = milliseconds / 1000
                } else {
                    usleep(5_000)
                }
            }
            // Not in after 30 s (a busy guest on a busy CPU): reported, not fatal.
            if prefault == nil { prefault = .infinity }
        }
        return (running, firstOutput, prefault)
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
