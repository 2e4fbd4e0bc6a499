import Boot
import Confidential
import GuestMemory
import KVM
import Metadata
import Virtio

/// `kestrel run --confidential snp`: the SNP machine a configuration asks
/// for. The plan (`SNPBootPlan`) and its measurement need no SNP host, so
/// `--dry-run` prints them anywhere; the launch itself needs KVM_X86_SNP_VM
/// and /dev/sev, and a host without them is refused first, by name.
extension MachineBuilder {
    /// The C-bit KVM reports (CPUID 0x8000001F EBX[5:0]), or nil when this
    /// host's KVM offers no SEV leaf.
    static func encryptionBit(_ supported: CPUIDTable) -> Int? {
        guard let leaf = supported.entry(function: 0x8000_001F), leaf.eax & 0x2 != 0 else { return nil }
        return Int(leaf.ebx & 0x3F)
    }

    /// The C-bit a dry run assumes when the host has no SEV leaf: bit 51, as on
    /// AMD EPYC 7003 and 9004 parts.
    public static let assumedEncryptionBit = 51

    /// The SNP plan for this configuration and the vCPU 0 CPUID table, and
    /// whether the C-bit was read from the host (false: assumed).
    func snpPlan(kvm: KVMSystem, platformDevices: [ACPITables.MMIODevice], kernel: [UInt8], initrd: [UInt8]?) throws -> (SNPBootPlan, Bool) {
        guard let template = CPUTemplate.named(configuration.cpuTemplate) else { throw ConfigurationError("unknown CPU template") }
        let supported = try kvm.supportedCPUID()
        let table = template.table(from: supported, vcpu: 0, of: configuration.topology)
        var request = LinuxBootRequest(
            kernel: kernel, initrd: initrd, commandLine: configuration.effectiveCommandLine, memorySize: configuration.memorySize,
            decompressOnHost: configuration.decompressOnHost, preferPVH: false, vcpuCount: configuration.vcpuCount)
        request.mmioDevices = platformDevices
        let bit = Self.encryptionBit(supported)
        return (try SNPBootPlan(request: request, cpuid: table, encryptionBit: bit ?? Self.assumedEncryptionBit), bit != nil)
    }

    /// `--confidential snp --dry-run`: the plan and the measurement it leads
    /// to, computed from a scratch copy of guest memory. Starts no VM.
    public func snpDryRun() throws -> String {
        try configuration.validate()
        let kernel = try Self.readFile(configuration.kernelPath, what: "kernel")
        let initrd = try configuration.initrdPath.map { try Self.readFile($0, what: "initrd") }
        let virtio = try VirtioDeviceSet.devices(for: configuration, metadata: metadataService)
        let kvm = try KVMSystem()
        let (plan, bitFromHost) = try snpPlan(kvm: kvm, platformDevices: virtio.indices.map(VirtioPlacement.device), kernel: kernel, initrd: initrd)
        let image = GuestAddressSpace()
        try image.add(try MemoryMapping(anonymousSize: Int(plan.memorySize), sharing: .private), at: GuestAddress(0))
        try plan.boot.write(into: image)
        var text = plan.render(measurement: try plan.measurement(image: image))
        if !bitFromHost {
            text += "\n  (this host's KVM reports no SEV leaf 0x8000001F: the C-bit \(Self.assumedEncryptionBit) is assumed; on an SNP host it is read from KVM)"
        }
        let missing = try SNPHostSupport(kvm: kvm).missingForLaunch
        text += missing.isEmpty ? "\n  this host offers SEV-SNP" : "\n  this host cannot launch it: " + missing.joined(separator: "; ")
        return text
    }

