import Glibc
import TextFormat

/// How QEMU runs the L1: hardware virtualization with nested KVM when this
/// machine offers it, otherwise TCG emulating a CPU with SVM.
public enum LabAccelerator: String, Codable, Sendable, CaseIterable {
    case kvm, tcg

    /// KVM when /dev/kvm is usable and kvm_intel or kvm_amd has nesting on;
    /// TCG otherwise, with the reason.
    public static func detect() -> (accelerator: LabAccelerator, reason: String) {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return (.tcg, "no usable /dev/kvm") }
        for module in ["kvm_intel", "kvm_amd"] {
            if let value = try? readText("/sys/module/\(module)/parameters/nested"),
               ["Y", "1"].contains(value.trimmingPrefix(while: { $0 == " " }).prefix(1)) {
                return (.kvm, "\(module) with nested virtualization")
            }
        }
        let backend = ["kvm_pvm", "kvm_intel", "kvm_amd"].first { isDirectory("/sys/module/\($0)") } ?? "unknown backend"
        return (.tcg, "/dev/kvm (\(backend)) does not offer nested virtualization")
    }
}

/// What a lab run reports about the host it ran on.
public struct LabHostDescription: Codable, Equatable, Sendable {
    public var kernelName: String
    public var kernelRelease: String
    public var qemuVersion: String
    public var accelerator: String
    public var cpuModel: String
    /// The KVM vendor module the L1 loaded (kvm_amd, kvm_intel) or "none".
    public var kvmModule: String

    public var summary: String {
        "L1 \(kernelRelease) under \(qemuVersion), \(accelerator), CPU \(cpuModel), \(kvmModule)"
    }

    /// Kernel oops, BUG and WARNING lines in an L1 console.
    public static func kernelProblems(in console: String) -> [String] {
        consoleLines(console).filter(isProblem)
    }

    /// Whether a console line starts or reports a kernel failure.
    public static func isProblem(_ line: String) -> Bool {
        line.contains("Oops") || line.contains("BUG:") || line.contains("WARNING:") || line.contains("Kernel panic")
    }
}

/// The outcome of one L1 boot.
public struct LabRunResult: Sendable {
    /// The command's exit status, or nil when the L1 ended without reporting one.
    public var status: Int32?
    public var host: LabHostDescription
    /// Host seconds from QEMU's start until the L1 was ready to run the command
    /// (modules loaded), and until QEMU ended.
    public var readySeconds: Double?
    public var totalSeconds: Double
    /// Whether the L1 reported "ready" and so started the command (also when
    /// QEMU ended before the host saw the line while polling).
    public var commandStarted: Bool { readySeconds != nil || sawReady }
    var sawReady = false
    public var timedOut: Bool
    /// The L1 stopped running its own processes: its heartbeat went silent
    /// for `heartbeatSilenceLimit` seconds while the command ran, and it was
    /// stopped.
    public var froze = false
    /// The machine's `LabMachine.heartbeatSilenceLimit`, for the messages.
    public var heartbeatSilenceLimit = LabMachine.frozenAfterSecondsUnderQEMU
    /// The L1 kernel's console (COM2).
    public var console: String
    /// QEMU's own exit status.
    public var qemuStatus: Int32
    /// The end of the L0's own log (Bochs's), for a diagnosis; empty under QEMU.
    public var emulatorLog = ""
    /// Every boot of this run that died or whose kernel logged a trace in KVM
    /// or in a Kestrel process, in order, each with its kept console. The
    /// last boot is among them when it failed too.
    public var deaths: [L1Death] = []

    /// The death that makes this run a failure: the last boot's, when it
    /// died or logged a trace that is a failure whatever else happened.
    public var failingDeath: L1Death? {
        guard let last = deaths.last, last.boot == boots else { return nil }
        return last
    }

    /// How many times the L1 was booted.
    public var boots = 1

