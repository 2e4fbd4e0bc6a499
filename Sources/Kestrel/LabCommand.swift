import ArgumentParser
import Dispatch
import Glibc
import Lab
import TextFormat

/// `kestrel lab`: real KVM hosts (L1 Linux kernels) under QEMU.
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Run commands, the conformance suites and Linux guests on real KVM hosts: Linux kernels booted under QEMU.",
        discussion: """
            The lab boots an L1 Linux kernel under qemu-system-x86_64 (Debian's qemu-system-x86): with KVM \
            and nested virtualization when this machine offers them, otherwise TCG emulating a CPU with AMD \
            SVM. Its initramfs holds busybox, this static `kestrel`, the kernel's KVM modules (loaded at \
            boot) and the files you add. Kernels: \(KernelFetcher.catalog.map { "\($0.name) (\($0.suite))" }.joined(separator: ", ")), \
            Debian cloud kernels fetched with apt-get download from the mirror apt already uses and cached \
            under $KESTREL_LAB_CACHE or ~/.cache/kestrel/lab; \(KVMRebuild.softwareProtected.name), the 6.12 kernel with its KVM \
            rebuilt from Debian's linux-source with CONFIG_KVM_SW_PROTECTED_VM (private memory); a kernel of yours whose \
            KVM modules are rebuilt with patches (kestrel lab kernels --build); or your own with --kernel-image and --modules.
            Examples:
              kestrel lab kernels --fetch 6.1,7.2
              kestrel lab kernels --build 7.2-patched --from 7.2 --patch upstream/kvm-emulator-cr-width/0001-*.patch
              kestrel lab run --kernel 7.2 -- 'uname -r; ls -l /dev/kvm'
              kestrel lab check --kernel 6.1 --tap
              kestrel lab check --kernels 6.1,6.12,6.18,7.2
              kestrel lab shell --kernel 6.18
            """,
        subcommands: [LabKernelsCommand.self, LabRunCommand.self, LabCheckCommand.self, LabShellCommand.self, LabSelftestsCommand.self,
                      LabBuildARM64Command.self])
}

/// The emulator under the L1.
enum LabHostKind: String, ExpressibleByArgument, CaseIterable {
    case qemu, bochs
}

