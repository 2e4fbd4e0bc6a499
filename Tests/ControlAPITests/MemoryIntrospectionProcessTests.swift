import Glibc
import Lab
import Testing
import VMM

extension APIProcessTests {
    /// The /kestrel/memory routes on the counting guest with
    /// track_dirty_pages: one anonymous region that logs dirty pages; pages
    /// dirty since the start, fewer after a reset; while paused, a dump that
    /// is byte for byte the Full snapshot taken at the same moment, and a
    /// dirty-only dump of exactly the pages the report names. A dump while
    /// running, or over the API socket, is refused by name.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(2)))
    func memoryIntrospectionDescribesDumpsAndCountsTheGuestsPages() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-memintro")
        let (process, socket, _) = try Self.bootCountingGuest(in: directory.path, machineConfig: #", "track_dirty_pages": true"#)
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }

        let regions = try Self.curl(socket, "GET", "/kestrel/memory")
        #expect(regions.0 == 200 && regions.1.contains(#""size":134217728"#) && regions.1.contains(#""backing":"anonymous""#)
                && regions.1.contains(#""dirty_log":true"#), "\(regions)")
        func dirtyCount() throws -> (Int, String) {
            let answer = try Self.curl(socket, "GET", "/kestrel/memory/dirty")
            let count = answer.1.split(separator: ",").first { $0.contains("\"dirty_pages\"") }.flatMap { Int($0.split(separator: ":").last ?? "") } ?? -1
            return (count, answer.1)
        }
        let (sinceStart, first) = try dirtyCount()
        #expect(first.contains(#""tracking":"dirty_log""#) && first.contains(#""since":"snapshot""#) && sinceStart > 8, "\(first)")
        #expect(try dirtyCount().0 >= sinceStart, "reading the report takes nothing from it")
        #expect(try Self.curl(socket, "PUT", "/kestrel/memory/dirty/reset").0 == 204)
        let (sinceReset, second) = try dirtyCount()
        #expect(second.contains(#""since":"reset""#) && sinceReset < sinceStart, "\(sinceReset) pages since the reset, \(sinceStart) before: \(second)")

        let running = try Self.curl(socket, "PUT", "/kestrel/memory/dump", #"{"mem_file_path": "\#(directory.path)/running.mem"}"#)
        #expect(running.0 == 400 && running.1.contains("must be paused"), "\(running)")
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        let overSocket = try Self.curl(socket, "PUT", "/kestrel/memory/dump", #"{"mem_file_path": "\#(socket)"}"#)
        #expect(overSocket.0 == 400 && overSocket.1.contains("socket"), "\(overSocket)")
        let dump = try Self.curl(socket, "PUT", "/kestrel/memory/dump", #"{"mem_file_path": "\#(directory.path)/dump.mem"}"#)
        #expect(dump.0 == 200 && dump.1.contains(#""size":134217728"#), "\(dump)")
        let (paused, _) = try dirtyCount()
        let dirtyDump = try Self.curl(socket, "PUT", "/kestrel/memory/dump", #"{"mem_file_path": "\#(directory.path)/dirty.mem", "dirty_only": true}"#)
        #expect(dirtyDump.0 == 200 && dirtyDump.1.contains(#""bytes_written":\#(paused * 4096)"#), "\(paused) pages: \(dirtyDump)")
        let created = try Self.curl(socket, "PUT", "/snapshot/create",
                                    #"{"snapshot_path": "\#(directory.path)/vm.state", "mem_file_path": "\#(directory.path)/vm.mem"}"#)
        #expect(created.0 == 204, "\(created)")
        let compare = try HostProcess.output(["cmp", directory.path + "/dump.mem", directory.path + "/vm.mem"])
        #expect(compare.status == 0, "the dump is the Full snapshot's memory: \(compare.output)")
        // The snapshot counts from now: the report too.
        #expect(try dirtyCount().1.contains(#""since":"snapshot""#))
        process.signal(SIGKILL)
        _ = process.wait()
        withExtendedLifetime(directory) {}
    }
}
