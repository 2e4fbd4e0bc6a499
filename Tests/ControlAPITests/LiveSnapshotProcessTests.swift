import Glibc
import KVM
import Lab
import Testing
import VMM

extension APIProcessTests {
    /// The writing guest on shared RAM, snapshotted live while it rewrites
    /// its 8192 pages (each gets the pass number): the guest keeps running,
    /// the memory file holds one instant (pages of pass M up to one place,
    /// of pass M-1 after it; a page copied after the guest wrote it would
    /// break that), and the snapshot restores in a new process, whose guest
    /// goes on writing.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(2)))
    func aLiveSnapshotHoldsOneInstantWhileTheGuestRuns() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-live")
        let kernel = directory.path + "/writer.elf", socket = directory.path + "/a.sock", out = directory.path + "/out", err = directory.path + "/err"
        try writeFileAtomically(CraftedGuest.writer(), to: kernel)
        let process = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(err))
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        let config = try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 256, "memory_backend": "shared"}"#)
        #expect(config.0 == 204, "\(config)")
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        func passes(_ path: String) -> Int { ((try? readBytes(path)) ?? []).filter { $0 == UInt8(ascii: ".") }.count }
        #expect(Self.waitFor(30) { passes(out) >= 2 }, "\((try? readText(err)) ?? "")")
        let regions = try Self.curl(socket, "GET", "/kestrel/memory")
        #expect(regions.1.contains(#""backing":"shared""#), "\(regions)")

        let state = directory.path + "/live.state", memory = directory.path + "/live.mem"
        let live = try Self.curl(socket, "PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(memory)"}"#)
        #expect(live.0 == 200 && live.1.contains("\"pause_us\":"), "\(live); \((try? readText(err)) ?? "")")
        let after = passes(out)
        #expect(Self.waitFor(30) { passes(out) >= after + 2 }, "the guest stopped after the live snapshot: \((try? readText(err)) ?? "")")
        let log = (try? readText(err)) ?? ""
        #expect(log.contains("snapshot: Live") && log.contains("the guest paused for"), "\(log.suffix(600))")

        // The pass numbers in the file, page by page from 64 MiB.
        let bytes = try readBytes(memory)
        #expect(bytes.count == 256 << 20)
        let values = (0..<8192).map { page -> UInt32 in
            let offset = (64 << 20) + page * 4096
            return bytes.count >= offset + 4 ? bytes[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } : .max
        }
        let boundary = values.firstIndex { $0 != values[0] } ?? values.count
        let consistent = values[boundary...].allSatisfy { $0 == values[0] &- 1 }
        #expect(consistent, "the file holds more than one instant: pass \(values[0]) up to page \(boundary), then \(Set(values[boundary...]).sorted().prefix(8))")

        // The snapshot restores in a new process, and its guest goes on.
        process.signal(SIGKILL)
        _ = process.wait()
        let socket2 = directory.path + "/b.sock", out2 = directory.path + "/out2", err2 = directory.path + "/err2"
        let clone = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket2], stdout: .file(out2), stderr: .file(err2))
        defer { if clone.poll() == nil { clone.signal(SIGKILL); _ = clone.wait() } }
        #expect(Self.waitFor(10) { access(socket2, F_OK) == 0 })
        let loaded = try Self.curl(socket2, "PUT", "/snapshot/load",
                                   #"{"snapshot_path": "\#(state)", "mem_backend": {"backend_type": "File", "backend_path": "\#(memory)"}, "resume_vm": true}"#)
        #expect(loaded.0 == 204, "\(loaded)")
        #expect(Self.waitFor(30) { passes(out2) >= 2 }, "the restored guest made \(passes(out2)) passes: \((try? readText(err2)) ?? "")")
        withExtendedLifetime(directory) {}
    }

    /// A live snapshot of a guest on anonymous RAM is refused, naming the
    /// backend it needs, and the guest runs on.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(1)))
    func aLiveSnapshotNeedsSharedRAM() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-live")
        let kernel = directory.path + "/writer.elf", socket = directory.path + "/a.sock", out = directory.path + "/out"
        try writeFileAtomically(CraftedGuest.writer(), to: kernel)
        let process = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .null)
        defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128}"#).0 == 204)
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        let state = directory.path + "/s", memory = directory.path + "/m"
        let live = try Self.curl(socket, "PUT", "/kestrel/snapshot/live", #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(memory)"}"#)
        #expect(live.0 == 400 && live.1.contains("memory_backend"), "\(live)")
        #expect(access(state, F_OK) != 0 && access(memory, F_OK) != 0)
        let now = ((try? readBytes(out)) ?? []).count
        #expect(Self.waitFor(20) { ((try? readBytes(out)) ?? []).count > now })
        withExtendedLifetime(directory) {}
    }
}