/// Options every lab command shares: which kernel, and how QEMU runs it.
struct LabMachineOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The L1 kernel: \(KernelFetcher.names.joined(separator: ", ")).",
                               discussion: "\(KVMRebuild.softwareProtected.name) is Debian's 6.12 with its KVM rebuilt with CONFIG_KVM_SW_PROTECTED_VM (private memory); the first use builds it (about two minutes). Rebuilds recorded with `kestrel lab kernels --build NAME` are taken by name too."))
    var kernel: String?
    @Option(name: .customLong("kernel-image"), help: "Your own L1 bzImage (with --modules).") var kernelImage: String?
    @Option(help: "The modules tree of --kernel-image (lib/modules/RELEASE).") var modules: String?
    @Option(help: ArgumentHelp("The L0 that runs the L1: qemu (default; AMD SVM under TCG) or bochs (Intel VMX with CET).",
                               discussion: "bochs is Debian trixie's Bochs 3.0, run from a trixie root the lab builds with debootstrap once (root only) and caches; CPU models \(LabBochs.models.joined(separator: ", ")) (default \(LabBochs.defaultModel)). One boot takes minutes. Its L1s get `\(LabBochs.kernelArguments)`; under `kestrel lab shell` the L1's COM1 is your terminal."))
    var host: LabHostKind = .qemu
    @Flag(name: .customLong("keep-apicv"),
          help: "With --host bochs: load kvm_intel with its default enable_apicv (on). Bochs 3.0 then fails every VM entry of a vCPU with an in-kernel APIC (reason 0x7), so the lab turns APICv off unless asked.")
    var keepAPICv = false
    @Flag(name: .customLong("keep-pku"),
          help: "With --host bochs: boot the L1 without `nopku`. Bochs 3.0's XRSTORS then loads KVM's guests' CET state from the wrong offsets (FINDINGS.md section 18), so the lab turns protection keys off unless asked.")
    var keepPKU = false
    @Option(help: "QEMU accelerator: kvm or tcg (default: kvm when nested virtualization is available, else tcg).")
    var accel: LabAccelerator?
    @Option(name: .customLong("cpu-model"), help: "CPU model: QEMU's (default: max under TCG, host under KVM), or with --host bochs \(LabBochs.models.joined(separator: " or ")).") var cpuModel: String?
    @Option(help: ArgumentHelp("The L0, the QEMU that runs the L1: system (default), \(LabQEMU.catalog.map(\.name).joined(separator: ", ")), or a path.",
                               discussion: "system is this machine's qemu-system-x86_64 (scripts/prepare-host installs QEMU 10.0 from bookworm-backports). \(LabQEMU.catalog.map { "\($0.name) is Debian \($0.suite)'s QEMU \($0.name), fetched once into the lab's cache" }.joined(separator: "; ")), to reproduce what FINDINGS.md says of it. Every result names the L0's version."))
    var qemu: String?
    @Option(help: "L1 vCPUs.") var cpus: Int = 1
    @Flag(name: .customLong("multi-threaded-tcg"), help: "One TCG thread per vCPU (default: one for all; multi-threaded TCG once oopsed an L1).")
    var multiThreadedTCG = false
    @Option(help: "L1 memory in MiB.") var memory: Int = 2048
    @Option(name: .customLong("numa-nodes"), help: "NUMA nodes of the L1 (memory split evenly), for the guest_memfd NUMA tests.")
    var numaNodes: Int = 1
    @Option(help: "Stop the L1 after this many seconds.") var timeout: Double = 600
    @Option(name: .customLong("boot-attempts"),
            help: "Boots of an L1 at most, when it dies in a way tied to the emulator under it (an Oops while booting outside KVM, or a silent heartbeat with no kernel message); the command runs again in each, after the first boot's output. Other deaths, and any trace in KVM or in a Kestrel process, are never booted again.")
    var bootAttempts: Int = 3
    @Option(name: .customLong("add"), help: "Put a host file into the L1: HOST[:GUEST] (default guest path /lab/NAME). Repeatable.")
    var files: [String] = []
    @Option(name: .customLong("add-list"),
            help: "Put the files a list names into the L1: one HOST[:GUEST] per line, as --add takes them (blank lines and # comments skipped). Repeatable.")
    var fileLists: [String] = []
    @Flag(name: .customLong("guest-kernel"), help: "Also put this kernel's vmlinux at /lab/guest/vmlinux and its virtio drivers in /lab/guest/modules (for `kestrel initramfs --modules`), to boot it as an L2 guest with `kestrel run`.")
    var guestKernel = false
    @Option(help: ArgumentHelp("Like --guest-kernel, with another lab kernel's vmlinux and virtio drivers: \((KernelFetcher.catalog.map(\.name) + GuestKernelBuild.builtIn.map(\.name)).joined(separator: ", ")).",
                               discussion: "For a guest kernel that differs from the L1's, such as a 6.1 guest on a 6.18 host. \(GuestKernelBuild.microVM.name) is compiled from Debian's 6.1 source with its drivers built in, the virtio_mmio.device= parameter and an MP table parser, like Kata's and Firecracker's guest kernels (built once, about 7 minutes)."))
    var guest: String?
    @Option(help: "The static kestrel executable to put into the L1 (default: this one).") var kestrel: String?
    @Flag(name: .customLong("refresh"), help: "Look for a newer kernel package even when one is cached.") var refresh = false
    @Flag(name: [.short, .long], help: "Print progress, L1 timings and the L1 console on stderr.") var verbose = false

    /// --keep-apicv and --keep-pku change Bochs L1s only: refused unless one
    /// runs (`--host bochs`, or a matrix column `KERNEL@bochs`).
    func validateBochsFlags(bochsColumns: Bool = false) throws {
        guard host != .bochs, !bochsColumns else { return }
        if keepAPICv { throw ValidationError("--keep-apicv goes with --host bochs or a KERNEL@bochs column") }
        if keepPKU { throw ValidationError("--keep-pku goes with --host bochs or a KERNEL@bochs column") }
    }

    func validate() throws {
        if kernel != nil && kernelImage != nil { throw ValidationError("give --kernel or --kernel-image, not both") }
        if (kernelImage == nil) != (modules == nil) { throw ValidationError("--kernel-image and --modules go together") }
        if cpus < 1 || cpus > 64 { throw ValidationError("--cpus must be between 1 and 64") }
        if memory < 256 { throw ValidationError("--memory is in MiB and must be at least 256") }
        if timeout <= 0 { throw ValidationError("--timeout must be positive") }
        if bootAttempts < 1 { throw ValidationError("--boot-attempts must be at least 1") }
        if guest != nil && guestKernel { throw ValidationError("give --guest-kernel or --guest NAME, not both") }
        if host == .bochs {
            if let cpuModel, let why = LabBochs.unknownModel(cpuModel) { throw ValidationError("--cpu-model " + why) }
            if accel != nil || qemu != nil || multiThreadedTCG || numaNodes > 1 {
                throw ValidationError("--accel, --qemu, --multi-threaded-tcg and --numa-nodes are QEMU's; --host bochs takes none of them")
            }
        }
        if numaNodes < 1 || numaNodes > 8 || memory % numaNodes != 0 || memory / numaNodes < 128 {
            throw ValidationError("--numa-nodes must be 1 to 8 and divide --memory into parts of at least 128 MiB")
        }
    }

    /// The kernel, fetched or prepared.
    func resolveKernel(named name: String? = nil) throws -> LabKernel {
        let cache = LabCache()
        if let kernelImage, let modules {
            return try LabKernel.prepare(name: "custom", image: kernelImage, modulesTree: modules, into: cache.root + "/custom")
        }
        guard let chosen = name ?? kernel else {
            throw ValidationError("give --kernel (\(KernelFetcher.names.joined(separator: ", "))) or --kernel-image with --modules")
        }
        let kernel = try KernelFetcher(cache: cache, progress: { printError("lab: \($0)") }).kernel(chosen, refresh: refresh)
        if kernel.isGuestOnly {
            throw ValidationError("\(chosen) is a guest kernel, without KVM: give it with --guest, and the L1 with --kernel")
        }
        return kernel
    }

    /// The machine for `kernel`, on `--host`, or on Bochs with `bochsModel`
    /// (a matrix's `KERNEL@bochs:MODEL` column).
    func machine(for kernel: LabKernel, bochsModel: String? = nil) throws -> LabMachine {
        let onBochs = host == .bochs || bochsModel != nil
        let detected = LabAccelerator.detect()
        if verbose && accel == nil && !onBochs { printError("lab: accelerator \(detected.accelerator.rawValue) (\(detected.reason))") }
        var machine = LabMachine(kernel: kernel, accelerator: accel ?? detected.accelerator, cpuModel: cpuModel)
        if onBochs {
            machine.bochs = try LabBochs.prepare(cache: LabCache(), progress: { printError("lab: \($0)") })
            machine.cpuModel = bochsModel ?? cpuModel ?? LabBochs.defaultModel
            machine.keepAPICv = keepAPICv
            machine.keepPKU = keepPKU
        } else {
            machine.qemu = try LabQEMU.resolve(qemu, cache: LabCache(), progress: { printError("lab: \($0)") })
        }
        machine.cpus = cpus
        machine.memoryMiB = memory
        machine.timeoutSeconds = timeout
        machine.bootAttempts = bootAttempts
        machine.multiThreadedTCG = multiThreadedTCG
        machine.numaNodes = numaNodes
        return machine
    }

    /// The initramfs for `command`, with this kestrel and the user's files.
    func initramfs(kernel: LabKernel, command: LabInitramfs.Command) throws -> LabInitramfs {
        var added: [LabInitramfs.File] = []
        var specs = files.map { (spec: $0, origin: "--add \($0)") }
        for list in fileLists {
            let text: String
            do { text = try readText(list) } catch { throw ValidationError("--add-list \(list): \(error)") }
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
                let spec = String(line.drop(while: blank).reversed().drop(while: blank).reversed())
                if spec.isEmpty || spec.hasPrefix("#") { continue }
                specs.append((spec, "--add-list \(list), line \(number + 1) (\(spec))"))
            }
        }
        // The same file at the same guest path twice (libc for curl and for
        // Python) goes in once; two files at one guest path are refused.
        var hostByGuest: [String: String] = [:]
        for (spec, origin) in specs {
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            let host = parts[0]
            guard fileExists(host), !isDirectory(host) else { throw ValidationError("\(origin): \(host) is not a readable file") }
            let name = host.split(separator: "/").last.map(String.init) ?? host
            let guestPath = parts.count > 1 ? parts[1] : "/lab/\(name)"
            guard guestPath.hasPrefix("/"), !guestPath.split(separator: "/").contains("..") else {
                throw ValidationError("\(origin): the guest path \(guestPath) must be absolute, without \"..\"")
            }
            if let earlier = hostByGuest[guestPath] {
                if earlier == host { continue }
                throw ValidationError("\(origin): \(guestPath) is already \(earlier)")
            }
            hostByGuest[guestPath] = host
            var status = stat()
            stat(host, &status)
            added.append(.init(guestPath: guestPath, hostPath: host, mode: UInt32(status.st_mode) & 0o777,
                               modificationTime: UInt32(clamping: status.st_mtim.tv_sec)))
        }
        let guestSource = try guest.map { try KernelFetcher(cache: LabCache(), progress: { printError("lab: \($0)") }).kernel($0, refresh: refresh) }
            ?? (guestKernel ? kernel : nil)
        if let guestSource {
            added.append(.init(guestPath: "/lab/guest/vmlinux", hostPath: try guestSource.vmlinux()))
            added += guestSource.guestModuleFiles(under: "/lab/guest/modules")
        }
        let binary = try LabExecutable.prepare(kestrel ?? "/proc/self/exe", cache: LabCache())
        return LabInitramfs(kernel: kernel, kestrel: binary, files: added, command: command)
    }

    /// Runs `command` on `kernel`, streaming its output, and reports timings when verbose.
    func run(_ command: LabInitramfs.Command, kernel: LabKernel, stdout: HostProcess.Stream = .inherit) throws -> LabRunResult {
        let machine = try machine(for: kernel)
        let image = try initramfs(kernel: kernel, command: command)
        let result = try machine.run(image, stdout: stdout) { ready in
            if verbose { printError("lab: L1 \(kernel.release) ready in \(ready.text(places: 1)) s") }
        }
        if verbose {
            printError("lab: \(result.host.summary); ended after \(result.totalSeconds.text(places: 1)) s")
            printError("lab: L1 console:\n" + result.console)
        }
        for death in result.deaths where death != result.failingDeath { printError("lab: the L1's \(death.summary); booted it again") }
        if let diagnosis = result.failureDiagnosis { printError("lab: \(diagnosis)") }
        for line in LabHostDescription.kernelProblems(in: result.console).prefix(5) { printError("lab: L1 kernel: \(line)") }
        return result
    }
}