    /// Why the run failed, for the user: no status, or a trace in KVM or in
    /// a Kestrel process even though the command reported one.
    public var failureDiagnosis: String? {
        if status != nil, failingDeath == nil { return nil }
        let tail = consoleLines(console).suffix(25).joined(separator: "\n")
        let why = failingDeath.map { death in
            "the L1's \(death.summary)" + (death.trace.isEmpty ? "" : "\n" + death.trace.joined(separator: "\n"))
        } ?? (froze ? "the L1 stopped responding (no heartbeat for \(Int(heartbeatSilenceLimit)) s) and was stopped"
            : timedOut ? "the L1 did not finish in time and was stopped"
            : "the L1 ended without reporting a status (QEMU exited with \(qemuStatus))")
        return "\(why)\nthe end of its console:\n\(tail)" + (emulatorLog.isEmpty ? "" : "\nthe end of the emulator's log:\n" + emulatorLog)
    }
}

/// The L1's serial ports, in ttyS order.
public enum LabSerialPorts {
    public struct Port: Sendable {
        public let chardev: String
        public let base: Int
        public let irq: Int
    }

    public static let all = [
        Port(chardev: "out", base: 0x3F8, irq: 4),      // ttyS0: the command's standard output (and the shell)
        Port(chardev: "console", base: 0x2F8, irq: 3),  // ttyS1: the L1 kernel's console
        Port(chardev: "err", base: 0x3E8, irq: 5),      // ttyS2: the command's standard error
        Port(chardev: "status", base: 0x2E8, irq: 7),   // ttyS3: "ready" and "status N" lines
    ]
}

/// One L1 machine under QEMU.
public struct LabMachine {
    public var kernel: LabKernel
    public var accelerator: LabAccelerator
    public var cpuModel: String
    public var cpus: Int = 1
    public var memoryMiB: Int = 2048
    public var kernelArguments: String = ""
    public var timeoutSeconds: Double = 600
    /// Extra arguments for QEMU (e.g. `-icount`), appended last.
    public var qemuArguments: [String] = []
    /// The L0: the system's QEMU unless another is chosen (`--qemu`).
    public var qemu = LabQEMU.system
    /// Bochs instead of QEMU as the L0 (`--host bochs`): an Intel CPU with
    /// VMX, `cpuModel` one of `LabBochs.models`.
    public var bochs: LabBochs?
    /// Under Bochs, kvm_intel is loaded with `enable_apicv=0` unless this is
    /// set: Bochs 3.0 demands a 4 KiB-aligned posted-interrupt descriptor
    /// (the SDM asks 64 bytes), so with APICv every vCPU with an in-kernel
    /// local APIC fails VM entry (KVM_EXIT_FAIL_ENTRY, reason 0x7).
    public var keepAPICv = false
    /// Under Bochs, the L1 boots with `nopku` (`LabBochs.kernelArguments`)
    /// unless this is set: with PKRU in the L1's XCR0, KVM restores its
    /// guests' FPU state with a mask without PKRU, and Bochs 3.0's XRSTORS
    /// then reads the CET components from the wrong offsets (FINDINGS.md
    /// section 18).
    public var keepPKU = false
    /// TCG with one host thread for all vCPUs (the default) or one per vCPU.
    /// Multi-threaded TCG with 2 vCPUs once oopsed a 7.2 L1 on an int3 during
    /// kernel text patching; scripts/lab-stability.py measures both.
    public var multiThreadedTCG = false
    /// NUMA nodes of the L1, memory split evenly (1: no NUMA topology).
    public var numaNodes = 1

    public init(kernel: LabKernel, accelerator: LabAccelerator, cpuModel: String? = nil) {
        self.kernel = kernel
        self.accelerator = accelerator
        self.cpuModel = cpuModel ?? (accelerator == .kvm ? "host" : "max")
    }

