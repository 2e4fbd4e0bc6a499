import Glibc
import HostSystem
import Lab
import Testing
import VMM

extension APIProcessTests {
    /// scripts/uffd-handler.py, the page-fault handler written from
    /// Firecracker's documentation alone.
    static func uffdHandlerScript() -> String {
        var script = #filePath
        for _ in 0..<3 { script = String(script[..<script.lastIndex(of: "/")!]) }
        return script + "/scripts/uffd-handler.py"
    }

    static func userfaultAvailable() -> Bool { (try? Userfault()) != nil }

    /// Starts `kestrel run --api-sock` in `directory` (a.sock, out, err) and
    /// boots the counting guest with `machineConfig` extra fields, waiting for
    /// its first four lines. The caller ends the process.
    static func bootCountingGuest(in directory: String, machineConfig extra: String = "") throws -> (process: HostProcess, socket: String, out: String) {
        let kernel = directory + "/counter.elf", socket = directory + "/a.sock", out = directory + "/out"
        try writeFileAtomically(counterKernel(), to: kernel)
        let process = try HostProcess.start([try kestrel(), "run", "--api-sock", socket], stdout: .file(out), stderr: .file(directory + "/err"))
        #expect(waitFor(10) { access(socket, F_OK) == 0 })
        #expect(try curl(socket, "PUT", "/boot-source", #"{"kernel_image_path": "\#(kernel)"}"#).0 == 204)
        #expect(try curl(socket, "PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128\#(extra)}"#).0 == 204)
        #expect(try curl(socket, "PUT", "/actions", #"{"action_type": "InstanceStart"}"#).0 == 204)
        #expect(waitFor(20) { lines(out) >= 4 }, "the guest printed \(lines(out)) lines")
        return (process, socket, out)
    }

    /// One snapshot of the counting guest, loaded in a fresh process with
    /// each memory backend: `paging` Eager, OnDemand and Prefault, and Uffd
    /// served by scripts/uffd-handler.py. Each time the count goes on
    /// unbroken from where it stopped; Eager and a finished Prefault leave
    /// no mapping of the memory file; the handler copied pages. A Uffd load
    /// whose handler socket is missing is a 400, and the same process then
    /// loads with the handler.
    @Test(.enabled(if: requireKVM(), "needs a usable /dev/kvm"),
          .enabled(if: userfaultAvailable(), "needs userfaultfd(2) with kernel faults (root or vm.unprivileged_userfaultfd)"),
          .timeLimit(.minutes(3)))
    func everyMemoryBackendRestoresTheCountingGuest() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-lazy")
        let state = directory.path + "/vm.state", memory = directory.path + "/vm.mem"
        let (first, socket, out) = try Self.bootCountingGuest(in: directory.path)
        defer { if first.poll() == nil { first.signal(SIGKILL); _ = first.wait() } }
        #expect(try Self.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
        let created = try Self.curl(socket, "PUT", "/snapshot/create", #"{"snapshot_path": "\#(state)", "mem_file_path": "\#(memory)"}"#)
        #expect(created.0 == 204, "\(created)")
        usleep(300_000)
        first.signal(SIGKILL)
        _ = first.wait()
        let before = try readText(out)
        let counted = try Self.unbrokenCount(before).get()

        for backend in ["Eager", "OnDemand", "Prefault", "Uffd"] {
            let name = backend.lowercased()
            let apiSocket = directory.path + "/\(name).sock", output = directory.path + "/out-\(name)", errors = directory.path + "/err-\(name)"
            var handler: HostProcess?
            let handlerSocket = directory.path + "/uffd-handler.sock", handlerLog = directory.path + "/handler.log"
            let process = try HostProcess.start([try Self.kestrel(), "run", "--api-sock", apiSocket], stdout: .file(output), stderr: .file(errors))
            defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
            #expect(Self.waitFor(10) { access(apiSocket, F_OK) == 0 })
            let body: String
            if backend == "Uffd" {
                body = #"{"backend_type": "Uffd", "backend_path": "\#(handlerSocket)"}"#
                // No handler yet: refused by name, and nothing starts.
                let missing = try Self.curl(apiSocket, "PUT", "/snapshot/load", #"{"snapshot_path": "\#(state)", "mem_backend": \#(body), "resume_vm": true}"#)
                #expect(missing.0 == 400 && missing.1.contains("cannot reach the page-fault handler at \(handlerSocket)"), "\(missing)")
                #expect(try Self.curl(apiSocket, "GET", "/").1.contains(#""state":"Not started""#))
                handler = try HostProcess.start(["python3", Self.uffdHandlerScript(), handlerSocket, memory], stdout: .null, stderr: .file(handlerLog))
                #expect(Self.waitFor(10) { access(handlerSocket, F_OK) == 0 }, "the handler listens")
            } else {
                body = #"{"backend_type": "File", "backend_path": "\#(memory)", "paging": "\#(backend)"}"#
            }
            defer { if let handler, handler.poll() == nil { handler.signal(SIGKILL); _ = handler.wait() } }
            let loadStart = ContinuousClock.now
            let loaded = try Self.curl(apiSocket, "PUT", "/snapshot/load", #"{"snapshot_path": "\#(state)", "mem_backend": \#(body), "resume_vm": true}"#)
            let loadTook = ContinuousClock.now - loadStart
            #expect(loaded.0 == 204, "\(backend): \(loaded) \((try? readText(errors)) ?? "")")
            #expect(Self.waitFor(20) { Self.lines(output) >= 4 }, "\(backend): the restored guest printed \(Self.lines(output)) lines")
            if backend == "Eager" || backend == "Prefault" {
                // Eager never maps the file; the prefault lets go of it once all is in.
                #expect(Self.waitFor(10) { !((try? readText("/proc/\(process.process)/maps")) ?? memory).contains(memory) },
                        "\(backend): RAM no longer maps the memory file")
            }
            process.signal(SIGTERM)
            #expect(Self.exitStatus(process, within: 10) == 128 + SIGTERM, "\(backend)")
            let after = try readText(output)
            switch Self.unbrokenCount(before + after) {
            case .success(let total): #expect(total > counted + 3, "\(backend): the count went on: \(counted) lines, then \(total)")
            case .failure(let error): Issue.record("\(backend): the count broke at the restore: \(error)\nafter: \(after.prefix(40))")
            }
            if let handler {
                #expect(Self.exitStatus(handler, within: 10) == 0, "the handler ends when Kestrel closes its connection")
                let log = (try? readText(handlerLog)) ?? ""
                let copied = log.split(separator: "\n").last { $0.contains("pages copied") }
                #expect(copied != nil && !log.contains("Traceback") && !copied!.contains("done: 0 pages"), "handler: \(log)")
                print("uffd handler: \(copied ?? "?")")
            }
            print("restore \(backend): PUT /snapshot/load answered in \(loadTook) (debug build)")
        }
        withExtendedLifetime(directory) {}
    }
}