/// `kestrel lab kernels`: list, fetch and rebuild the lab's kernels.
struct LabKernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels", abstract: "List the lab's kernels and which are cached; fetch them; rebuild one's KVM with patches.",
        discussion: """
            --build NAME --from SERIES records a lab kernel NAME: the SERIES kernel with its KVM modules (kvm, \
            kvm_amd, kvm_intel) rebuilt from Debian's linux-source of the same version, with each --patch applied \
            (patch -p1 at the top of the tree; only arch/x86/kvm and virt/kvm are there) and each --config option \
            set to y, then builds it. The patches are kept in the recipe, so NAME stays what it was built from until \
            --build records it again. The modules are compiled with the compiler the kernel's headers name: on this \
            machine when it has it, otherwise in a Debian root of the kernel's suite made with debootstrap (root \
            only; about a minute once, then cached).
            """)

    @Option(help: "Fetch these kernels (comma-separated names, or 'all').") var fetch: String?
    @Flag(help: "Look for newer packages even when kernels are cached.") var refresh = false
    @Option(help: "Record and build a lab kernel of this name whose KVM is rebuilt (with --from).") var build: String?
    @Option(help: "The catalog kernel a --build rebuilds: \(KernelFetcher.catalog.map(\.name).joined(separator: ", ")).") var from: String?
    @Option(help: "A patch file for --build (repeatable, applied in order).") var patch: [String] = []
    @Option(help: "A config option set to y for --build, without CONFIG_ (repeatable).") var config: [String] = []

    func validate() throws {
        if build == nil && (from != nil || !patch.isEmpty || !config.isEmpty) { throw ValidationError("--from, --patch and --config go with --build NAME") }
        if build != nil && from == nil { throw ValidationError("--build NAME needs --from SERIES (\(KernelFetcher.catalog.map(\.name).joined(separator: ", ")))") }
        if build != nil && fetch != nil { throw ValidationError("give --fetch or --build, not both") }
        if let from, KernelFetcher.series(named: from) == nil {
            throw ValidationError("--from \(from): not a catalog kernel (\(KernelFetcher.catalog.map(\.name).joined(separator: ", ")))")
        }
        if let bad = config.first(where: { $0.isEmpty || $0.hasPrefix("CONFIG_") || !$0.allSatisfy({ $0.isUppercase || $0.isNumber || $0 == "_" }) }) {
            throw ValidationError("--config \(bad): give the option's name without CONFIG_, e.g. KVM_SW_PROTECTED_VM")
        }
    }

    func run() throws {
        let cache = LabCache()
        let fetcher = KernelFetcher(cache: cache, progress: { printError("lab: \($0)") })
        if let build, let from {
            var patches: [KVMRebuild.Patch] = []
            for path in patch {
                do { patches.append(.init(name: path, text: try readText(path))) } catch { throw ValidationError("--patch \(path): \(error)") }
            }
            let recipe = KVMRebuild(name: build, base: from, options: config, patches: patches)
            try recipe.save(in: cache)
            let start = ContinuousClock.now
            let kernel = try recipe.kernel(fetcher: fetcher, refresh: refresh)
            print("\(build): \(kernel.release) with KVM rebuilt (\(patches.count) patch(es), recipe \(recipe.fingerprint)) in \(kernel.directory) "
                  + "(\(LabMachine.seconds(ContinuousClock.now - start).text(places: 1)) s)")
            return
        }
        if let fetch {
            let names = fetch == "all" ? KernelFetcher.names : fetch.split(separator: ",").map(String.init)
            for name in names {
                let start = ContinuousClock.now
                let kernel = try fetcher.kernel(name, refresh: refresh)
                print("\(name): \(kernel.release) in \(kernel.directory) (\(LabMachine.seconds(ContinuousClock.now - start).text(places: 1)) s)")
            }
            return
        }
        print("cache: \(cache.root)")
        for series in KernelFetcher.catalog {
            let release = (try? readText(cache.aliasPath(series.name)))?.split(separator: "\n").first.map(String.init)
            let cached = release.flatMap { LabKernel.load(from: cache.kernelDirectory($0)) }
            print("\(series.name.padded(to: 5)) \(series.suite.padded(to: 19)) " + (cached.map { "cached: \($0.release)" } ?? "not fetched"))
        }
        // A built kernel's cache directory ends in "+NAME-FINGERPRINT".
        func cachedBuild(_ name: String, _ fingerprint: String) -> LabKernel? {
            directoryEntries(cache.root + "/kernels").first { $0.hasSuffix("+\(name)-\(fingerprint)") }
                .flatMap { LabKernel.load(from: cache.kernelDirectory($0)) }
        }
        for build in GuestKernelBuild.builtIn {
            let built = cachedBuild(build.name, build.fingerprint)
            print("\(build.name) (a guest kernel compiled from \(build.base)'s source, for --guest) " + (built.map { "cached: \($0.release)" } ?? "not built"))
        }
        for name in KVMRebuild.builtIn.map(\.name) + KVMRebuild.recordedNames(cache: cache) {
            guard let recipe = KVMRebuild.recipe(named: name, cache: cache) else { continue }
            let built = cachedBuild(name, recipe.fingerprint)
            let what = "\(recipe.base) with KVM rebuilt" + (recipe.options.isEmpty ? "" : ", " + recipe.options.joined(separator: ", "))
                + (recipe.patches.isEmpty ? "" : ", " + recipe.patches.map(\.name).joined(separator: ", "))
            print("\(name) (\(what)) " + (built.map { "cached: \($0.release)" } ?? "not built"))
        }
    }
}

