import Boot
import Confidential
import Glibc
import GuestMemory
import HostSystem
import KVM
import Metadata
import Virtio
import X86

/// Turns a `MachineConfiguration` into a `Machine` ready to run: plans the boot
/// (refusing bad images before any KVM object exists), then creates the VM, its
/// memory, devices and vCPUs. Like Firecracker's builder, it is the one place
/// where a configuration meets KVM; the machine it returns only runs.
public struct MachineBuilder {
    public let configuration: MachineConfiguration
    /// The MMDS data store that interfaces named by `mmds-config` serve (the
    /// API's, so that `PUT /mmds` reaches the guest); a fresh one when nil.
    public var metadataService: MetadataService?
    /// With a log, the machine gets Firecracker's boot timer (`--boot-timer`),
    /// which writes its line there.
    public var bootTimerLog: (@Sendable (String) -> Void)?

    public init(configuration: MachineConfiguration, metadataService: MetadataService? = nil,
                bootTimerLog: (@Sendable (String) -> Void)? = nil) {
        self.configuration = configuration
        self.metadataService = metadataService
        self.bootTimerLog = bootTimerLog
    }

    /// Builds the machine. `console` receives every byte the guest writes to COM1.
    /// Device faults (a malformed virtqueue) are reported through `deviceLog`, one line each.
    /// An SNP machine's expected launch measurement goes to `announce` before
    /// the launch finishes.
    public func build(console: @escaping @Sendable (UInt8) -> Void,
                      deviceLog: @escaping @Sendable (String) -> Void = { _ in },
                      announce: (String) -> Void = { _ in }) throws -> Machine {
        try configuration.validate()
        // A confidential machine the host cannot run is refused before anything is read or created.
        if configuration.confidential == .realm {
            // The whole plan is checked first, so its refusals come before the host's.
            do { _ = try RealmMachine.plan(configuration) } catch let violation as RealmRuleViolation {
                throw ConfigurationError("--confidential realm: \(violation.rule): \(violation)")
            }
        }
        if let mode = configuration.confidential {
            let kvm = try KVMSystem()
            try Self.refuseConfidential(mode, kvm: kvm)
            return try buildSNP(kvm: kvm, console: console, deviceLog: deviceLog, announce: announce)
        }
        var timer = StepTimer()
        let kernel = try Self.readFile(configuration.kernelPath, what: "kernel")
        let initrd = try configuration.initrdPath.map { try Self.readFile($0, what: "initrd") }
        timer.step("read kernel and initrd")
        // Opening the disks (and locking them) before the VM exists refuses a
        // busy or unreadable image early.
        let virtioDevices = try VirtioDeviceSet.devices(for: configuration, metadata: metadataService, report: deviceLog)
        var request = LinuxBootRequest(
            kernel: kernel, initrd: initrd, commandLine: configuration.effectiveCommandLine, memorySize: configuration.memorySize,
            decompressOnHost: configuration.decompressOnHost, preferPVH: configuration.preferPVH,
            vcpuCount: configuration.vcpuCount)
        request.mmioDevices = virtioDevices.indices.map(VirtioPlacement.device)
        let bootPlan = try LinuxBootPlan(request)
        timer.step("boot plan")

        let kvm = try KVMSystem()
        if configuration.prefault, try kvm.checkExtension(.preFaultMemory) == 0 {
            throw ConfigurationError("--prefault: this host's KVM lacks KVM_CAP_PRE_FAULT_MEMORY (Linux 6.10)")
        }
        let vm = try Self.createVirtualMachine(kvm)
        let ringBytes = try Self.enableDirtyRings(vm, configuration)

        let memory = Self.addressSpace(for: configuration)
        let (backing, protection) = try Self.ramBacking(configuration.memoryBackend, vm: vm)
        let ranges = GuestLayout.ramRanges(memorySize: configuration.memorySize)
        for (slot, range) in ranges.enumerated() {
            // 2 MiB-aligned and advised for huge pages: with 4 KiB host pages every
            // first touch of guest RAM is a stage-2 fault, costly on nested hosts.
            let region = try vm.addMemory(slot: UInt32(slot), at: GuestAddress(range.lowerBound), size: Int(range.count),
                                          alignment: MemoryMapping.hugePageAlignment, backing: backing,
                                          flags: configuration.trackDirtyPages ? [.logDirtyPages] : [], to: memory)
            if backing == .anonymous(.private) { try? region.mapping?.advise(MADV_HUGEPAGE) }
        }
        try Self.createInterruptControllers(vm)
        timer.step("VM and memory")
        try bootPlan.write(into: memory)
        timer.step("load into guest memory")

        let wiring = try Self.wireDevices(vm: vm, kvm: kvm, memory: memory, virtioDevices: virtioDevices, console: console,
                                          deviceLog: deviceLog, bootTimerLog: bootTimerLog)
        let (control, panicWatcher, serial, portBus, mmioBus, devices) =
            (wiring.control, wiring.panicWatcher, wiring.serial, wiring.portBus, wiring.mmioBus, wiring.devices)

        guard let template = CPUTemplate.named(configuration.cpuTemplate) else { throw ConfigurationError("unknown CPU template") }
        let supported = try Self.supportedCPUID(kvm)
        let custom = configuration.customCPUTemplate
        for capability in custom?.requiredCapabilities ?? []
        where (Int32(exactly: capability).flatMap { try? kvm.checkExtension(Capability($0, name: "capability \($0)")) } ?? 0) <= 0 {
            throw ConfigurationError("cpu-config: this host's KVM lacks capability \(capability), which kvm_capabilities requires")
        }
        var vcpus: [VCPU] = []
        for index in 0..<configuration.vcpuCount {
            let vcpu = try vm.createVCPU(id: index)
            let table = template.table(from: supported, vcpu: index, of: configuration.topology)
            try vcpu.setCPUID(custom?.apply(to: table) ?? table)
            try custom?.applyMSRs(to: vcpu)
            try BootCPU.configureLocalInterrupts(vcpu)
            if index == 0 { try BootCPU.prepare(vcpu, entry: bootPlan.entry) }
            vcpus.append(vcpu)
        }
        let threads = try vcpus.map { try VCPUThread($0) }
        let rings = try ringBytes.map { bytes in try vcpus.map { try $0.mapDirtyRing(bytes: bytes) } } ?? []
        timer.step("devices and vCPUs")
        if configuration.prefault {
            for range in ranges { try vcpus[0].preFaultMemory(address: range.lowerBound, size: UInt64(range.count)) }
            timer.step("prefault")
        }

        return Machine(
            configuration: configuration, plan: bootPlan.summary, kvm: kvm, virtualMachine: vm, memory: memory,
            serial: serial, keyboard: wiring.keyboard, panicWatcher: panicWatcher, vcpuThreads: threads, devices: devices,
            exitHandler: ExitHandler(portBus: portBus, mmioBus: mmioBus,
                                     conversions: try Self.conversionManager(vm: vm, memory: memory, devices: devices, log: deviceLog)),
            control: control, setupSteps: timer.steps,
            memoryProtection: "\(protection) (\(ranges.count) slot\(ranges.count == 1 ? "" : "s"))", dirtyRings: rings)
    }

