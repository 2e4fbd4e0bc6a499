import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import HostSystem
import Lab
import Synchronization

/// Runs `kestrel check --json` on several L1 kernels and on this machine,
/// and gathers the documents into a `LabMatrix`.
struct LabCheckMatrix {
    let options: LabMachineOptions
    let filters: [String]
    let jobs: Int

    var checkWords: [String] { ["check", "--json"] + filters.flatMap { ["-f", $0] } }

    /// One column: a kernel, on QEMU or (`NAME@bochs[:MODEL]`) on Bochs.
    struct Column {
        let title: String
        let kernel: LabKernel
        let bochsModel: String?

        static func parse(_ name: String, options: LabMachineOptions) throws -> Column {
            let parts = name.split(separator: "@", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { return Column(title: name, kernel: try options.resolveKernel(named: name), bochsModel: nil) }
            let host = parts[1].split(separator: ":", maxSplits: 1).map(String.init)
            guard host[0] == "bochs" else { throw ValidationError("\(name): the host after @ is bochs (or bochs:MODEL)") }
            let model = host.count > 1 ? host[1] : LabBochs.defaultModel
            if let why = LabBochs.unknownModel(model) { throw ValidationError("\(name): " + why) }
            return Column(title: name, kernel: try options.resolveKernel(named: parts[0]), bochsModel: model)
        }
    }

    func run(kernels names: [String], includeLocal: Bool) throws -> LabMatrix {
        // Fetch sequentially (one apt run at a time), and strip kestrel once.
        let kernels = try names.map { try Column.parse($0, options: options) }
        if kernels.contains(where: { $0.bochsModel != nil }) {
            _ = try LabBochs.prepare(cache: LabCache(), progress: { printError("lab: \($0)") })
        }
        _ = try LabExecutable.prepare(options.kestrel ?? "/proc/self/exe", cache: LabCache())
        let started = ContinuousClock.now
        let columns = Mutex([MatrixColumn?](repeating: nil, count: kernels.count))
        let slots = DispatchSemaphore(value: jobs)
        let group = DispatchGroup()
        for (index, kernel) in kernels.enumerated() {
            slots.wait()
            DispatchQueue.global().async(group: group) {
                defer { slots.signal() }
                let column = l1Column(kernel)
                printError("lab: \(kernel.title): \(column.document.map { "\($0.totals.passed) passed, \($0.totals.failed) failed, \($0.totals.skipped) skipped" } ?? "no result") in \((column.seconds ?? 0).text(places: 1)) s")
                columns.withLock { $0[index] = column }
            }
        }
        group.wait()
        // After the L1s, not beside them: on a busy host QEMU 7.2's TCG killed L1s more often (FINDINGS.md section 6).
        let local = includeLocal ? localColumn() : nil
        printError("lab: matrix of \(kernels.count) kernels\(includeLocal ? " and this machine" : "") in \(LabMachine.seconds(ContinuousClock.now - started).text(places: 1)) s")
        return LabMatrix(columns: (local.map { [$0] } ?? []) + columns.withLock { $0.compactMap { $0 } })
    }

    func l1Column(_ column: Column) -> MatrixColumn {
        let start = ContinuousClock.now
        let kernel = column.kernel
        do {
            let output = try TemporaryDirectory(prefix: "kestrel-matrix")
            let path = output.path + "/check.json"
            let machine = try options.machine(for: kernel, bochsModel: column.bochsModel)
            let image = try options.initramfs(kernel: kernel, command: .script((["kestrel"] + checkWords).map(shellQuoted).joined(separator: " ")))
            let result = try machine.run(image, stdout: .file(path), stderr: nil)
            let retried = result.deaths.isEmpty ? ""
                : " (booted \(result.boots) time\(result.boots == 1 ? "" : "s"); the L1's \(result.deaths.map(\.summary).joined(separator: "; the L1's ")))"
            let seconds = LabMachine.seconds(ContinuousClock.now - start)
            let title = column.title
            guard result.status != nil, result.failingDeath == nil else {
                return MatrixColumn(title: title, host: result.host.summary + retried, document: nil, error: result.failureDiagnosis, seconds: seconds)
            }
            do {
                return MatrixColumn(title: title, host: result.host.summary + retried, document: try CheckDocument.parse(try readText(path)), seconds: seconds)
            } catch {
                return MatrixColumn(title: title, host: result.host.summary + retried, document: nil, error: "\(error)", seconds: seconds)
            }
        } catch {
            return MatrixColumn(title: column.title, host: "L1 \(kernel.release)", document: nil, error: "\(error)", seconds: nil)
        }
    }

    /// This machine's /dev/kvm, checked by a child `kestrel check --json`.
    func localColumn() -> MatrixColumn {
        let start = ContinuousClock.now
        let release = HostKernel.release
        let backend = ["kvm_pvm", "kvm_intel", "kvm_amd"].first { isDirectory("/sys/module/\($0)") } ?? "no KVM module"
        let host = "this machine: Linux \(release), /dev/kvm from \(backend)"
        do {
            let result = try HostProcess.output(["/proc/self/exe"] + checkWords)
            let document = try CheckDocument.parse(result.output)
            return MatrixColumn(title: "local", host: host, document: document, seconds: LabMachine.seconds(ContinuousClock.now - start))
        } catch {
            return MatrixColumn(title: "local", host: host, document: nil, error: "\(error)", seconds: nil)
        }
    }
}

extension LabMatrix {
    func renderJSON() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}
