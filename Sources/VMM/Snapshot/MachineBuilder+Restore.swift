import Boot
import Glibc
import GuestMemory
import HostSystem
import KVM
import Metadata
import Virtio
import X86

extension MachineBuilder {
    /// The largest state file read (a 64-vCPU machine's is well under 2 MiB).
    static let maximumStateFileSize = 64 << 20

    /// Reads and checks a snapshot's state file and memory file without
    /// creating anything: magic, version, CRC, every section, the
    /// configuration it holds, and the memory file's size. Everything a
    /// restore refuses on its files, it refuses here.
    public static func checkSnapshot(statePath: String, memoryPath: String) throws -> (MachineSnapshot, MachineConfiguration) {
        let bytes: [UInt8]
        do { bytes = try readFile(statePath, what: "snapshot state file", limit: maximumStateFileSize) } catch {
            throw SnapshotError("\(error)")
        }
        let snapshot = try MachineSnapshot.decode(bytes)
        let configuration: MachineConfiguration
        do {
            configuration = try MachineConfigFile.parse(try JSONValue.parse(Array(snapshot.configuration.utf8)),
                                                        source: "the snapshot's configuration")
        } catch {
            throw SnapshotError("the snapshot's configuration cannot be read: \(error)")
        }
        guard snapshot.vcpus.count == configuration.vcpuCount else {
            throw SnapshotError("the snapshot has \(snapshot.vcpus.count) vCPU states for a machine of \(configuration.vcpuCount)")
        }
        let layout = GuestLayout.ramRanges(memorySize: configuration.memorySize)
        guard snapshot.memory.map({ $0.guestAddress..<($0.guestAddress + $0.size) }) == layout else {
            throw SnapshotError("the snapshot's RAM ranges do not match a machine of \(configuration.memorySize >> 20) MiB")
        }
        var status = stat()
        guard stat(memoryPath, &status) == 0 else {
            throw SnapshotError("cannot read the memory file \(memoryPath): \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFREG else { throw SnapshotError("the memory file \(memoryPath) is not a regular file") }
        guard UInt64(status.st_size) == snapshot.memoryFileSize else {
            throw SnapshotError("the memory file \(memoryPath) has \(status.st_size) bytes; the snapshot's RAM needs \(snapshot.memoryFileSize) (truncated, or another snapshot's)")
        }
        return (snapshot, configuration)
    }

    /// Builds a machine in the state a snapshot recorded, ready to `run`:
    /// every check of `checkSnapshot` first, then the VM, RAM mapped
    /// copy-on-write from the memory file (not copied; a guest_memfd
    /// machine's RAM is copied into its new guest_memfd, which cannot map a
    /// file), the devices opened from the recorded configuration and put
    /// back in their state, the irqchip, PIT and kvmclock, and each vCPU's
    /// CPUID and state. No vCPU has run when this returns or throws. The
    /// MMDS configuration comes back with the machine; its data store does
    /// not (as in Firecracker): interfaces serve `metadata`'s.
    public static func restore(statePath: String, memoryPath: String, options: SnapshotLoadOptions = SnapshotLoadOptions(),
                               metadata metadataService: MetadataService? = nil,
                               console: @escaping @Sendable (UInt8) -> Void,
                               deviceLog: @escaping @Sendable (String) -> Void = { _ in }) throws -> Machine {
        var timer = StepTimer()
        var (snapshot, configuration) = try checkSnapshot(statePath: statePath, memoryPath: memoryPath)
        try options.apply(to: &configuration, clock: snapshot.clock)
        try configuration.validateDevices()
        timer.step("read and check the snapshot")
        let virtioDevices = try VirtioDeviceSet.devices(for: configuration, metadata: metadataService, report: deviceLog)
        guard virtioDevices.count == snapshot.devices.count else {
            throw SnapshotError("the snapshot has \(snapshot.devices.count) virtio devices; its configuration makes \(virtioDevices.count)")
        }
        let kvm = try KVMSystem()
        let vm = try createVirtualMachine(kvm)
        let memory = addressSpace(for: configuration)
        let memoryFile: Int32
        do { memoryFile = try HostFile.open(memoryPath, O_RDONLY, allowed: [.regular], what: "the memory file") } catch let error as HostFileError {
            throw SnapshotError(error.description)
        }
        defer { close(memoryFile) }
        let mapped = configuration.memoryBackend == .anonymous
        // A guest_memfd machine gets a new guest_memfd, filled from the file below.
        let guestMemfd = mapped ? nil : try ramBacking(configuration.memoryBackend, vm: vm).0
        for (slot, range) in snapshot.memory.enumerated() {
            let region = try vm.addMemory(
                slot: UInt32(slot), at: GuestAddress(range.guestAddress), size: Int(range.size), alignment: MemoryMapping.hugePageAlignment,
                backing: guestMemfd ?? .file(descriptor: memoryFile, offset: Int(range.fileOffset)),
                flags: configuration.trackDirtyPages ? [.logDirtyPages] : [], to: memory)
            if !mapped, let mapping = region.mapping {
                try SnapshotMemoryFile.copy(from: memoryFile, range: range, into: mapping, path: memoryPath)
            }
        }
        try createInterruptControllers(vm)
        timer.step(mapped ? "map RAM from the memory file" : "copy RAM into guest_memfd")

        let wiring = try wireDevices(vm: vm, kvm: kvm, memory: memory, virtioDevices: virtioDevices, console: console, deviceLog: deviceLog)
        wiring.serial.restore(snapshot.serial)
        for (transport, saved) in zip(wiring.devices.transports, snapshot.devices) { try transport.restore(saved) }
        for chip in snapshot.interruptControllers { try vm.setInterruptControllerState(chip) }
        try vm.setPITState(snapshot.pit)
        try vm.setClock(snapshot.clock, realtime: options.clockRealtime)
        wiring.keyboard.restore(snapshot.keyboard)
        var vcpus: [VCPU] = []
        for (index, saved) in snapshot.vcpus.enumerated() {
            let vcpu = try vm.createVCPU(id: index)
            try vcpu.setCPUID(CPUIDTable(entries: saved.cpuid))
            do { try saved.state.restore(into: vcpu) } catch {
                throw SnapshotError("vCPU \(index): \(error)")
            }
            vcpus.append(vcpu)
        }
        let threads = try vcpus.map { try VCPUThread($0) }
        timer.step("devices, irqchip, clock and vCPUs")
        return Machine(
            configuration: configuration, plan: nil, ramFromSnapshot: mapped, kvm: kvm, virtualMachine: vm, memory: memory,
            serial: wiring.serial, keyboard: wiring.keyboard, panicWatcher: wiring.panicWatcher, vcpuThreads: threads, devices: wiring.devices,
            exitHandler: ExitHandler(portBus: wiring.portBus, mmioBus: wiring.mmioBus,
                                     conversions: try conversionManager(vm: vm, memory: memory, devices: wiring.devices, log: deviceLog)),
            control: wiring.control, setupSteps: timer.steps,
            memoryProtection: mapped ? "the snapshot's memory file \(memoryPath), mapped MAP_PRIVATE (copy-on-write; the file must not change while the guest runs)"
                : "guest_memfd, filled from the snapshot's memory file \(memoryPath)")
    }
}
