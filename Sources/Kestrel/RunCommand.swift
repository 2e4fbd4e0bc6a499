import TextFormat
import ArgumentParser
import Boot
import Confidential
import ControlAPI
import KVM
import Glibc
import HostSystem
import Synchronization
import VMM

/// `kestrel run`: boot a Linux kernel.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Boot a Linux kernel (bzImage or vmlinux) with a serial console on this terminal.",
        discussion: """
            The guest's COM1 is this terminal (raw mode when stdin is a terminal; Ctrl-C stops the guest). \
            The run ends with a one-line diagnosis on stderr and an exit code: the guest's status from the \
            exit device (busybox devmem 0xd0000000 8 N), 0 for power-off, 65 reset, 66 triple fault, \
            67 KVM internal error, 68 failed entry, 69 other vCPU failure, 70 guest kernel panic (seen on the \
            console), 128+N for signal N, 2 for a \
            refused configuration. CPU templates: \(CPUTemplate.all.map { "\($0.name) (\($0.summary))" }.joined(separator: "; ")).
            """)

    @Option(help: "The kernel: a bzImage (e.g. /boot/vmlinuz-*) or a vmlinux ELF.") var kernel: String?
    @Option(help: "An initrd or initramfs.") var initrd: String?
    @Option(help: "The kernel command line.") var cmdline: String = MachineConfiguration.defaultCommandLine
    @Option(help: "Number of vCPUs.") var cpus: Int = 1
    @Option(help: "Guest memory, e.g. 256M or 1G.") var memory: String = "256M"
    @Option(name: .customLong("cpu-template"), help: "CPU template: \(CPUTemplate.all.map(\.name).joined(separator: ", ")).")
    var cpuTemplate: String = CPUTemplate.defaultName
    @Flag(help: "Two threads to a core in the guest's CPU topology (machine-config smt; --cpus must be 1 or even).") var smt = false
    @Option(name: [.customLong("config"), .customLong("config-file")],
            help: "A JSON machine description (Firecracker-style: boot-source, machine-config, drives, network-interfaces, vsock, entropy).")
    var config: String?
    @Option(name: .customLong("api-sock"), help: ArgumentHelp(
        "Serve Firecracker's REST API on this Unix socket.",
        discussion: "Without --kernel or --config-file, the machine is configured through the API (PUT /boot-source, /machine-config, /drives/ID, "
            + "/network-interfaces/ID, /vsock, /entropy) and started with PUT /actions {\"action_type\": \"InstanceStart\"}; "
            + "PATCH /vm pauses and resumes it; PUT /snapshot/create writes a paused machine's state and memory files, and "
            + "PUT /snapshot/load restores them in a fresh kestrel instead of a boot. Try: curl --unix-socket PATH http://localhost/"))
    var apiSocket: String?
    @Flag(name: .customLong("no-api"), help: "Serve no API (the default unless --api-sock is given; Firecracker's flag).") var noAPI = false
    @Option(help: "The instance id that GET / reports (Firecracker's --id).") var id = "anonymous-instance"
    @Flag(name: .customLong("no-seccomp"), help: ArgumentHelp(
        "Run without the seccomp-BPF allow-lists (Firecracker's flag), for debugging.",
        discussion: "By default every thread (main, API, vCPU, virtio, console, signals) installs its own list before it does work for the guest, "
            + "and a call outside it ends Kestrel with one line naming the thread and the call's number. --verbose prints the list sizes."))
    var noSeccomp = false
    @Option(name: .customLong("seccomp-probe"), help: ArgumentHelp(
        "Make the named thread (vmm, api, vcpu, virtio, console, signals) call getppid(2), which no list allows, right after its filter is installed.",
        discussion: "Shows on a host that the filters are in force: Kestrel must end with status 159 and the seccomp line.", visibility: .hidden))
    var seccompProbe: String?
    @Flag(name: .customLong("seccomp-log"), help: ArgumentHelp(
        "Let calls outside the allow-lists through, logged by the kernel (SECCOMP_RET_LOG: audit lines in dmesg naming the thread: fc_vcpu N, k-virtio and so on).",
        visibility: .hidden))
    var seccompLog = false
    @Flag(name: .customLong("fault-around"), help: ArgumentHelp(
        "Keep the kernel's fault-around for the executable's pages while the guest runs.",
        discussion: "By default, on Linux 6.7 and later, Kestrel turns it off in its read-only file mappings as the guest starts "
            + "(a userfaultfd registration in asynchronous write-protect mode), so that code faults in a page at a time rather than in 64 KiB windows. "
            + "This flag is the control for that memory figure.", visibility: .hidden))
    var faultAround = false
    @Option(name: .customLong("drive"), help: ArgumentHelp(
        "A virtio-blk disk: PATH[,id=ID][,ro][,root][,partuuid=UUID][,cache=writeback|unsafe]; repeat for more.",
        discussion: "A root drive comes first (/dev/vda) and adds root=/dev/vda (or PARTUUID=) with ro or rw to the command line."))
    var drives: [String] = []
    @Option(name: .customLong("net"), help: ArgumentHelp(
        "A virtio-net interface on a tap: TAP[,id=ID][,mac=MAC]; TAP auto has Kestrel create one (needs CAP_NET_ADMIN). Repeat for more.",
        discussion: "A named tap must exist (ip tuntap add dev TAP mode tap). Offloads offered: checksum and TSO both ways."))
    var networkInterfaces: [String] = []
    @Option(help: ArgumentHelp(
        "A virtio-vsock device: UDS_PATH[,cid=N] (guest CID 3 by default), Firecracker's hybrid model.",
        discussion: "Host programs connect to UDS_PATH and write 'CONNECT <port>\\n'; guest connections to the host's port P reach UDS_PATH_P."))
    var vsock: String?
    @Flag(help: "Add a virtio-rng device fed by the host's getrandom.") var entropy = false
    @Option(name: .customLong("memory-backend"), help: ArgumentHelp(
        "Where guest RAM comes from: anonymous or guest_memfd.",
        discussion: "guest_memfd keeps all guest RAM in guest_memfd files (MMAP|INIT_SHARED, Linux 6.18), mapped by Kestrel; "
            + "NO_DIRECT_MAP is added when the kernel offers it. Kestrel prints which protection is in force."))
    var memoryBackend: String?
    @Flag(help: ArgumentHelp("Map all guest RAM into KVM's page tables before the guest starts (KVM_PRE_FAULT_MEMORY).",
                             discussion: "Saves the guest's first-touch faults, which matter most with 4 KiB pages (guest_memfd) on nested hosts; every page of guest memory is allocated up front."))
    var prefault = false
    @Option(help: ArgumentHelp("A confidential VM: snp or realm.",
                               discussion: "snp: a direct Linux boot with no guest firmware; the host must offer SEV-SNP (KVM_X86_SNP_VM and /dev/sev), otherwise kestrel run refuses, naming what is missing, before any VM exists. The expected launch measurement is printed before SNP_LAUNCH_FINISH (with --dry-run, the plan and measurement are printed on any host). "
                                   + "realm: an Arm CCA realm for an arm64 Image; the whole launch plan is checked against the realm memory rules first, then a host without arm64 and KVM_CAP_ARM_RMI is refused (with --dry-run the plan is printed instead)."))
    var confidential: String?
    @Option(name: .customLong("ipa-bits"), help: "With --confidential realm: the IPA size in bits (32 to 52; the top bit selects the unprotected alias).")
    var ipaBits: UInt8 = RealmMachine.defaultIPABits
    @Flag(name: .customLong("dry-run"), help: "With --confidential snp or realm: print the launch plan (and for snp the expected measurement) and exit without starting anything.")
    var dryRun = false
    @Option(name: .customLong("snp-certs"), help: "With --confidential snp: the certificate blob (kestrel snp-certs build) served to the guest.")
    var snpCertificates: String?
    @Flag(name: .customLong("guest-decompression"), help: "Let a bzImage decompress itself in the guest instead of on the host.")
    var guestDecompression = false
    @Flag(name: .customLong("no-pvh"), help: "Enter a vmlinux through its 64-bit entry even if it has a PVH note.")
    var noPVH = false
    @Flag(help: "Print boot timing and the layout on stderr.") var verbose = false

    // Firecracker's other launch options (src/firecracker/src/main.rs), as orchestrators pass them.
    @Option(name: .customLong("log-path"), help: "Log to this file or named pipe, in Firecracker's line format (as PUT /logger does).")
    var logPath: String?
    @Option(help: "With --log-path: the least severe level logged: Off, Error, Warning, Info (default), Debug, Trace.")
    var level: String?
    @Option(help: "With --log-path: log only lines from this Kestrel module (VMM, ControlAPI, Kestrel, ...).")
    var module: String?
    @Flag(name: .customLong("show-level"), help: "With --log-path: put the level in each line.") var showLevel = false
    @Flag(name: .customLong("show-log-origin"), help: "With --log-path: put the source file and line in each line.") var showLogOrigin = false
    @Option(name: .customLong("metrics-path"), help: "Write a JSON metrics line to this file or named pipe every 60 s and on FlushMetrics.")
    var metricsPath: String?
    @Option(help: ArgumentHelp("A JSON file whose object becomes the MMDS data store at start (Firecracker's --metadata).",
                               discussion: "The guest reads it through an interface that mmds-config names (PUT /mmds/config, or the config file's mmds-config)."))
    var metadata: String?
    @Option(name: .customLong("mmds-size-limit"), help: "The largest MMDS data store, in bytes of JSON (default: the API's payload limit).")
    var mmdsSizeLimit: Int?
    @Option(name: .customLong("http-api-max-payload-size"), help: "The largest API request body, in bytes.")
    var httpAPIMaxPayloadSize: Int = HTTPRequestReader.defaultMaximumBodyBytes
    @Flag(name: .customLong("boot-timer"), help: "Log the time from start to the guest's write of 123 at 0xc0000000 (Firecracker's boot timer).")
    var bootTimer = false
    @Option(name: .customLong("seccomp-filter"), help: ArgumentHelp(
        "Refused: Kestrel installs its own allow-list on each thread, and loads no compiled BPF (seccompiler-bin) file.",
        discussion: "Run with the default lists, or --no-seccomp to debug. --verbose prints the lists' sizes."))
    var seccompFilter: String?
    @Option(name: .customLong("start-time-us"), help: ArgumentHelp("The process's start, CLOCK_MONOTONIC in µs (Firecracker's jailer passes it).", visibility: .hidden))
    var startTimeMicroseconds: Int64?
    @Option(name: .customLong("start-time-cpu-us"), help: ArgumentHelp("CPU time used before exec, in µs (from a jailer).", visibility: .hidden))
    var startCPUMicroseconds: Int64?
    @Option(name: .customLong("parent-cpu-time-us"), help: ArgumentHelp("The parent's CPU time, in µs (from a jailer); accepted and unused.", visibility: .hidden))
    var parentCPUMicroseconds: Int64?

    /// `--confidential realm`: plan and check the realm; print the plan with
    /// `--dry-run`, otherwise refuse, naming what this host lacks.
    func runRealm(_ configuration: MachineConfiguration) throws {
        let plan: RealmLaunchPlan
        do {
            plan = try RealmMachine.plan(configuration, ipaBits: ipaBits,
                                         privateMemory: memoryBackend == MemoryBackend.guestMemfd.rawValue ? .guestMemfd : .hostMemory)
        } catch let violation as RealmRuleViolation {
            printError("kestrel: --confidential realm: refused by rule \(violation.rule): \(violation)")
            throw ExitCode(2)
        } catch {
            printError("kestrel: --confidential realm: \(error)")
            throw ExitCode(2)
        }
        if dryRun {
            print(plan.render())
            return
        }
        printError("kestrel: --confidential realm: the plan passes the realm memory rules (--dry-run prints it), but "
            + RealmMachine.refusal(architecture: HostKernel.machine, kvm: try? KVMSystem()))
        throw ExitCode(2)
    }

    /// Firecracker's `--api-sock` default.
    static let firecrackerDefaultSocket = "/run/firecracker.socket"

    func validate() throws {
        if let seccompFilter {
            throw ValidationError("--seccomp-filter \(seccompFilter): Kestrel loads no compiled BPF filter; each of its threads installs "
                + "Kestrel's own allow-list (the default), and --no-seccomp runs without them")
        }
        guard httpAPIMaxPayloadSize >= 1024, httpAPIMaxPayloadSize <= 64 << 20 else {
            throw ValidationError("--http-api-max-payload-size \(httpAPIMaxPayloadSize): give 1024 to 67108864 bytes")
        }
        if let mmdsSizeLimit, mmdsSizeLimit < 2 || mmdsSizeLimit > 64 << 20 {
            throw ValidationError("--mmds-size-limit \(mmdsSizeLimit): give 2 to 67108864 bytes")
        }
        guard APILaunchArguments.isValidInstanceID(id) else {
            throw ValidationError("--id \(id): an instance id is 1 to 64 letters, digits and '-' (Firecracker's rule)")
        }
        // ArgumentParser keeps the last of a repeated option; Firecracker refuses it.
        let arguments = LaunchLine.arguments.drop { $0 != "run" }.dropFirst()
        if let repeated = APILaunchArguments.repeatedOption(in: arguments, repeatable: ["--drive", "--net"]) {
            throw ValidationError("\(repeated) is given more than once")
        }
    }

    func run() throws {
        if apiSocket != nil && noAPI { throw ValidationError("--api-sock and --no-api contradict each other") }
        // Under Firecracker's name, its default: the API is served unless --no-api says not.
        let apiSocket = self.apiSocket ?? (LaunchLine.isFirecracker && !noAPI ? Self.firecrackerDefaultSocket : nil)
        let runner = try makeRunner()
        if let apiSocket, config == nil, kernel == nil {
            guard drives.isEmpty, networkInterfaces.isEmpty, vsock == nil, !entropy, memoryBackend == nil, confidential == nil, !dryRun else {
                throw ValidationError("with --api-sock and no --kernel or --config-file, give the devices and memory backend through the API")
            }
            try runner.serveAPI(at: apiSocket)
            return
        }
        var configuration: MachineConfiguration
        if let config {
            // A configuration Kestrel refuses is exit status 2, as for flags.
            do {
                let document = try MachineConfigFile.loadDocument(path: config)
                configuration = try MachineConfigFile.parse(document, source: config)
                try runner.configureProcessSections(of: document, source: config)
            } catch {
                printError("kestrel: \(error)")
                throw ExitCode(2)
            }
        } else {
            guard let kernel else { throw ValidationError("give --kernel PATH, --config-file FILE, or --api-sock PATH to configure the machine through the API") }
            guard let size = MachineConfiguration.parseSize(memory) else { throw ValidationError("--memory \(memory): expected a size such as 256M or 1G") }
            configuration = MachineConfiguration(kernelPath: kernel, initrdPath: initrd, commandLine: cmdline, vcpuCount: cpus, memorySize: size, cpuTemplate: cpuTemplate)
            configuration.smt = smt
        }
        do {
            for text in drives {
                configuration.drives.append(try DriveConfiguration.parse(text, index: configuration.drives.count))
            }
            for text in networkInterfaces {
                configuration.networkInterfaces.append(try NetworkInterfaceConfiguration.parse(text, index: configuration.networkInterfaces.count))
            }
            if let vsock { configuration.vsock = try VsockConfiguration.parse(vsock) }
        } catch {
            printError("kestrel: \(error)")
            throw ExitCode(2)
        }
        if entropy { configuration.entropy = true }
        if let confidential {
            guard let mode = ConfidentialMode(rawValue: confidential) else {
                printError("kestrel: --confidential \(confidential): known: \(ConfidentialMode.allCases.map(\.rawValue).joined(separator: ", "))")
                throw ExitCode(2)
            }
            configuration.confidential = mode
        }
        if let snpCertificates { configuration.snpCertificatesPath = snpCertificates }
        runner.applyBootFlags(to: &configuration)
        if let memoryBackend {
            do { configuration.memoryBackend = try MemoryBackend.named(memoryBackend) } catch {
                printError("kestrel: --memory-backend: \(error)")
                throw ExitCode(2)
            }
        }

        if configuration.confidential == .realm {
            try runRealm(configuration)
            return
        }
        if configuration.confidential == .snp && dryRun {
            do { print(try MachineBuilder(configuration: configuration).snpDryRun()) } catch {
                printError("kestrel: --confidential snp: \(error)")
                throw ExitCode(2)
            }
            return
        }
        if dryRun || ipaBits != RealmMachine.defaultIPABits {
            printError("kestrel: --dry-run is for --confidential snp or realm, --ipa-bits for realm")
            throw ExitCode(2)
        }

        let console = ConsoleOutput()
        let seccomp = try runner.seccompPolicy(for: configuration)
        let machine: Machine
        do {
            machine = try runner.build(configuration, console: console)
        } catch {
            printError("kestrel: cannot start the guest: \(error)")
            // A daemonized VMM's standard error goes nowhere: the configured log
            // (Kata's FIFO, flintlock's file) is where its orchestrator looks.
            if runner.services.logger.isConfigured { runner.services.log(.error, "cannot start the guest: \(error)") }
            throw ExitCode(2)
        }
        let services = runner.services
        services.addMachine(machine)
        var server: APIServer?
        if let apiSocket {
            let host = APIMachineHost(running: machine, apiSocket: apiSocket, log: { services.log(.info, $0) })
            let api = runner.makeAPI(control: host, running: MachineConfigFile.document(for: configuration))
            server = try runner.startServer(at: apiSocket, api: api, seccomp: seccomp)
        } else {
            services.recordStartup()
            try runner.startMetrics(seccomp: seccomp)
        }
        defer { server?.stop() }
        defer { services.metrics.stop() }
        try runner.runMachine(machine, console: console, seccomp: seccomp)
    }

    /// The settings that outlive parsing, for `MachineRunner`, with the log,
    /// metrics and MMDS data store that `--log-path`, `--metrics-path` and
    /// `--metadata` configure. A path that cannot be opened, or a metadata
    /// file that is not a JSON object within the limit, is exit status 2.
    func makeRunner() throws -> MachineRunner {
        let services = RunServices(instanceID: id, metadataSizeLimit: mmdsSizeLimit ?? httpAPIMaxPayloadSize,
                                   startMicroseconds: startTimeMicroseconds, startCPUMicroseconds: startCPUMicroseconds)
        var runner = MachineRunner(id: id, verbose: verbose, noSeccomp: noSeccomp, seccompProbe: seccompProbe, seccompLog: seccompLog,
                                   prefault: prefault, guestDecompression: guestDecompression, noPVH: noPVH, keepFaultAround: faultAround,
                                   services: services)
        runner.bootTimer = bootTimer
        runner.maximumBodyBytes = httpAPIMaxPayloadSize
        do {
            if let logPath {
                var settings = EventLogger.Settings()
                settings.path = logPath
                if let level {
                    guard let known = EventLogger.Level(name: level) else {
                        throw ConfigurationError("--level \(level): known levels are Off, Error, Warning, Info, Debug, Trace")
                    }
                    settings.level = known
                }
                settings.module = module
                settings.showLevel = showLevel
                settings.showOrigin = showLogOrigin
                try services.logger.configure(settings)
                services.log(.info, "Running Kestrel v\(Kestrel.version) (Firecracker API \(Kestrel.firecrackerAPIVersion))")
            } else if level != nil || module != nil || showLevel || showLogOrigin {
                throw ConfigurationError("--level, --module, --show-level and --show-log-origin need --log-path")
            }
            if let metricsPath { try services.metrics.configure(MetricsReporter.Settings(path: metricsPath)) }
            if let metadata {
                let bytes = try MachineBuilder.readFile(metadata, what: "--metadata file", limit: 64 << 20)
                let value: JSONValue
                do { value = try JSONValue.parse(bytes) } catch { throw ConfigurationError("--metadata \(metadata): not valid JSON") }
                guard value.objectValue != nil else { throw ConfigurationError("--metadata \(metadata): the data store must be a JSON object") }
                try services.metadata.put(value)
            }
        } catch {
            printError("kestrel: \(error)")
            throw ExitCode(2)
        }
        return runner
    }
}