    /// How the L1's CPU runs: QEMU's accelerator, or "bochs".
    public var acceleratorName: String { bochs != nil ? "bochs" : accelerator.rawValue }

    /// The L0's version ("QEMU 10.0.2", "Bochs 3.0+dfsg-1"), or a note that it is missing.
    public func qemuVersion() -> String { bochs?.version() ?? qemu.version() }

    /// The L1 kernel's command line.
    public var commandLine: String {
        "console=ttyS1 panic=-1 quiet loglevel=5 8250.nr_uarts=4" + (bochs != nil && !keepPKU ? " " + LabBochs.kernelArguments : "")
            + (kernelArguments.isEmpty ? "" : " " + kernelArguments)
    }

    /// QEMU's command line for an initramfs at `initrd`, with the serial ports
    /// wired as `LabInitramfs` expects; console and status go to files in `directory`.
    public func arguments(initrd: String, directory: String, interactive: Bool) -> [String] {
        let acceleratorOption = accelerator == .kvm ? "kvm" : "tcg,thread=\(multiThreadedTCG ? "multi" : "single")"
        var arguments = qemu.commandPrefix + [
            "-M", "pc", "-accel", acceleratorOption, "-cpu", cpuModel, "-smp", String(cpus), "-m", String(memoryMiB),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", kernel.bzImage, "-initrd", initrd,
            "-append", commandLine,
            "-chardev", "stdio,id=out,signal=\(interactive ? "off" : "on")",
            "-chardev", "file,id=console,path=\(directory)/console.log",
            "-chardev", "file,id=err,path=\(directory)/errors",
            "-chardev", "file,id=status,path=\(directory)/status",
        ]
        // Four 16550s, each on its own IRQ: the PC's COM3 and COM4 share IRQs 4
        // and 3 with COM1 and COM2, and shared edge-triggered ISA lines lose
        // interrupts. QEMU describes each port in its DSDT, so the guest uses these IRQs.
        for (index, port) in LabSerialPorts.all.enumerated() {
            arguments += ["-device", "isa-serial,chardev=\(port.chardev),index=\(index),iobase=0x\(String(port.base, radix: 16)),irq=\(port.irq)"]
        }
        if numaNodes > 1 {
            for node in 0..<numaNodes {
                arguments += ["-object", "memory-backend-ram,id=node\(node),size=\(memoryMiB / numaNodes)M",
                              "-numa", "node,nodeid=\(node),memdev=node\(node)"]
            }
        }
        return arguments + qemuArguments
    }