/// `kestrel lab selftests`: the kernel's KVM selftests, built to run in an L1.
struct LabSelftestsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftests",
        abstract: "Build programs of the kernel's KVM selftests, with patches, as static executables for an L1.",
        discussion: """
            Builds the --program paths under tools/testing/selftests/kvm from Debian's linux-source of the --from \
            kernel's version, with each --patch applied (patch -p1 at the top of the tree), in a Debian root of that \
            kernel's suite (debootstrap; root only), and prints one "PROGRAM: PATH" line each. Builds are cached by \
            recipe. Run them with kestrel lab run --add PATH.
            Example: kestrel lab selftests --from 7.2 --program x86/debug_regs --program pre_fault_memory_test
            """)

    @Option(help: "The catalog kernel whose source is used: \(KernelFetcher.catalog.map(\.name).joined(separator: ", ")).") var from: String
    @Option(help: "A patch file (repeatable, applied in order).") var patch: [String] = []
    @Option(help: "A program's path under tools/testing/selftests/kvm, e.g. x86/debug_regs (repeatable).") var program: [String] = []

    func validate() throws {
        if KernelFetcher.series(named: from) == nil {
            throw ValidationError("--from \(from): not a catalog kernel (\(KernelFetcher.catalog.map(\.name).joined(separator: ", ")))")
        }
        if program.isEmpty { throw ValidationError("name at least one --program, e.g. --program x86/debug_regs") }
    }

    func run() throws {
        var patches: [KVMRebuild.Patch] = []
        for path in patch {
            do { patches.append(.init(name: path, text: try readText(path))) } catch { throw ValidationError("--patch \(path): \(error)") }
        }
        let fetcher = KernelFetcher(cache: LabCache(), progress: { printError("lab: \($0)") })
        let built = try KVMSelftests(base: from, patches: patches, programs: program).build(fetcher: fetcher)
        for name in program { print("\(name): \(built[name]!)") }
    }
}