    /// Builds an SNP machine on a host that offers SEV-SNP: the SNP VM with its
    /// guest_memfd, the payload written into the shared launch buffer, every
    /// RAM page launched, vCPUs set up, the measurement announced before
    /// SNP_LAUNCH_FINISH, and conversions through the `ConversionManager`
    /// (KVM_HC_MAP_GPA_RANGE exits enabled).
    func buildSNP(kvm: KVMSystem, console: @escaping @Sendable (UInt8) -> Void,
                  deviceLog: @escaping @Sendable (String) -> Void, announce: (String) -> Void) throws -> Machine {
        if configuration.memoryBackend != .anonymous {
            // SNP private memory is always guest_memfd; the option names shared-memory backing only.
            deviceLog("--confidential snp: private memory is guest_memfd; shared memory is a MAP_SHARED mapping")
        }
        let kernel = try Self.readFile(configuration.kernelPath, what: "kernel")
        let initrd = try configuration.initrdPath.map { try Self.readFile($0, what: "initrd") }
        let virtioDevices = try VirtioDeviceSet.devices(for: configuration, metadata: metadataService, report: deviceLog)
        let (plan, bitFromHost) = try snpPlan(kvm: kvm, platformDevices: virtioDevices.indices.map(VirtioPlacement.device),
                                              kernel: kernel, initrd: initrd)
        guard bitFromHost else { throw ConfigurationError("--confidential snp: KVM reports no SEV CPUID leaf 0x8000001F, so the C-bit is unknown") }
        guard try kvm.checkExtension(.exitHypercall) & (1 << Int(ConversionManager.mapGPARangeHypercall)) != 0 else {
            throw ConfigurationError("--confidential snp: KVM_CAP_EXIT_HYPERCALL does not offer KVM_HC_MAP_GPA_RANGE, so the guest could not convert memory")
        }

        let launch = try SNPLaunch(kvm: kvm, memorySize: plan.memorySize)
        let vm = launch.virtualMachine
        // Certificate requests exit to userspace only if asked before any vCPU exists.
        if configuration.snpCertificatesPath != nil { try launch.enableCertificateRequests(kvm: kvm) }
        try vm.enableCapability(.exitHypercall, arguments: [1 << UInt64(ConversionManager.mapGPARangeHypercall)])
        try Self.createInterruptControllers(vm)
        let memory = GuestAddressSpace()
        try memory.add(launch.sharedMemory, at: GuestAddress(0))
        try plan.boot.write(into: memory)
        let measurement = try plan.measurement(image: memory)
        let wiring = try Self.wireDevices(vm: vm, kvm: kvm, memory: memory, virtioDevices: virtioDevices,
                                          platformFeatures: VirtioFeature.accessPlatform, console: console, deviceLog: deviceLog)
        guard let template = CPUTemplate.named(configuration.cpuTemplate) else { throw ConfigurationError("unknown CPU template") }
        let supported = try kvm.supportedCPUID()
        var vcpus: [VCPU] = []
        try SNPLaunchSequence.run(plan, measurement: measurement, on: launch, createVCPUs: {
            for index in 0..<configuration.vcpuCount {
                let vcpu = try vm.createVCPU(id: index)
                try vcpu.setCPUID(template.table(from: supported, vcpu: index, of: configuration.topology))
                try BootCPU.configureLocalInterrupts(vcpu)
                if index == 0 { try BootCPU.prepare(vcpu, entry: plan.boot.entry, pageTableRoot: plan.boot.pageTableRoot) }
                vcpus.append(vcpu)
            }
        }, announce: announce)
        // All RAM is private now; the guest asks for shared ranges through the manager.
        memory.setPrivate(0..<plan.memorySize, true)
        let conversions = try ConversionManager(vm: vm, memory: memory, mmio: wiring.devices.mmioRanges, log: deviceLog)
        return Machine(
            configuration: configuration, plan: plan.boot.summary, kvm: kvm, virtualMachine: vm, memory: memory,
            serial: wiring.serial, keyboard: wiring.keyboard, panicWatcher: wiring.panicWatcher, vcpuThreads: try vcpus.map { try VCPUThread($0) },
            devices: wiring.devices,
            exitHandler: ExitHandler(portBus: wiring.portBus, mmioBus: wiring.mmioBus, conversions: conversions),
            control: wiring.control, setupSteps: [],
            memoryProtection: "SEV-SNP: private memory in guest_memfd, encrypted with the guest's key (C-bit \(plan.encryptionBit)); shared memory MAP_SHARED",
            certificates: configuration.snpCertificatesPath.map { (file: $0, log: deviceLog) })
    }
}
