import Boot
import FoundationEssentials
import Glibc
import GuestMemory
import KVM
import Synchronization

/// A Linux virtual machine: memory, in-kernel irqchip and PIT, vCPU threads,
/// a 16550 on COM1, an i8042 for reset, and Kestrel's exit device.
///
/// The boot plan is built (and bad images refused) before any KVM object exists.
public final class Machine {
    public let configuration: MachineConfiguration
    /// The boot that was set up (the image bytes themselves are not kept).
    public let plan: LinuxBootSummary
    public let memory = GuestAddressSpace()
    public private(set) var serial: Serial16550!
    /// Watches COM1 for the guest kernel's panic line.
    public let panicWatcher = GuestPanicWatcher()
    public let kvm: KVMSystem
    public let virtualMachine: VirtualMachine
    public private(set) var vcpus: [VCPU] = []

    private let portBus = DeviceBus()
    private let mmioBus = DeviceBus()
    private let lock = Mutex(())
    private var outcome: RunOutcome?
    private var threads: [pthread_t?]
    /// Time the first vCPU entered the guest.
    public private(set) var startTime: ContinuousClock.Instant?
    /// How long each set-up step took, for `kestrel run --verbose`.
    public private(set) var setupSteps: [(step: String, duration: Duration)] = []

    /// Plans the boot, then creates the VM, memory, devices and vCPUs.
    /// - Parameter console: receives every byte the guest writes to COM1.
    public init(configuration: MachineConfiguration, console: @escaping (UInt8) -> Void) throws {
        try configuration.validate()
        var steps: [(step: String, duration: Duration)] = []
        var stepStart = ContinuousClock.now
        func step(_ name: String) {
            let now = ContinuousClock.now
            steps.append((name, now - stepStart))
            stepStart = now
        }
        let kernel = try Self.readFile(configuration.kernelPath, what: "kernel")
        let initrd = try configuration.initrdPath.map { try Self.readFile($0, what: "initrd") }
        step("read kernel and initrd")
        let bootPlan = try LinuxBootPlan(LinuxBootRequest(
            kernel: kernel, initrd: initrd, commandLine: configuration.commandLine, memorySize: configuration.memorySize,
            decompressOnHost: configuration.decompressOnHost, preferPVH: configuration.preferPVH,
            vcpuCount: configuration.vcpuCount))
        plan = bootPlan.summary
        step("boot plan")
        self.configuration = configuration
        threads = Array(repeating: nil, count: configuration.vcpuCount)

        kvm = try KVMSystem()
        for capability in [Capability.immediateExit] where try kvm.checkExtension(capability) == 0 {
            throw ConfigurationError("this host's KVM lacks \(capability)")
        }
        virtualMachine = try kvm.createVirtualMachine()
        try virtualMachine.setTSSAddress(0xFFFB_D000)
        try virtualMachine.setIdentityMapAddress(0xFFFB_C000)
        try virtualMachine.createInterruptController()
        try virtualMachine.createPIT()

        for (slot, range) in GuestLayout.ramRanges(memorySize: configuration.memorySize).enumerated() {
            // 2 MiB-aligned and advised for huge pages: with 4 KiB host pages every
            // first touch of guest RAM is a stage-2 fault, costly on nested hosts.
            let mapping = try MemoryMapping(anonymousSize: Int(range.count), alignment: MemoryMapping.hugePageAlignment)
            try? mapping.advise(MADV_HUGEPAGE)
            try memory.add(mapping, at: range.lowerBound)
            try virtualMachine.setUserMemoryRegion(MemorySlot(
                slot: UInt32(slot), guestPhysicalAddress: range.lowerBound, size: UInt64(range.count), userspaceAddress: mapping.address))
        }
        step("VM and memory")
        try bootPlan.write(into: memory)
        step("load into guest memory")

        let vm = virtualMachine
        let watcher = panicWatcher
        serial = Serial16550(output: { byte in
            console(byte)
            watcher.consume(byte)
        }) {
            // An edge on IRQ 4.
            try? vm.setInterruptLine(Serial16550.com1Interrupt, active: true)
            try? vm.setInterruptLine(Serial16550.com1Interrupt, active: false)
        }
        portBus.add(serial, at: Serial16550.com1Base..<(Serial16550.com1Base + 8))
        portBus.add(I8042Controller { [weak self] in self?.finish(.reset(source: "i8042 reset command")) }, at: 0x60..<0x65)
        portBus.add(ACPISleepControl { [weak self] in self?.finish(.poweredOff) }, at: UInt64(ACPITables.sleepControlPort)..<UInt64(ACPITables.sleepControlPort + 2))
        mmioBus.add(ExitDevice { [weak self] status in self?.finish(.guestExit(status: status)) }, at: ExitDevice.address..<(ExitDevice.address + 8))

        guard let template = CPUTemplate.named(configuration.cpuTemplate) else { throw ConfigurationError("unknown CPU template") }
        let supported = try kvm.supportedCPUID()
        for index in 0..<configuration.vcpuCount {
            let vcpu = try virtualMachine.createVCPU(id: index)
            try vcpu.setCPUID(template.table(from: supported, vcpu: index, of: configuration.vcpuCount))
            try BootCPU.configureLocalInterrupts(vcpu)
            if index == 0 { try BootCPU.prepare(vcpu, entry: plan.entry) }
            vcpus.append(vcpu)
        }
        try KickSignal.install()
        step("devices and vCPUs")
        setupSteps = steps
    }