    /// The dirty ring's size: 4096 entries (64 KiB per vCPU), or the host's
    /// largest if smaller.
    static let dirtyRingBytes = 64 << 10

    /// With `dirty_log` Ring, gives every vCPU created from now on a dirty
    /// ring (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, or KVM_CAP_DIRTY_LOG_RING) and
    /// returns its size; nil for the bitmap. Before any vCPU exists.
    static func enableDirtyRings(_ vm: VirtualMachine, _ configuration: MachineConfiguration) throws -> Int? {
        guard configuration.trackDirtyPages, configuration.dirtyLog == .ring else { return nil }
        let limit = try vm.dirtyRingLimit().bytes
        guard limit >= 4096 else {
            throw ConfigurationError("dirty_log Ring: this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING is 0); use Bitmap")
        }
        let bytes = min(dirtyRingBytes, limit)
        try vm.enableDirtyRings(bytes: bytes)
        return bytes
    }

    /// Guest RAM's address space, recording host writes from the start when
    /// the configuration tracks dirty pages: before the boot plan is written,
    /// so that a Diff taken before any Full holds the kernel, initrd and
    /// tables Kestrel loads, which KVM never sees.
    static func addressSpace(for configuration: MachineConfiguration) -> GuestAddressSpace {
        let memory = GuestAddressSpace()
        if configuration.trackDirtyPages { memory.startTrackingWrites() }
        return memory
    }

