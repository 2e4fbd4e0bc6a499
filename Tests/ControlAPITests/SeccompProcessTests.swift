import Glibc
import Lab
import Testing

/// `kestrel run`'s seccomp filters as a process on this machine's KVM, with
/// the crafted counter guest: every thread of a running Kestrel is filtered
/// (mode 2 in /proc/PID/task/*/status), none with --no-seccomp, and a vCPU
/// thread that makes a call outside its list ends Kestrel with one line.
@Suite(.serialized, .timeLimit(.minutes(5))) struct SeccompProcessTests {
    /// The Seccomp: mode of each thread of `pid`, by thread id.
    static func modes(_ pid: pid_t) -> [String: String] {
        var result: [String: String] = [:]
        guard let directory = opendir("/proc/\(pid)/task") else { return result }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard !name.hasPrefix(".") else { continue }
            // A thread that ended between the listing and the read has no status: it is not counted.
            guard let status = try? readText("/proc/\(pid)/task/\(name)/status"), status.contains("Seccomp:") else { continue }
            let comm = ((try? readText("/proc/\(pid)/task/\(name)/comm")) ?? "").split(separator: "\n").first.map(String.init) ?? ""
            // KVM's own kernel threads (kvm-nx-lpage-recovery) are children, not Kestrel's.
            guard !comm.hasPrefix("kvm") else { continue }
            result[name] = status.split(separator: "\n").first { $0.hasPrefix("Seccomp:") }.map { String($0.dropFirst(8)).filter { !$0.isWhitespace } }
        }
        return result
    }

    /// The kernel's name (comm) of each thread of `pid`.
    static func threadNames(_ pid: pid_t) -> [String] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard !name.hasPrefix("."), let comm = try? readText("/proc/\(pid)/task/\(name)/comm") else { continue }
            names.append(comm.split(separator: "\n").first.map(String.init) ?? "")
        }
        return names
    }

    func runCounter(_ extra: [String], in directory: TemporaryDirectory) throws -> HostProcess {
        let kernel = directory.path + "/counter.elf"
        try writeFileAtomically(APIProcessTests.counterKernel(), to: kernel)
        return try HostProcess.start([try APIProcessTests.kestrel(), "run", "--kernel", kernel, "--memory", "64M"] + extra,
                                     stdout: .file(directory.path + "/out"), stderr: .file(directory.path + "/err"))
    }

    @Test(.enabled(if: APIProcessTests.requireKVM(), "needs a usable /dev/kvm")) func everyThreadOfARunningKestrelIsFilteredUnlessTurnedOff() throws {
        for (flags, expected) in [([String](), "2"), (["--no-seccomp"], "0")] {
            let directory = try TemporaryDirectory(prefix: "kestrel-seccomp")
            let socket = directory.path + "/api.sock"
            let process = try runCounter(flags + ["--api-sock", socket, "--verbose"], in: directory)
            defer { if process.poll() == nil { process.signal(SIGKILL); _ = process.wait() } }
            #expect(APIProcessTests.waitFor(20) { APIProcessTests.lines(directory.path + "/out") >= 3 }, "the guest runs under the filters")
            // The API is served under its list: a request, then a snapshot-free pause and resume.
            #expect(try APIProcessTests.curl(socket, "PATCH", "/vm", #"{"state": "Paused"}"#).0 == 204)
            #expect(try APIProcessTests.curl(socket, "PATCH", "/vm", #"{"state": "Resumed"}"#).0 == 204)
            // The main thread takes its list last, after the vCPUs run and the
            // start-up pages are released, which a loaded machine delays.
            _ = APIProcessTests.waitFor(20) {
                let modes = Self.modes(process.process)
                return modes.count >= 4 && modes.values.allSatisfy { $0 == expected }
            }
            let modes = Self.modes(process.process)
            #expect(modes.count >= 4 && modes.values.allSatisfy { $0 == expected }, "\(flags): \(modes)")
            // Firecracker's vCPU thread name, which Kata Containers looks for, with the filters or without.
            let names = Self.threadNames(process.process)
            #expect(names.contains("fc_vcpu 0") && !names.contains("k-vcpu"), "\(flags): \(names)")
            process.signal(SIGTERM)
            #expect(APIProcessTests.exitStatus(process, within: 10) == 128 + SIGTERM, "\((try? readText(directory.path + "/err")) ?? "")")
            let errors = (try? readText(directory.path + "/err")) ?? ""
            if expected == "2" {
                #expect(errors.contains("seccomp allow-lists (system calls): vmm ") && errors.contains("vcpu "), "\(errors)")
                print(errors.split(separator: "\n").first { $0.contains("allow-lists") } ?? "")
            }
        }
    }

    @Test(.enabled(if: APIProcessTests.requireKVM(), "needs a usable /dev/kvm")) func aForbiddenCallFromAVCPUThreadEndsKestrelWithOneLine() throws {
        for kind in ["vcpu", "virtio", "vmm"] {
            let directory = try TemporaryDirectory(prefix: "kestrel-seccomp")
            let process = try runCounter(["--seccomp-probe", kind], in: directory)
            let status = APIProcessTests.exitStatus(process, within: 20)
            let errors = (try? readText(directory.path + "/err")) ?? ""
            #expect(status == 128 + SIGSYS, "\(kind): status \(String(describing: status)): \(errors)")
            let lines = errors.split(separator: "\n").filter { $0.contains("seccomp:") }
            #expect(lines == ["kestrel: seccomp: the \(kind) thread made system call 110, which its allow-list does not hold; ending (--no-seccomp turns the filters off)"],
                    "\(kind): \(errors)")
        }
        let directory = try TemporaryDirectory(prefix: "kestrel-seccomp")
        let refused = try HostProcess.output([try APIProcessTests.kestrel(), "run", "--kernel", "/nonexistent", "--seccomp-probe", "gpu"])
        #expect(refused.status != 0 && refused.errors.contains("known: vmm, api, vcpu"), "\(refused)")
        withExtendedLifetime(directory) {}
    }
}