/// `kestrel lab build-arm64`: Kestrel cross-compiled for arm64.
struct LabBuildARM64Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-arm64",
        abstract: "Cross-compile a static arm64 kestrel (release) with Debian's Swift toolchain, and print its path.",
        discussion: """
            The compiler is sid's swiftlang, in a Debian sid root of its own under the lab cache (debootstrap; \
            root only). The target is a Swift SDK assembled there from the same swiftlang version's arm64 package \
            over the root's arm64 glibc, libgcc, libstdc++, zlib, liblzma, libzstd and liburing; lld links it. \
            Dependencies come from /opt/swift-packages. The first build makes the root (about 5 GB) and takes \
            minutes; the binary is cached by a fingerprint of Package.swift, Sources and the toolchain, so an \
            unchanged tree is not built again, and the root keeps its .build for the next change. \
            The path goes to standard output, progress and the build's size and time to standard error.
            Example: qemu-aarch64-static $(kestrel lab build-arm64) --version
            """)

    @Option(help: "The Kestrel package to build.") var packagePath = "."
    @Option(help: "Parallel jobs for swift build (default: this machine's processors).") var jobs: Int?
    @Flag(help: "Build even when the cache has this tree's binary.") var rebuild = false

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs \(jobs): give at least 1") }
        if access(packagePath + "/Package.swift", R_OK) != 0 { throw ValidationError("--package-path \(packagePath): no Package.swift there") }
    }

    func run() throws {
        let build = ARM64Build(cache: LabCache(), progress: { printError("lab: \($0)") })
        let result = try build.build(package: packagePath, jobs: jobs, rebuild: rebuild)
        let size = Double(fileSize(result.path)) / 1_048_576
        printError("lab: kestrel for \(ARM64Build.triple), \(size.text(places: 1)) MiB, "
                   + (result.cached ? "from the cache" : "built in \(result.seconds.text(places: 0)) s")
                   + (result.toolchain.map { " with swiftlang \($0)" } ?? ""))
        print(result.path)
    }
}