    /// A VM with the TSS and identity-map pages below 4 GiB; its RAM comes
    /// next, then `createInterruptControllers`. Refuses a KVM without
    /// KVM_CAP_IMMEDIATE_EXIT (pauses and stops need it).
    static func createVirtualMachine(_ kvm: KVMSystem) throws -> VirtualMachine {
        for capability in [Capability.immediateExit] where try kvm.checkExtension(capability) == 0 {
            throw ConfigurationError("this host's KVM lacks \(capability)")
        }
        let vm = try kvm.createVirtualMachine()
        try vm.setTSSAddress(0xFFFB_D000)
        try vm.setIdentityMapAddress(0xFFFB_C000)
        return vm
    }

    /// KVM's supported CPUID, with TSC-deadline mode added when the in-kernel
    /// local APIC emulates it (KVM_CAP_TSC_DEADLINE_TIMER), as Firecracker
    /// and QEMU offer it. KVM lists it in KVM_GET_SUPPORTED_CPUID only from 6.x
    /// on: on a 6.1 lab L1 a guest without it ran its local APIC timer in
    /// one-shot mode, calibrated against the PIT, where a 7.2 L1's guests used
    /// `lapic-deadline` and no PIT at all.
    static func supportedCPUID(_ kvm: KVMSystem) throws -> CPUIDTable {
        let table = try kvm.supportedCPUID()
        return try kvm.checkExtension(.tscDeadlineTimer) > 0 ? CPUFeature.tscDeadline.setting(true, in: table) : table
    }

    /// The in-kernel irqchip (PICs, IOAPIC, LAPICs) and PIT, after the RAM's
    /// memory slots: with the irqchip made first, the first
    /// KVM_SET_USER_MEMORY_REGION took 7.6 ms instead of 0.12 ms on this
    /// machine's kvm_pvm (6.18) and 3.4 ms instead of 0.9 ms on a 7.2 lab L1
    /// (the same calls in the other order; 6.1 showed no difference).
    /// The GSI table is Kestrel's (`InterruptRouting.legacyPC`), so that the
    /// PIT arrives where the MADT and the MP table say.
    static func createInterruptControllers(_ vm: VirtualMachine) throws {
        try vm.createInterruptController()
        try vm.setInterruptRouting(InterruptRouting.legacyPC)
        try vm.createPIT()
    }

    /// The serial port, the i8042, ACPI sleep, the exit device and the virtio
    /// transports, on their buses. `platformFeatures` go to every virtio transport.
    struct DeviceWiring {
        let control: RunControl
        let panicWatcher: GuestPanicWatcher
        let serial: Serial16550
        let keyboard: I8042Controller
        let portBus: DeviceBus
        let mmioBus: DeviceBus
        let devices: VirtioDeviceSet
    }

    static func wireDevices(vm: VirtualMachine, kvm: KVMSystem, memory: GuestAddressSpace,
                            virtioDevices: [(name: String, device: any VirtioDevice)], platformFeatures: UInt64 = 0,
                            console: @escaping @Sendable (UInt8) -> Void,
                            deviceLog: @escaping @Sendable (String) -> Void,
                            bootTimerLog: (@Sendable (String) -> Void)? = nil) throws -> DeviceWiring {
        let control = RunControl()
        let panicWatcher = GuestPanicWatcher()
        // Edges on IRQ 4 and IRQ 1, each whole even when two threads raise it at
        // once (vCPUs and the console's input; the API thread and a vCPU).
        let serialEdge = EdgePulse { try? vm.setInterruptLine(Serial16550.com1Interrupt, active: $0) }
        let keyboardEdge = EdgePulse { try? vm.setInterruptLine(I8042Controller.keyboardInterrupt, active: $0) }
        let serial = Serial16550(output: { byte in
            console(byte)
            panicWatcher.consume(byte)
        }) { serialEdge.pulse() }
        var portBus = DeviceBus()
        var mmioBus = DeviceBus()
        portBus.add(serial, at: Serial16550.com1Base..<(Serial16550.com1Base + 8))
        let keyboard = I8042Controller(reset: { control.finish(.reset(source: "i8042 reset command")) }) { keyboardEdge.pulse() }
        portBus.add(keyboard, at: 0x60..<0x65)
        portBus.add(ACPISleepControl { control.finish(.poweredOff) },
                    at: UInt64(ACPITables.sleepControlPort)..<UInt64(ACPITables.sleepControlPort + 2))
        mmioBus.add(ExitDevice { status in control.finish(.guestExit(status: status)) }, at: ExitDevice.address..<(ExitDevice.address + 8))
        if let bootTimerLog { mmioBus.add(BootTimer(log: bootTimerLog), at: BootTimer.address..<(BootTimer.address + 0x1000)) }
        let devices = try VirtioDeviceSet(devices: virtioDevices, vm: vm, kvm: kvm, memory: memory,
                                          platformFeatures: platformFeatures, mmioBus: &mmioBus,
                                          log: deviceLog)

        return DeviceWiring(control: control, panicWatcher: panicWatcher, serial: serial, keyboard: keyboard, portBus: portBus, mmioBus: mmioBus,
                            devices: devices)
    }

