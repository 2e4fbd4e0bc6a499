import ArgumentParser
import ControlAPI
import Glibc
import HostSystem
import Synchronization
import TextFormat
import VMM

/// What `kestrel run` does once its options are known, however they were
/// read: `RunCommand` through ArgumentParser, or `APILaunchArguments` for
/// the API-only launch (`main.swift`). It serves the API, installs the
/// seccomp lists and runs a built machine to its end.
struct MachineRunner: Sendable {
    var id = APILaunchArguments.defaultID
    var verbose = false
    var noSeccomp = false
    var seccompProbe: String?
    var seccompLog = false
    var prefault = false
    var guestDecompression = false
    var noPVH = false
    /// Leave fault-around on while the guest runs (`--fault-around`, the control).
    var keepFaultAround = false
    /// Firecracker's `--boot-timer`.
    var bootTimer = false
    /// Firecracker's `--http-api-max-payload-size`.
    var maximumBodyBytes = HTTPRequestReader.defaultMaximumBodyBytes
    /// The log, the metrics and the MMDS data store.
    let services: RunServices

    /// The API-only launch's settings.
    init(_ arguments: APILaunchArguments) {
        self.init(id: arguments.id, verbose: arguments.verbose, noSeccomp: arguments.noSeccomp,
                  seccompProbe: arguments.seccompProbe, seccompLog: arguments.seccompLog)
    }

    init(id: String, verbose: Bool, noSeccomp: Bool, seccompProbe: String?, seccompLog: Bool,
         prefault: Bool = false, guestDecompression: Bool = false, noPVH: Bool = false, keepFaultAround: Bool = false,
         services: RunServices? = nil) {
        self.services = services ?? RunServices(instanceID: id, metadataSizeLimit: HTTPRequestReader.defaultMaximumBodyBytes)
        self.id = id
        self.verbose = verbose
        self.noSeccomp = noSeccomp
        self.seccompProbe = seccompProbe
        self.seccompLog = seccompLog
        self.prefault = prefault
        self.guestDecompression = guestDecompression
        self.noPVH = noPVH
        self.keepFaultAround = keepFaultAround
    }

    /// `--api-sock` alone: serves the API and wait for InstanceStart; a start
    /// that fails is answered with 400 and the API waits for the next.
    func serveAPI(at apiSocket: String) throws {
        let services = services
        let host = APIMachineHost(apiSocket: apiSocket, log: { services.log(.info, $0) })
        let api = makeAPI(control: host)
        // Lists known before the configuration: an SNP machine (certificates
        // on vCPU threads) cannot be described through the API.
        let seccomp = try seccompPolicy(for: nil)
        let server = try startServer(at: apiSocket, api: api, seccomp: seccomp)
        defer { server.stop() }
        defer { services.metrics.stop() }
        // SIGINT and SIGTERM stop the machine once it runs; until then they end
        // Kestrel here, taking the socket file with it.
        let running = Mutex<Machine?>(nil)
        let signals = try StopSignalThread(setUp: { seccomp?.enter(.signals) }) { number in
            if let machine = running.withLock({ $0 }) { machine.finish(.stopped(signal: number)); return }
            server.stop()
            Glibc.exit(128 + number)
        }
        defer { withExtendedLifetime(signals) {} }
        if verbose { services.log(.info, "API on \(apiSocket); waiting for InstanceStart") }
        let console = ConsoleOutput()
        while true {
            let request = host.nextRequest()
            var built: Machine?
            do {
                let machine: Machine
                var paused = false
                switch request {
                case .boot(var configuration):
                    applyBootFlags(to: &configuration)
                    machine = try build(configuration, console: console)
                case .restore(let statePath, let memoryPath, let resume, let options):
                    machine = try MachineBuilder.restore(statePath: statePath, memoryPath: memoryPath, options: options, metadata: services.metadata,
                                                         console: { console.write($0) }, deviceLog: { services.log(.warn, $0) })
                    paused = !resume
                }
                built = machine
                services.addMachine(machine)
                if paused { machine.pauseBeforeRun() }
                running.withLock { $0 = machine }
                // The API answers once the vCPUs run (a start or load that
                // fails before that ends Kestrel, closing the connection).
                try runMachine(machine, console: console, handlingSignals: false, seccomp: seccomp, ready: { host.started(machine) })
                return
            } catch let exit as ExitCode {
                throw exit
            } catch {
                built?.discard()
                host.failed(error)
            }
        }
    }