    /// Boots the L1 with `initramfs`, runs its command, and waits for the end.
    /// The command's standard output goes to `stdout` (QEMU's standard output);
    /// its standard error is copied to the descriptor `stderr` while the L1 runs
    /// (nil drops it). `onReady` is called (from this thread, while polling)
    /// when the L1 is ready.
    ///
    /// Each boot is classified before anything else happens (`L1Death`). The
    /// console of every boot that died or logged a trace in KVM or in a
    /// Kestrel process is kept in `crashDirectory`, and the result names it.
    /// Only deaths FINDINGS.md section 6 ties to the emulator under the L1 (an
    /// Oops or panic while booting, outside KVM, or a silent heartbeat with no
    /// kernel message) are booted again, up to `bootAttempts` boots in all.
    /// The L1 is thrown away each time, but what the first boot's command
    /// already wrote to `stdout` stays there: callers that parse the output
    /// read the last boot's run, or allow one boot.
    public func run(_ initramfs: LabInitramfs, stdout: HostProcess.Stream = .inherit, stderr: Int32? = 2,
                    onReady: (Double) -> Void = { _ in }) throws -> LabRunResult {
        let work = try TemporaryDirectory(prefix: "kestrel-lab")
        let initrd = work.path + "/l1.cpio"
        var initramfs = initramfs
        if bochs != nil, !keepAPICv, initramfs.moduleParameters["kvm_intel"] == nil {
            initramfs.moduleParameters["kvm_intel"] = "enable_apicv=0"
        }
        try writeFileAtomically(try initramfs.build(), to: initrd)
        var deaths: [L1Death] = []
        var boot = 1
        while true {
            var result = try self.boot(initramfs, initrd: initrd, directory: work.path, stdout: stdout, stderr: stderr, onReady: onReady)
            let interactive = initramfs.command == .interactiveShell
            let plainTimeout = result.timedOut && !result.froze
            if var death = L1Death.classify(console: result.console, statusReported: result.status != nil || plainTimeout || interactive,
                                            froze: result.froze, whileCommandRan: result.commandStarted, boot: boot) {
                let kept = try L1Death.keep(console: work.path + "/console.log", kernel: kernel.name, boot: boot, in: crashDirectory)
                death.keptConsole = kept
                if death.kind == .frozen {
                    death.silentSeconds = result.heartbeatSilenceLimit
                    death.clockCrawlsWhenBusy = bochs != nil
                }
                // Bochs's own log (its panics, and the CPU state it dumps) beside the console.
                if bochs != nil, let log = try? readBytes(work.path + "/bochs.log") {
                    try writeFileAtomically(log, to: String(kept.dropLast(".console.log".count)) + ".bochs.log")
                }
                deaths.append(death)
            }
            result.deaths = deaths
            result.boots = boot
            // Under Bochs nothing is booted again: the deaths section 6 classifies
            // are TCG's, and none of Bochs's has been classified yet.
            guard let death = result.failingDeath, death.kind.retried, !interactive, bochs == nil, boot < bootAttempts else { return result }
            boot += 1
            for name in ["status", "errors", "console.log", "out"] { unlink(work.path + "/" + name) }
        }
    }

    /// Where the consoles of failed boots are kept: the lab cache's
    /// `crashes/` unless set. The lab never deletes them.
    public var crashDirectory = LabCache().root + "/crashes"

    /// Boots of the L1, at most (see `run`).
    public var bootAttempts = 3

    /// Single-CPU TCG L1s now and then stop running their own processes
    /// altogether while a 2-vCPU L2 boots (FINDINGS.md, section 6); the
    /// heartbeat comes every 5 s of the L1's time otherwise, and under QEMU
    /// the L1's clock keeps pace with the host's.
    public static let frozenAfterSecondsUnderQEMU = 60.0

    /// Under Bochs the L1's clock nearly stops whenever the L1's CPU is busy,
    /// running an L2 or its own work. While an L2 ran, its uptime went from
    /// 27.47 to 27.90 s over about 35 s of host time. A busybox `wc -c` of
    /// 64 MiB moved it 0.38 s over 27 s; a `sleep 20` took 39 s. The
    /// heartbeat sleeps in the L1's time, so it is silent for as long as the
    /// L1 stays busy: about 200 s for the Bochs lab test's four L2s, 4 min
    /// for the API test's run on this machine.
    ///
    /// In one CI run Bochs ran the same work about 3.7 times slower. The API
    /// test's L1 (which then still counted a 256 MiB file with `wc -c`) was
    /// silent past the 600 s this limit was then. It was not frozen: Bochs
    /// stopped it in busybox's `wc` loop, and its heartbeat had just written
    /// again.
    ///
    /// So the limit is 1200 s. With the default `--timeout` of 600 s, the
    /// timeout ends an L1 that stopped for good before this does. The limit
    /// tells a silent L1 apart in runs given longer (the lab tests give Bochs
    /// 1500 s). Under Bochs a silence means a frozen L1 or a busy one, and
    /// the death's summary says so.
    public static let frozenAfterSecondsUnderBochs = 1200.0

    /// How long the L1's heartbeat may be silent, once the command runs,
    /// before the L1 counts as frozen.
    public var heartbeatSilenceLimit: Double {
        bochs == nil ? Self.frozenAfterSecondsUnderQEMU : Self.frozenAfterSecondsUnderBochs
    }

