import ArgumentParser
import Glibc
import HostSystem
import Lab
import VMM

/// The live fork and clone measurements of `kestrel bench snapshot`
/// (issue 37's "fork pause" and "clone PSS" rows).
extension Bench {
    /// The crafted writing guest (it rewrites 32 MiB over and over) on
    /// shared RAM of `memoryMiB`, forked live `rounds` times: each pause as
    /// the answer gives it. The baseline, from the same guest in the same
    /// process: the Firecracker way of taking the same snapshot, PATCH
    /// Paused, a Full PUT /snapshot/create and PATCH Resumed, timed by this
    /// client, `rounds` times. Also the data each live snapshot wrote.
    func forkPauses(memoryMiB: Int, rounds: Int, writer: String) throws -> (live: [Double], stopped: [Double], bytes: Double) {
        let socket = work + "/fork.sock"
        let (process, _, _) = try startAPI(socket)
        defer { stop(process) }
        try configure(socket, memoryMiB: memoryMiB, backend: .shared, guest: writer)
        try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
        usleep(500_000)
        let forkState = work + "/fork.state", forkMemory = work + "/fork.mem"
        var live: [Double] = [], stopped: [Double] = [], bytes: [Double] = []
        for _ in 0..<rounds {
            let answer = try request(socket, "PUT", "/kestrel/snapshot/live",
                                     #"{"snapshot_path": "\#(forkState)", "mem_file_path": "\#(forkMemory)"}"#, expect: 200)
            live.append(Double(Self.field(answer.1, "pause_us") ?? -1) / 1e6)
            bytes.append(Double(Self.field(answer.1, "bytes_written") ?? 0))
            unlink(forkState)
            unlink(forkMemory)
            let start = Self.now()
            try request(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
            try request(socket, "PUT", "/snapshot/create", #"{"snapshot_path": "\#(forkState)", "mem_file_path": "\#(forkMemory)"}"#)
            try request(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#)
            stopped.append(Self.now() - start)
            unlink(forkState)
            unlink(forkMemory)
        }
        return (live, stopped, ConversionsBench.median(bytes))
    }

    /// The counting guest (idle but for its line on COM1) on shared RAM of
    /// `memoryMiB`, forked live once; then `count` clones of the fork, each
    /// a process left running, started one after another: each clone's time
    /// from spawn to its load's answer, and, with all of them running, the
    /// Pss and private KiB of each clone's mapping of the memory file
    /// (/proc/PID/smaps). The baseline: `rounds` restores of the same
    /// snapshot with no clone running. Each clone is paused once it runs,
    /// until all have started, so that the next one's start measures the
    /// restore beside its siblings' memory, not beside their CPU use (the
    /// counting guest never idles).
    func clones(count: Int, memoryMiB: Int, rounds: Int) throws -> (single: [Double], clones: [Double], pssKiB: [Int], privateKiB: [Int]) {
        let socket = work + "/parent.sock"
        let forkState = work + "/clone.state", forkMemory = work + "/clone.mem"
        do {
            let (parent, _, _) = try startAPI(socket)
            defer { stop(parent) }
            try configure(socket, memoryMiB: memoryMiB, backend: .shared)
            try request(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#)
            usleep(300_000)
            try request(socket, "PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "\#(forkState)", "mem_file_path": "\#(forkMemory)"}"#, expect: 200)
        }
        func load(_ name: String) throws -> (HostProcess, Double) {
            let (process, start, _) = try startAPI("\(work)/\(name).sock")
            do {
                try request("\(work)/\(name).sock", "PUT", "/snapshot/load",
                            #"{"snapshot_path": "\#(forkState)", "mem_backend": {"backend_type": "File", "backend_path": "\#(forkMemory)"}, "resume_vm": true}"#)
            } catch {
                stop(process)
                throw error
            }
            return (process, Self.now() - start)
        }
        var single: [Double] = []
        for round in 0..<rounds {
            let (process, took) = try load("single-\(round)")
            stop(process)
            single.append(took)
        }
        var running: [HostProcess] = []
        defer { running.forEach(stop) }
        var times: [Double] = []
        for index in 0..<count {
            let (process, took) = try load("clone-\(index)")
            running.append(process)
            times.append(took)
            try request("\(work)/clone-\(index).sock", "PATCH", "/vm", #"{"state": "Paused"}"#)
        }
        for index in 0..<count { try request("\(work)/clone-\(index).sock", "PATCH", "/vm", #"{"state": "Resumed"}"#) }
        usleep(300_000)
        var pss: [Int] = [], privateKiB: [Int] = []
        for process in running {
            let usage = try Self.mappingUsage(pid: process.process, path: forkMemory)
            pss.append(usage.pss)
            privateKiB.append(usage.private)
        }
        return (single, times, pss, privateKiB)
    }

    /// The Pss and private (clean and dirty) KiB of `pid`'s mappings of `path`, from /proc/PID/smaps.
    static func mappingUsage(pid: Int32, path: String) throws -> (pss: Int, private: Int) {
        let smaps = try readText("/proc/\(pid)/smaps")
        var inside = false, pss = 0, privateKiB = 0
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if first.contains("-") && !first.hasSuffix(":") {
                inside = fields.last.map { $0 == path } ?? false
                continue
            }
            guard inside, fields.count >= 2, let kib = Int(fields[1]) else { continue }
            switch first {
            case "Pss:": pss += kib
            case "Private_Clean:", "Private_Dirty:": privateKiB += kib
            default: break
            }
        }
        return (pss, privateKiB)
    }

    /// The whole number after `"name":` in a JSON answer.
    static func field(_ json: String, _ name: String) -> Int? {
        guard let range = json.firstRange(of: "\"\(name)\":") else { return nil }
        return Int(json[range.upperBound...].prefix { $0.isNumber })
    }
}