    /// The seccomp allow-lists (nil with --no-seccomp), with the SIGSYS
    /// handler installed; --verbose prints their sizes.
    func seccompPolicy(for configuration: MachineConfiguration?) throws -> SeccompPolicy? {
        guard !noSeccomp else {
            if seccompProbe != nil { throw ValidationError("--seccomp-probe needs the filters; drop --no-seccomp") }
            return nil
        }
        var probe: KestrelThread?
        if let seccompProbe {
            guard let kind = KestrelThread(rawValue: seccompProbe) else {
                throw ValidationError("--seccomp-probe \(seccompProbe): known: \(KestrelThread.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            probe = kind
        }
        let policy = try SeccompPolicy(snpCertificates: configuration?.snpCertificatesPath != nil, probe: probe, logOnly: seccompLog,
                                       log: { [services] in services.log(.error, $0) })
        try policy.prepare()
        if verbose { services.log(.info, "seccomp allow-lists (system calls): \(policy.summary)") }
        return policy
    }

    /// --prefault, --guest-decompression and --no-pvh, whichever way the machine was described.
    func applyBootFlags(to configuration: inout MachineConfiguration) {
        if prefault { configuration.prefault = true }
        if guestDecompression { configuration.decompressOnHost = false }
        if noPVH { configuration.preferPVH = false }
    }

    /// Builds `configuration`'s machine with this process's MMDS store and,
    /// with `--boot-timer`, the boot timer.
    func build(_ configuration: MachineConfiguration, console: ConsoleOutput) throws -> Machine {
        let services = services
        var timerLog: (@Sendable (String) -> Void)?
        if bootTimer { timerLog = { services.log(.info, $0) } }
        let builder = MachineBuilder(configuration: configuration, metadataService: services.metadata, bootTimerLog: timerLog)
        return try builder.build(console: { console.write($0) }, deviceLog: { services.log(.warn, $0) }, announce: { printError($0) })
    }

    /// The API over `control`, sharing this process's log, metrics and MMDS store.
    func makeAPI(control: any MicroVMControl, running document: JSONValue? = nil) -> FirecrackerAPI {
        FirecrackerAPI(instanceID: id, version: Kestrel.firecrackerVersion, control: control, running: document,
                       metadata: services.metadata, logger: services.logger, metrics: services.metrics)
    }

    /// Serves `api` at `path` (exit status 2 when it cannot), records the
    /// start-up time, and starts the metrics: the API's counts on every
    /// line, a line every 60 s once a path is configured.
    func startServer(at path: String, api: FirecrackerAPI, seccomp: SeccompPolicy?) throws -> APIServer {
        let services = services
        let server: APIServer
        do {
            server = try APIServer(path: path, api: api, maximumBodyBytes: maximumBodyBytes, log: { services.log(.warn, $0) },
                                   setUp: { seccomp?.enter(.api) })
        } catch {
            printError("kestrel: --api-sock \(path): \(error)")
            throw ExitCode(2)
        }
        services.recordStartup()
        services.metrics.addSource { api.metricGroups() }
        try startMetrics(seccomp: seccomp)
        return server
    }

    /// A `--config-file`'s `logger` and `metrics` sections (Firecracker's
    /// Logger and Metrics bodies), applied as the API's PUTs would.
    func configureProcessSections(of document: JSONValue, source: String) throws {
        if let logger = document.objectValue?["logger"], logger != .null {
            try services.logger.configure(try EventLogger.Settings.parse(logger, source: "\(source): logger"))
        }
        if let metrics = document.objectValue?["metrics"], metrics != .null {
            try services.metrics.configure(try MetricsReporter.Settings.parse(metrics, source: "\(source): metrics"))
        }
    }

    /// The logger's counts on every metrics line, and the 60 s flush.
    func startMetrics(seccomp: SeccompPolicy?) throws {
        services.addLogger()
        try services.metrics.startPeriodicFlush(setUp: { seccomp?.enter(.metrics) })
    }

    /// Runs a built machine to its end on this terminal; throws the exit code.
    /// `ready` is called once the vCPU threads have started, before they
    /// first enter the guest (`Machine.run`).
    func runMachine(_ machine: Machine, console: ConsoleOutput, handlingSignals: Bool = true, seccomp: SeccompPolicy? = nil,
                    ready: () -> Void = {}) throws {
        let configuration = machine.configuration
        if let path = configuration.serialOutputPath { try console.send(to: path) }
        if verbose || configuration.memoryBackend != .anonymous {
            services.log(.info, "guest memory: \(machine.memoryProtection)")
        }
        if verbose {
            if let plan = machine.plan {
                services.log(.info, "\(plan.kind); \(plan.entry); kernel at 0x\(String(plan.kernelRange.lowerBound, radix: 16))-0x\(String(plan.kernelRange.upperBound, radix: 16))"
                    + (plan.decompressionSeconds > 0 ? ", host decompression \(plan.decompressionSeconds.text(places: 3)) s" : ""))
                for entry in plan.e820 { services.log(.info, "e820 \(entry)") }
            } else {
                services.log(.info, "restored from a snapshot")
            }
            services.log(.info, "set-up " + machine.setupSteps.map { "\($0.step) \(SecondsText.text($0.duration)) s" }.joined(separator: ", "))
        }
        let terminal = TerminalSession(serial: machine.serial, setUp: { seccomp?.enter(.console) })
        let signals = handlingSignals ? try StopSignalThread(setUp: { seccomp?.enter(.signals) }) { machine.finish(.stopped(signal: $0)) } : nil
        // Loading, decompression and table building are done: their code need
        // not stay resident for the life of the guest. Released once the vCPUs
        // run, so that it does not delay them (a page still in use is read in
        // again from the page cache). Fault-around is turned off in the same
        // mappings first, so that the code that runs afterwards comes back a
        // page at a time instead of in 64 KiB windows (Linux 6.7 and later;
        // elsewhere, and with --fault-around, it stays on).
        var releasedAtStart: UInt64 = 0
        var faultAround: FaultAroundSuppression?
        let outcome = machine.run(seccomp: seccomp, ready: ready) {
            // From here the main thread only tidies up and then waits for the
            // vCPUs: at nice 19 that work yields to anything else that wants
            // a core, such as the vCPUs, the API thread and its client.
            let housekeepingNice: String
            do {
                try POSIXThread.setCurrentNice(19)
                housekeepingNice = "at nice 19"
            } catch {
                housekeepingNice = "at the normal priority (\(error))"
            }
            let releaseStart = ContinuousClock.now
            var faultAroundNote = "fault-around stays on (--fault-around)"
            if !keepFaultAround {
                do {
                    let suppression = try ProcessMemory.suppressFaultAroundInReadOnlyFileMappings()
                    faultAround = suppression
                    faultAroundNote = "fault-around is off in \(suppression.registeredBytes >> 10) KiB of read-only file mappings"
                } catch {
                    faultAroundNote = "fault-around stays on (\(error))"
                }
            }
            releasedAtStart = ProcessMemory.releaseReadOnlyFilePages()
            if verbose { services.log(.info, "released start-up pages in \(SecondsText.text(ContinuousClock.now - releaseStart)) s \(housekeepingNice); \(faultAroundNote)") }
        }
        withExtendedLifetime(faultAround) {}
        console.flush()
        terminal.restore()
        withExtendedLifetime(signals) {}
        if verbose, let footprint = machine.memoryFootprint() {
            let mib = { (bytes: UInt64) in (Double(bytes) / 1_048_576).text(places: 1) + " MiB" }
            services.log(.info, "RSS \(mib(footprint.resident)), guest memory touched \(mib(footprint.guest)), Kestrel overhead \(mib(footprint.overhead)): "
                + "\(mib(footprint.fileBacked)) pages of the executable, \(mib(footprint.anonymous)) private memory; "
                + "\(mib(releasedAtStart)) of start-up pages were released as the guest started")
        }
        if verbose {
            for transport in machine.devices.transports {
                services.log(.info, "\(transport.name): status \(transport.status)" + (transport.device.activitySummary.map { "; " + $0 } ?? ""))
            }
        }
        if verbose, let start = machine.startTime {
            services.log(.info, "ran \(ContinuousClock.now - start)")
        }
        services.announce("\(outcome.diagnosis)")
        throw ExitCode(outcome.exitCode)
    }
}