    func boot(_ initramfs: LabInitramfs, initrd: String, directory: String, stdout: HostProcess.Stream, stderr: Int32?,
              onReady: (Double) -> Void) throws -> LabRunResult {
        let interactive = initramfs.command == .interactiveShell
        let start = ContinuousClock.now
        let process: HostProcess
        // Bochs writes the command's standard output (COM1) to a file, copied to `stdout` from there.
        var output: FileFollower?
        var outputDescriptor: Int32?
        defer { if case .file = stdout, let outputDescriptor { close(outputDescriptor) } }
        var terminalSettings: termios?
        defer { if var terminalSettings { tcsetattr(0, TCSAFLUSH, &terminalSettings) } }
        if let bochs {
            var terminal: String?
            if interactive {
                // Bochs takes this terminal for COM1 and makes it raw; it is put back as it was when Bochs ends, however it ends.
                guard isatty(0) == 1, let name = ttyname(0) else { throw LabError("an interactive shell on the Bochs host needs a terminal on standard input") }
                terminal = String(cString: name)
                var settings = termios()
                if tcgetattr(0, &settings) == 0 { terminalSettings = settings }
            }
            try bochs.prepareBoot(kernel: kernel.bzImage, initrd: initrd, commandLine: commandLine, model: cpuModel, cpus: cpus,
                                  memoryMiB: memoryMiB, directory: directory, interactive: interactive)
            switch stdout {
            case .inherit: outputDescriptor = 1
            case .null: outputDescriptor = nil
            case .descriptor(let fd): outputDescriptor = fd
            case .file(let path):
                outputDescriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                guard outputDescriptor! >= 0 else { throw LabError("cannot write \(path): \(String(cString: strerror(errno)))") }
            }
            if !interactive { output = FileFollower(path: directory + "/out", destination: outputDescriptor) }
            process = try HostProcess.start(bochs.command(directory: directory, terminal: terminal), stdin: .null, stdout: .null,
                                            stderr: .file(directory + "/bochs.stderr"))
        } else {
            process = try HostProcess.start(arguments(initrd: initrd, directory: directory, interactive: interactive),
                                            stdin: interactive ? .inherit : .null, stdout: stdout)
        }
        // The L1 writes the command's standard error to a file; copying it from
        // there keeps this process's own writes to the same destination in order.
        var errors = FileFollower(path: directory + "/errors", destination: stderr)
        var readySeconds: Double?
        var kvmModule = "none"
        var timedOut = false
        var froze = false
        var qemuStatus: Int32?
        var polls = 0
        var statusSize = -1
        var lastStatusChange = start
        var diedAt: ContinuousClock.Instant?
        let deadline = timeoutSeconds.isFinite ? start + .milliseconds(Int(min(timeoutSeconds, 1e9) * 1000)) : nil
        while qemuStatus == nil {
            qemuStatus = process.poll()
            errors.forward()
            output?.forward()
            if qemuStatus != nil { break }
            if readySeconds == nil, let line = Self.statusLines(directory).first(where: { $0.hasPrefix("ready ") }) {
                readySeconds = Self.seconds(ContinuousClock.now - start)
                kvmModule = Self.kvmModule(readyLine: line)
                onReady(readySeconds!)
            }
            // A kernel that oopsed or panicked is not trusted to finish (it can
            // hang with interrupts off): stop it once its trace is on the
            // console (the trace is what classifies the death), or 5 s after
            // the first sign of it.
            polls += 1
            if polls % 25 == 0, !interactive, let traceEnded = deathTraceEnded(directory) {
                let since = diedAt ?? .now
                diedAt = since
                if traceEnded || Self.seconds(ContinuousClock.now - since) > 5 {
                    process.signal(SIGKILL)
                    qemuStatus = process.wait()
                    break
                }
            }
            // The heartbeat: every status line (ready, alive, status) grows the file.
            if polls % 25 == 0, !interactive, readySeconds != nil {
                let size = fileSize(directory + "/status")
                if size != statusSize {
                    statusSize = size
                    lastStatusChange = .now
                } else if Self.seconds(ContinuousClock.now - lastStatusChange) > heartbeatSilenceLimit {
                    froze = true
                    process.signal(SIGKILL)
                    qemuStatus = process.wait()
                    break
                }
            }
            if let deadline, ContinuousClock.now > deadline {
                timedOut = true
                process.signal(SIGTERM)
                usleep(500_000)
                if process.poll() == nil { process.signal(SIGKILL) }
                qemuStatus = process.wait()
                break
            }
            usleep(20_000)
        }
        errors.forward()
        output?.forward()
        let total = Self.seconds(ContinuousClock.now - start)
        let lines = Self.statusLines(directory)
        if readySeconds == nil, let line = lines.first(where: { $0.hasPrefix("ready ") }) {
            kvmModule = Self.kvmModule(readyLine: line)
        }
        let status = lines.last(where: { $0.hasPrefix("status ") }).flatMap { Int32($0.dropFirst(7)) }
        let host = LabHostDescription(kernelName: kernel.name, kernelRelease: kernel.release, qemuVersion: qemuVersion(),
                                      accelerator: acceleratorName, cpuModel: cpuModel, kvmModule: kvmModule)
        var result = LabRunResult(status: status, host: host, readySeconds: readySeconds, totalSeconds: total, timedOut: timedOut,
                                  froze: froze, console: (try? readText(directory + "/console.log")) ?? "", qemuStatus: qemuStatus ?? -1)
        result.sawReady = lines.contains { $0.hasPrefix("ready ") }
        result.heartbeatSilenceLimit = heartbeatSilenceLimit
        if bochs != nil {
            let log = consoleLines(((try? readText(directory + "/bochs.log")) ?? "") + ((try? readText(directory + "/bochs.stderr")) ?? ""))
            result.emulatorLog = log.suffix(20).joined(separator: "\n")
        }
        return result
    }

