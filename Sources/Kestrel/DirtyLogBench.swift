import ArgumentParser
import Glibc
import HostSystem
import KVM
import Lab
import TextFormat

/// `kestrel bench dirty`: what tracking dirty pages costs a guest that writes
/// memory, and what a Diff snapshot holds against the pages it dirtied.
struct DirtyLogBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dirty",
        abstract: "Dirty logging's cost to a memory-writing guest, bitmap against ring, and Diff size against dirtied pages.",
        discussion: """
            The guest is a crafted vmlinux that writes one dword into each of 8192 pages (32 MiB) and prints a line per pass. \
            For each mode a fresh `kestrel run --api-sock` boots it with 256 MiB and the passes are counted over --seconds: \
            untracked (the baseline), track_dirty_pages with the bitmap (dirty_log Bitmap), the same with GET /kestrel/memory/dirty \
            every --read-every ms (each read is KVM_GET_DIRTY_LOG, which write-protects the pages again), and the ring (dirty_log Ring, \
            harvested whenever a vCPU's ring fills). Each mode gives the median passes per second of --rounds processes and its ratio \
            to the baseline. Then a Full snapshot, a second of writing and a Diff: the Diff's data against the pages the report named \
            just before it. Run it here and in the lab: kestrel lab run --kernel 7.2 -- kestrel bench dirty.
            """)

    @Option(help: "Processes per mode; the median is reported.") var rounds = 3
    @Option(help: "Seconds of writing counted per process.") var seconds = 3.0
    @Option(help: "Milliseconds between dirty-page reads in the Bitmap-with-reads mode.") var readEvery = 100
    @Option(help: "Where the guest and snapshot files go (a directory; they are removed afterwards).") var directory = "/tmp"

    func validate() throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard seconds >= 0.5 else { throw ValidationError("--seconds must be at least 0.5") }
        guard readEvery >= 1 else { throw ValidationError("--read-every must be at least 1 ms") }
    }

    struct Mode {
        let name: String
        let machineConfig: String
        let reads: Bool
    }

    func run() throws {
        let work = "\(directory)/kestrel-dirty-bench-\(getpid())"
        guard mkdir(work, 0o700) == 0 else { throw ValidationError("cannot create \(work): \(String(cString: strerror(errno)))") }
        defer { _ = try? HostProcess.output(["rm", "-rf", work]) }
        let kernel = work + "/writer.elf"
        try writeFileAtomically(CraftedGuest.writer(), to: kernel)
        let bench = try Bench(kestrel: "/proc/self/exe", work: work, kernel: kernel)
        let ring = ((try? KVMSystem().createVirtualMachine().dirtyRingLimit().bytes) ?? 0) >= 4096
        var modes = [Mode(name: "untracked", machineConfig: "", reads: false),
                     Mode(name: "Bitmap", machineConfig: #", "track_dirty_pages": true"#, reads: false),
                     Mode(name: "Bitmap, read every \(readEvery) ms", machineConfig: #", "track_dirty_pages": true"#, reads: true)]
        if ring { modes.append(Mode(name: "Ring", machineConfig: #", "track_dirty_pages": true, "dirty_log": "Ring""#, reads: false)) }
        print("mode                               passes/s    baseline    ratio")
        var baseline = 0.0
        for mode in modes {
            var rates: [Double] = []
            var failure: String?
            for round in 0..<rounds {
                switch try passRate(bench, mode: mode, round: round) {
                case .success(let rate): rates.append(rate)
                case .failure(let error): failure = error.message
                }
                if failure != nil { break }
            }
            if let failure {
                print(mode.name.padded(to: 35) + "failed: " + failure)
                continue
            }
            let median = ConversionsBench.median(rates)
            if mode.name == "untracked" { baseline = median }
            print(mode.name.padded(to: 35) + median.text(places: 1).padded(to: 12) + baseline.text(places: 1).padded(to: 12)
                  + (baseline > 0 ? (median / baseline).text(places: 3) + "x" : "-"))
        }
        if !ring { print("Ring: not measured (this host's KVM has no dirty ring)") }
        try diffSize(bench)
        print("(medians of \(rounds) processes of \(seconds.text(places: 1)) s each; this build: \(Kestrel.buildConfiguration))")
    }

    struct Failure: Error { let message: String }

    /// Boots the writer in `mode` and counts its passes over `seconds`.
    func passRate(_ bench: Bench, mode: Mode, round: Int) throws -> Result<Double, Failure> {
        let socket = "\(bench.work)/dirty-\(round).sock", output = "\(bench.work)/dirty-\(round).out"
        let (process, _, _) = try bench.startAPI(socket, stdout: .file(output))
        defer { bench.stop(process) }
        try bench.request(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(bench.kernel)"}"#)
        try bench.request(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 256\#(mode.machineConfig)}"#)
        try bench.request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        func passes() -> Int { ((try? readBytes(output)) ?? []).reduce(0) { $0 + ($1 == UInt8(ascii: ".") ? 1 : 0) } }
        // The first pass faults every page in; counting starts after it.
        let warmup = Bench.now() + 30
        while passes() < 1 && Bench.now() < warmup && process.poll() == nil { usleep(5_000) }
        guard passes() >= 1 else {
            return .failure(Failure(message: "no pass within 30 s: " + ((try? readText(socket + ".err")) ?? "").split(separator: "\n").suffix(2).joined(separator: " ")))
        }
        let start = Bench.now(), first = passes()
        while Bench.now() - start < seconds {
            if mode.reads { try bench.request(socket, "GET", "/kestrel/memory/dirty", expect: 200) }
            usleep(UInt32(mode.reads ? readEvery * 1000 : 20_000))
        }
        let counted = passes() - first, elapsed = Bench.now() - start
        if process.poll() != nil {
            return .failure(Failure(message: ((try? readText(socket + ".err")) ?? "").split(separator: "\n").suffix(1).joined()))
        }
        return .success(Double(counted) / elapsed)
    }

    /// A Full snapshot, about a second of writing, the report and a Diff:
    /// the Diff's data bytes against the pages reported.
    func diffSize(_ bench: Bench) throws {
        let socket = "\(bench.work)/diff.sock"
        let (process, _, _) = try bench.startAPI(socket, stdout: .null)
        defer { bench.stop(process) }
        try bench.request(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(bench.kernel)"}"#)
        try bench.request(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}"#)
        try bench.request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        usleep(500_000)
        try bench.request(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
        try bench.request(socket, "PUT", "/snapshot/create", #"{"snapshot_path": "\#(bench.work)/s", "mem_file_path": "\#(bench.work)/base.mem"}"#)
        try bench.request(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#)
        usleep(1_000_000)
        try bench.request(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
        let report = try bench.request(socket, "GET", "/kestrel/memory/dirty", expect: 200).1
        let pages = report.split(separator: ",").first { $0.contains("\"dirty_pages\"") }.flatMap { Int($0.split(separator: ":").last ?? "") } ?? 0
        let start = Bench.now()
        try bench.request(socket, "PUT", "/snapshot/create",
                          #"{"snapshot_type": "Diff", "snapshot_path": "\#(bench.work)/d", "mem_file_path": "\#(bench.work)/d.mem"}"#)
        let took = Bench.now() - start
        var memory = stat(), state = stat()
        stat("\(bench.work)/d.mem", &memory)
        stat("\(bench.work)/d", &state)
        let data = Double(memory.st_blocks) * 512
        print("Diff after 1 s of writing: \(pages) pages reported (\((Double(pages) * 4096 / 1048576).text(places: 1)) MiB), "
            + "\((data / 1048576).text(places: 1)) MiB of data written, \((data / max(Double(pages) * 4096, 1)).text(places: 3))x, "
            + "plus a state file of \(state.st_size) bytes; created in \((took * 1000).text(places: 1)) ms")
    }
}