/// `kestrel lab run`: a command in an L1.
struct LabRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a shell command in an L1 and return its output and exit status.",
        discussion: """
            The command runs in busybox sh in /lab, with kestrel, busybox's tools and the added files. \
            Its standard output and standard error are this command's; its exit status is this \
            command's. If the L1 ends without reporting a status (panic, timeout), or its kernel logs a \
            trace in KVM or in a Kestrel process (a failure whatever the command reported), the trace \
            and the end of its console are printed and the exit status is 125. The console of every \
            boot that died is kept under the lab cache's crashes/ and named. Only deaths tied to the \
            emulator under the L1 (an Oops while booting, outside KVM; a silent heartbeat with no \
            kernel message) boot the L1 again (--boot-attempts).
            Example: kestrel lab run --kernel 6.1 --guest-kernel -- \
            'kestrel initramfs --command "uname -r" -o /tmp/i.cpio && kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio'
            """)

    @OptionGroup var options: LabMachineOptions
    @Argument(parsing: .postTerminator, help: "The command, after --.") var command: [String] = []

    func validate() throws { try options.validateBochsFlags() }

    func run() throws {
        // ArgumentParser drops the terminator itself; a later "--" is the command's own.
        guard !command.isEmpty else { throw ValidationError("give the command after --, e.g. kestrel lab run --kernel 6.1 -- uname -r") }
        let kernel = try options.resolveKernel()
        let result = try options.run(.script(command.joined(separator: " ")), kernel: kernel)
        throw ExitCode(result.failingDeath == nil ? result.status ?? 125 : 125)
    }
}