    /// Nil while the L1 console shows no kernel Oops or panic; otherwise
    /// whether the trace after it has ended.
    func deathTraceEnded(_ directory: String) -> Bool? {
        guard let console = try? readText(directory + "/console.log"),
              let start = console.firstRange(of: "Oops") ?? console.firstRange(of: "Kernel panic") else { return nil }
        let rest = console[start.lowerBound...]
        return rest.contains("---[ end trace") || rest.contains("---[ end Kernel panic")
    }

    /// The KVM module named in /init's "ready UPTIME MODULE" line.
    static func kvmModule(readyLine line: String) -> String {
        line.split(separator: " ").dropFirst(2).first.map(String.init) ?? "none"
    }

    static func statusLines(_ directory: String) -> [String] {
        consoleLines((try? readText(directory + "/status")) ?? "")
    }

    public static func seconds(_ duration: Duration) -> Double { duration.inSeconds }
}

/// Copies what is appended to a file to a descriptor, from where it last stopped.
struct FileFollower {
    let path: String
    let destination: Int32?
    var offset: Int = 0

    mutating func forward() {
        guard let destination else { return }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = pread(fd, &buffer, buffer.count, off_t(offset))
            guard count > 0 else { return }
            var written = 0
            while written < count {
                let result = buffer[written..<count].withUnsafeBytes { write(destination, $0.baseAddress, $0.count) }
                if result < 0 && errno == EINTR { continue }
                guard result > 0 else { return }
                written += result
            }
            offset += count
        }
    }
}

/// The non-empty lines of serial output. Lines end in "\r\n", which Swift
/// treats as one Character, so the split is on Unicode scalars.
public func consoleLines(_ text: String) -> [String] {
    text.unicodeScalars.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map { String(String.UnicodeScalarView($0)) }
}