/// Buffers guest output and writes it to stdout by line (or when 4 KiB gather).
final class ConsoleOutput: Sendable {
    private let buffer = Mutex<[UInt8]>([])
    /// Where the bytes go: standard output, or Firecracker's serial_out_path.
    private let target = Atomic<Int32>(1)

    /// Sends the guest's output to `path` from now on (Firecracker's
    /// `serial.serial_out_path`): a regular file, created if missing and
    /// appended to, or a FIFO, which must have a reader already (open with
    /// O_NONBLOCK refuses rather than waits). Writes then block as for a file.
    func send(to path: String) throws {
        let fd = try HostFile.open(path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o600, allowed: [.regular, .fifo], what: "serial_out_path")
        flush()
        let previous = target.exchange(fd, ordering: .acquiringAndReleasing)
        if previous != 1 { close(previous) }
    }

    func write(_ byte: UInt8) {
        buffer.withLock { buffer in
            buffer.append(byte)
            if byte == 0x0A || buffer.count >= 4096 { drain(&buffer) }
        }
    }

    func flush() { buffer.withLock { drain(&$0) } }

    private func drain(_ buffer: inout [UInt8]) {
        let fd = target.load(ordering: .acquiring)
        var offset = 0
        while offset < buffer.count {
            let written = buffer[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written <= 0 { if errno == EINTR { continue }; break }
            offset += written
        }
        buffer.removeAll(keepingCapacity: true)
    }
}

/// Puts stdin in raw mode (keeping Ctrl-C as a signal) when it is a terminal,
/// and forwards its bytes to the guest's COM1.
final class TerminalSession {
    private var saved = termios()
    private var isRaw = false