    /// The conversion manager for a VM whose type has private memory
    /// (KVM_CAP_MEMORY_ATTRIBUTES offers PRIVATE on it) and whose RAM regions
    /// have a guest_memfd; nil otherwise, and then a conversion exit ends the
    /// run, naming it. No VM type `kestrel run` builds today has private
    /// memory (the default VM's attributes are 0), so this is nil in practice.
    static func conversionManager(vm: VirtualMachine, memory: GuestAddressSpace, devices: VirtioDeviceSet,
                                  log: @escaping @Sendable (String) -> Void) throws -> ConversionManager? {
        let attributes = MemoryAttributes(rawValue: UInt64(try vm.checkExtension(.memoryAttributes)))
        guard attributes.contains(.private), vm.regions.contains(where: { $0.guestMemfd != nil }) else { return nil }
        return try ConversionManager(vm: vm, memory: memory, mmio: devices.mmioRanges, log: log)
    }

    /// Refuses a confidential machine this host cannot run before any VM
    /// exists, naming what it lacks. Returns for an SNP host.
    static func refuseConfidential(_ mode: ConfidentialMode, kvm: KVMSystem) throws {
        switch mode {
        case .realm:
            throw ConfigurationError("--confidential realm: \(RealmMachine.refusal(architecture: HostKernel.machine, kvm: kvm))")
        case .snp:
            let missing = try SNPHostSupport(kvm: kvm).missingForLaunch
            guard missing.isEmpty else { throw ConfigurationError("--confidential snp: \(SNPLaunchError.unavailable(missing))") }
        }
    }

    /// How `backend` backs RAM on this VM, and a sentence saying what protection
    /// is in force. guest_memfd needs MMAP|INIT_SHARED; its refusal names what
    /// the host lacks.
    static func ramBacking(_ backend: MemoryBackend, vm: VirtualMachine) throws -> (RAMBacking, String) {
        switch backend {
        case .anonymous:
            return (.anonymous(.private), "anonymous memory, in the host's direct map")
        case .shared:
            return (.sharedMemory, "a memfd per RAM range, mapped MAP_SHARED (live snapshots write-protect it), in the host's direct map")
        case .guestMemfd:
            let flags: GuestMemfdFlags
            do { flags = try vm.guestMemfdFlagsForRAM() } catch let error as KVMUsageError {
                throw ConfigurationError("memory backend guest_memfd: \(error.description)")
            }
            let directMap = flags.contains(.noDirectMap)
                ? "removed from the host's direct map (NO_DIRECT_MAP)"
                : "still in the host's direct map (this kernel does not offer GUEST_MEMFD_FLAG_NO_DIRECT_MAP)"
            return (.guestMemfd(flags), "guest_memfd \(flags), set with KVM_SET_USER_MEMORY_REGION2, userspace_addr at "
                + "Kestrel's MAP_SHARED mapping of the file; \(directMap)")
        }
    }

    /// Durations of the set-up steps, for `kestrel run --verbose`.
    struct StepTimer {
        var steps: [(step: String, duration: Duration)] = []
        var start = ContinuousClock.now

        mutating func step(_ name: String) {
            let now = ContinuousClock.now
            steps.append((name, now - start))
            start = now
        }
    }

    /// Reads a whole file straight into an array (one copy: no Data in between,
    /// which matters for a 50 MB vmlinux on a slow, emulated host).
    public static func readFile(_ path: String, what: String, limit: Int = .max) throws -> [UInt8] {
        // Non-blocking open: a FIFO named as a kernel must be refused, not waited on.
        let fd: Int32
        do { fd = try HostFile.open(path, O_RDONLY, allowed: [.regular], what: "the \(what)") } catch let error as HostFileError {
            throw ConfigurationError(error.description)
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw ConfigurationError("cannot read the \(what) \(path): \(String(cString: strerror(errno)))") }
        let size = Int(status.st_size)
        guard size <= limit else { throw ConfigurationError("cannot read the \(what) \(path): \(size) bytes, more than the \(limit) a \(what) can have") }
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
}