    /// Gives the heap memory that held the kernel and initrd images back to the
    /// system (glibc keeps freed large blocks otherwise). Call after `init`
    /// returns, once the images are no longer referenced.
    public func releaseLoaderMemory() {
        ProcessHeap.trim()
    }

    /// Resident memory of this process, with the guest's RAM (the regions
    /// of this machine) apart from Kestrel's own, from /proc/self/smaps.
    public func memoryFootprint() -> MemoryFootprint? {
        ProcessMemory.footprint(guestStarts: Set(memory.regions.map { UInt($0.mapping.address) }))
    }

    /// Reads a whole file straight into an array (one copy: no Data in between,
    /// which matters for a 50 MB vmlinux on a slow, emulated host).
    private static func readFile(_ path: String, what: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigurationError("cannot read the \(what) \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            throw ConfigurationError("cannot read the \(what) \(path): not a regular file")
        }
        let size = Int(status.st_size)
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            // Sound: read(2) writes at most `size - count` bytes past `count`,
            // inside the buffer's capacity; only the bytes read are counted.
            while count < size {
                let result = read(fd, buffer.baseAddress! + count, size - count)
                if result < 0 && errno == EINTR { continue }
                if result <= 0 { failure = result < 0 ? errno : EIO; break }
                count += result
            }
        }
        guard failure == 0, bytes.count == size else {
            throw ConfigurationError("cannot read the \(what) \(path): \(String(cString: strerror(failure == 0 ? EIO : failure)))")
        }
        return bytes
    }

    /// Runs every vCPU on its own thread until the machine stops; returns why.
    public func run() -> RunOutcome {
        releaseLoaderMemory()
        startTime = ContinuousClock.now
        var started: [POSIXThread] = []
        for index in vcpus.indices {
            do {
                started.append(try POSIXThread.start { [self] in
                    KickSignal.unblockOnThisThread()
                    lock.withLock { _ in threads[index] = pthread_self() }
                    if isFinished { vcpus[index].immediateExit = true }
                    runLoop(index)
                })
            } catch {
                finish(.vcpuFailure(vcpu: index, detail: "\(error)"))
                break
            }
        }
        for thread in started { thread.join() }
        let ending = lock.withLock { _ in outcome ?? .vcpuFailure(vcpu: 0, detail: "every vCPU stopped without a reason") }
        switch ending {
        case .guestExit, .poweredOff: return ending
        default: return panicWatcher.panicMessage.map { .guestPanic(message: $0, then: ending) } ?? ending
        }
    }

    /// Ends the run with `reason` (the first reason wins) and kicks every vCPU out of KVM_RUN.
    public func finish(_ reason: RunOutcome) {
        let targets: [pthread_t?] = lock.withLock { _ in
            if outcome == nil { outcome = reason }
            return threads
        }
        for (index, vcpu) in vcpus.enumerated() {
            vcpu.immediateExit = true
            if let thread = targets[index] { KickSignal.send(to: thread) }
        }
    }

    private var isFinished: Bool { lock.withLock { _ in outcome != nil } }

    private func runLoop(_ index: Int) {
        let vcpu = vcpus[index]
        while !isFinished {
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch {
                finish(.vcpuFailure(vcpu: index, detail: "\(error)"))
                return
            }
            switch exit {
            case .io(let io):
                for item in 0..<max(io.count, 1) {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: io.data[(item * io.size)..<((item + 1) * io.size)])
                    if io.direction == .out {
                        portBus.write(UInt64(io.port), from: UnsafeRawBufferPointer(slice))
                    } else {
                        portBus.read(UInt64(io.port), into: slice)
                    }
                }
            case .mmio(let mmio):
                if mmio.isWrite {
                    mmioBus.write(mmio.address, from: UnsafeRawBufferPointer(mmio.data))
                } else {
                    mmioBus.read(mmio.address, into: mmio.data)
                }
            case .interrupted, .notRunnable:
                continue
            case .shutdown:
                finish(.tripleFault(vcpu: index, rip: try? vcpu.registers().rip))
            case .systemEvent(let event):
                switch event.type {
                case .shutdown: finish(.poweredOff)
                case .reset: finish(.reset(source: "\(SystemEvent.Kind.reset)"))
                default: finish(.vcpuFailure(vcpu: index, detail: "\(ExitReason.systemEvent): \(event)"))
                }
            case .internalError(let error):
                finish(.internalError(vcpu: index, rip: try? vcpu.registers().rip, detail: error.description))
            case .failEntry:
                finish(.failedEntry(vcpu: index, detail: exit.description))
            case .halt:
                finish(.vcpuFailure(vcpu: index, detail: "KVM_EXIT_HLT although the local APIC is in the kernel"))
            default:
                finish(.vcpuFailure(vcpu: index, detail: "unexpected \(exit)"))
            }
        }
    }
}
