import Glibc
import KVM
import Lab
import Testing
import VMM

extension APIProcessTests {
    static func dirtyRingAvailable() -> Bool {
        guard requireKVM(), let vm = try? KVMSystem().createVirtualMachine() else { return false }
        return ((try? vm.dirtyRingLimit().bytes) ?? 0) >= 4096
    }

    /// The writing guest (8192 pages from 64 MiB, rewritten every pass) with
    /// track_dirty_pages, once with each `dirty_log`: the report names all
    /// 8192 pages, and a Diff after a Full holds at least them. With Ring,
    /// each pass fills the 4096-entry rings twice over, so the vCPU's
    /// KVM_EXIT_DIRTY_RING_FULL harvests are on the way.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"), .timeLimit(.minutes(2)))
    func theDirtyBitmapFindsThePagesTheGuestWrites() throws { try checkDirtyLog(mode: "Bitmap") }

    @Test(.enabled(if: dirtyRingAvailable(), "needs KVM_CAP_DIRTY_LOG_RING"), .timeLimit(.minutes(2)))
    func theDirtyRingFindsThePagesTheGuestWrites() throws { try checkDirtyLog(mode: "Ring") }

    func checkDirtyLog(mode: String) throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-dirty")
        let kernel = directory.path + "/writer.elf", socket = directory.path + "/a.sock", out = directory.path + "/out", err = directory.path + "/err"
        try writeFileAtomically(CraftedGuest.writer(), to: kernel)
        let process = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(err))
        var reaped = false
        defer { if !reaped, process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
        #expect(Self.waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try Self.curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        let config = try Self.curl(socket, "PUT", "/machine-config",
                                   #"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true, "dirty_log": "\#(mode)"}"#)
        #expect(config.0 == 204, "\(config)")
        #expect(try Self.curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        func passes() -> Int { ((try? readBytes(out)) ?? []).filter { $0 == UInt8(ascii: ".") }.count }
        var ended: Int32?
        /// The host's KVM overfilled a ring (FINDINGS.md section 21), at whatever point of the run: Kestrel must
        /// end the run with that diagnosis, not spin. The control is the host's own warning, and the Bitmap test
        /// on the same guest.
        func ringLostByHost() -> Bool {
            ended = ended ?? process.poll()
            guard mode == "Ring", ended != nil,
                  ((try? readText(err)) ?? "").contains("lost track of this vCPU's dirty ring") else { return false }
            reaped = true
            let kernelLog = (try? HostProcess.output(["dmesg"]).output) ?? ""
            #expect(kernelLog.contains("kvm_dirty_ring_push"), "Kestrel saw a lost ring, but the host logged no kvm_dirty_ring_push warning")
            withKnownIssue("host defect: this KVM pushes past the dirty ring's soft limit without KVM_EXIT_DIRTY_RING_FULL (kvm_dirty_ring_push warned)") {
                Issue.record("dirty_log Ring cannot work on this host; Kestrel ended the run with the diagnosis")
            }
            return true
        }
        /// Pauses the guest, so that nothing runs while the test reads the log; false when the host lost a ring
        /// first (the vCPU runs, and can lose it, until the pause lands).
        func pauseUnlessRingLost() throws -> Bool {
            let paused = try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#)
            if paused.0 != 204 {
                _ = Self.waitFor(5) { ended = ended ?? process.poll(); return ended != nil }
                if ringLostByHost() { return false }
            }
            #expect(paused.0 == 204, "\(mode): \(paused)")
            return true
        }
        _ = Self.waitFor(30) { ended = ended ?? process.poll(); return passes() >= 3 || ended != nil }
        reaped = ended != nil
        if ringLostByHost() { return }
        #expect(passes() >= 3, "\(mode): the guest made \(passes()) passes; \((try? readText(err)) ?? "")")
        guard try pauseUnlessRingLost() else { return }
        #expect(try Self.curl(socket, "GET", "/vm/config").1.contains(mode == "Ring" ? #""dirty_log":"Ring""# : #""track_dirty_pages":true"#))
        let dirty = try Self.curl(socket, "GET", "/kestrel/memory/dirty")
        // Pages 16384 to 24575 (64 MiB to 96 MiB) lie inside one run.
        let runs = dirty.1.components(separatedBy: "\"runs\":").last ?? ""
        let covered = runs.split(separator: "]").compactMap { part -> (Int, Int)? in
            let numbers = part.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            return numbers.count == 2 ? (numbers[0], numbers[1]) : nil
        }.contains { $0.0 <= 16384 && $0.0 + $0.1 >= 24576 }
        #expect(dirty.0 == 200 && covered, "\(mode): \(dirty.1.prefix(400))")
        let state = directory.path + "/s", base = directory.path + "/base.mem", diff = directory.path + "/d.mem"
        #expect(try Self.curl(socket, "PUT", "/snapshot/create", #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(base)"}"#).0 == 204)
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
        let before = passes()
        let passed = Self.waitFor(30) { ended = ended ?? process.poll(); return passes() >= before + 2 || ended != nil }
        if ringLostByHost() { return }
        #expect(passed && ended == nil, "\(mode): the guest made \(passes() - before) passes after the snapshot; \((try? readText(err)) ?? "")")
        guard try pauseUnlessRingLost() else { return }
        let created = try Self.curl(socket, "PUT", "/snapshot/create",
                                    #"{"snapshot_type": "Diff", "snapshot_path": "\#(state)-d", "mem_file_path": "\#(diff)"}"#)
        #expect(created.0 == 204, "\(created)")
        var status = stat()
        #expect(stat(diff, &status) == 0 && status.st_blocks * 512 >= 32 << 20, "\(mode): the Diff holds the 32 MiB the guest rewrote: \(status.st_blocks * 512) bytes")
        let log = (try? readText(err)) ?? ""
        #expect(log.contains("snapshot: Diff") && !log.contains("harvesting the dirty rings"), "\(log.suffix(600))")
        process.signal(SIGKILL)
        _ = process.wait()
        withExtendedLifetime(directory) {}
    }
}