/// `kestrel lab shell`: an interactive shell in an L1.
struct LabShellCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shell", abstract: "An interactive shell in an L1 on this terminal ('exit' powers it off).")

    @OptionGroup var options: LabMachineOptions

    func validate() throws { try options.validateBochsFlags() }

    func run() throws {
        let kernel = try options.resolveKernel()
        var machineOptions = options
        machineOptions.timeout = .infinity
        let result = try machineOptions.run(.interactiveShell, kernel: kernel)
        throw ExitCode(result.status ?? 125)
    }
}

/// `kestrel lab check`: the conformance suites in one L1, or a matrix across several.
struct LabCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Run `kestrel check` in an L1 (--kernel), or across kernels and this machine as a matrix (--kernels).",
        discussion: """
            With --kernel, the check's own output (human, --tap or --json) and exit status come back. \
            With --kernels, every kernel's L1 and this machine's /dev/kvm run the check (one L1 at a \
            time unless --jobs says otherwise) and one table shows test x host, marking with "≠" the tests whose verdict depends \
            on the host, followed by the diagnoses of those failures. --json prints the matrix as JSON.
            """)

    @OptionGroup var options: LabMachineOptions
    @Option(help: ArgumentHelp("Comma-separated kernels for a matrix, e.g. 6.1,6.12,6.18,7.2.",
                               discussion: "KERNEL@bochs (or KERNEL@bochs:MODEL) is a column on the Bochs host (Intel VMX with CET; see --host), e.g. 7.2@bochs."))
    var kernels: String?
    @Flag(name: .customLong("no-local"), help: "Leave this machine's /dev/kvm out of the matrix.") var noLocal = false
    @Option(help: "L1s to run at a time for a matrix (default 1: under QEMU 7.2, two TCG L1s on two cores killed 6.12 L1s in a quarter of the boots; FINDINGS.md section 6).")
    var jobs: Int = 1
    @Flag(help: "kselftest TAP output (single kernel).") var tap = false
    @Flag(help: "JSON output.") var json = false
    @Option(name: [.customShort("f"), .long], help: "Run only tests whose id contains this text or matches this glob. Repeatable.")
    var filter: [String] = []

    func validate() throws {
        if tap && json { throw ValidationError("--tap and --json cannot be combined") }
        if kernels != nil && options.kernel != nil { throw ValidationError("give --kernel or --kernels, not both") }
        if kernels != nil && tap { throw ValidationError("a matrix is printed as text or --json, not TAP") }
        if jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        try options.validateBochsFlags(bochsColumns: kernels?.contains("@bochs") == true)
    }

    /// `--label` arguments recording the L1's host in the check's JSON document.
    func hostLabels(_ machine: LabMachine) -> [String] {
        ["lab.qemu=\(machine.qemuVersion())", "lab.accelerator=\(machine.acceleratorName)", "lab.cpu_model=\(machine.cpuModel)",
         "lab.kernel_series=\(machine.kernel.name)"].flatMap { ["--label", $0] }
    }

    var checkArguments: [String] {
        (tap ? ["--tap"] : json ? ["--json"] : []) + filter.flatMap { ["-f", $0] }
    }

    func run() throws {
        guard let kernels else {
            let kernel = try options.resolveKernel()
            let words = ["kestrel", "check"] + checkArguments + (json ? hostLabels(try options.machine(for: kernel)) : [])
            let result = try options.run(.script(words.map(shellQuoted).joined(separator: " ")), kernel: kernel)
            if !json { printError("lab: \(result.host.summary)") }
            throw ExitCode(result.status ?? 125)
        }
        let names = kernels.split(separator: ",").map(String.init)
        let matrix = try LabCheckMatrix(options: options, filters: filter, jobs: jobs).run(kernels: names, includeLocal: !noLocal)
        if json {
            print(try matrix.renderJSON())
        } else {
            print(matrix.render())
        }
        if matrix.columns.contains(where: { $0.document == nil }) { throw ExitCode(125) }
    }
}

extension LabAccelerator: ExpressibleByArgument {}