    /// `setUp` runs first on the reader's thread (a seccomp filter).
    init(serial: Serial16550, setUp: @escaping @Sendable () -> Void = {}) {
        if isatty(0) == 1, tcgetattr(0, &saved) == 0 {
            var raw = saved
            cfmakeraw(&raw)
            raw.c_lflag |= tcflag_t(ISIG)      // Ctrl-C still stops the guest
            raw.c_oflag |= tcflag_t(OPOST | ONLCR)
            isRaw = tcsetattr(0, TCSANOW, &raw) == 0
        }
        // The reader blocks in read(2) for the whole run; the process exits under it.
        do {
            try startReader(serial: serial, setUp: setUp)
        } catch {
            printError("kestrel: console input is not forwarded to the guest: \(error)")
        }
    }

    private func startReader(serial: Serial16550, setUp: @escaping @Sendable () -> Void) throws {
        _ = try POSIXThread.start(stackSize: 256 << 10) {
            setUp()
            var byte = [UInt8](repeating: 0, count: 256)
            while true {
                let count = read(0, &byte, byte.count)
                if count <= 0 { if count < 0 && errno == EINTR { continue }; return }
                serial.receive(Array(byte[0..<count]))
            }
        }
    }

    func restore() {
        if isRaw { tcsetattr(0, TCSANOW, &saved); isRaw = false }
    }
}

/// Seconds with three decimals, for timing lines.
enum SecondsText {
    static func text(_ duration: Duration) -> String {
        duration.inSeconds.text(places: 3)
    }
}

