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
    /// With `memoryPath` nil (a Uffd backend, whose handler alone knows the
    /// memory file) the memory file is not looked at.
    public static func checkSnapshot(statePath: String, memoryPath: String?) throws -> (MachineSnapshot, MachineConfiguration) {
        let snapshot = try readSnapshotState(statePath)
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
        guard let memoryPath else { return (snapshot, configuration) }
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

    /// Reads and decodes the state file at `path` (at most
    /// `maximumStateFileSize` bytes), refusing what `MachineSnapshot.decode`
    /// refuses; with `naming`, decoding's refusals start with the path (for
    /// callers that read several state files).
    static func readSnapshotState(_ path: String, naming: Bool = false) throws -> MachineSnapshot {
        let bytes: [UInt8]
        do { bytes = try readFile(path, what: "snapshot state file", limit: maximumStateFileSize) } catch {
            throw SnapshotError("\(error)")
        }
        do { return try MachineSnapshot.decode(bytes) } catch { throw naming ? SnapshotError("\(path): \(error)") : error }
    }

    /// Builds a machine in the state a snapshot recorded, ready to `run`:
    /// every check of `checkSnapshot` first, then the VM, RAM as
    /// `options.memoryBackend` says (mapped copy-on-write from the memory
    /// file by default; a guest_memfd machine's RAM is copied into its new
    /// guest_memfd, which cannot map a file), the devices opened from the
    /// recorded configuration and put back in their state, the irqchip, PIT
    /// and kvmclock, and each vCPU's CPUID and state. No vCPU has run when
    /// this returns or throws. With a Uffd backend `memoryPath` is the page-fault
    /// handler's socket. The MMDS configuration comes back with the machine;
    /// its data store does not (as in Firecracker): interfaces serve `metadata`'s.
    public static func restore(statePath: String, memoryPath: String, options: SnapshotLoadOptions = SnapshotLoadOptions(),
                               metadata metadataService: MetadataService? = nil,
                               console: @escaping @Sendable (UInt8) -> Void,
                               deviceLog: @escaping @Sendable (String) -> Void = { _ in }) throws -> Machine {
        var timer = StepTimer()
        let paging: FilePaging?
        if case .file(let filePaging) = options.memoryBackend { paging = filePaging } else { paging = nil }
        var (snapshot, configuration) = try checkSnapshot(statePath: statePath, memoryPath: paging == nil ? nil : memoryPath)
        try options.apply(to: &configuration, clock: snapshot.clock)
        if configuration.memoryBackend == .shared && paging != .eager {
            // Only an Eager load fills new shared memory (which a live snapshot can take again); the other
            // backends' RAM is the file's mapping or anonymous memory, and the configuration says so.
            configuration.memoryBackend = .anonymous
        }
        try configuration.validateDevices()
        if configuration.memoryBackend == .guestMemfd && paging != .mapped && paging != .eager {
            throw SnapshotError("the snapshot's RAM is guest_memfd, which is filled from the memory file before the guest runs; "
                + "mem_backend must be File with paging Mapped (the default) or Eager")
        }
        timer.step("read and check the snapshot")
        let virtioDevices = try VirtioDeviceSet.devices(for: configuration, metadata: metadataService, report: deviceLog)
        guard virtioDevices.count == snapshot.devices.count else {
            throw SnapshotError("the snapshot has \(snapshot.devices.count) virtio devices; its configuration makes \(virtioDevices.count)")
        }
        let kvm = try KVMSystem()
        let vm = try createVirtualMachine(kvm)
        let ringBytes = try enableDirtyRings(vm, configuration)
        let memory = addressSpace(for: configuration)
        let ram = try restoreRAM(snapshot.memory, into: vm, memory: memory, configuration: configuration, backend: options.memoryBackend,
                                 path: memoryPath, log: deviceLog)
        // A pager must not outlive a restore that fails.
        var finished = false
        defer { if !finished { ram.filler?.stop() } }
        try createInterruptControllers(vm)
        timer.step(ram.step)

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
        let rings = try ringBytes.map { bytes in try vcpus.map { try $0.mapDirtyRing(bytes: bytes) } } ?? []
        timer.step("devices, irqchip, clock and vCPUs")
        let machine = Machine(
            configuration: configuration, plan: nil, ramFromSnapshot: ram.fromSnapshot, lazyRAM: ram.filler, ramMappedFromFile: ram.mappedFromFile,
            kvm: kvm, virtualMachine: vm, memory: memory,
            serial: wiring.serial, keyboard: wiring.keyboard, panicWatcher: wiring.panicWatcher, vcpuThreads: threads, devices: wiring.devices,
            exitHandler: ExitHandler(portBus: wiring.portBus, mmioBus: wiring.mmioBus,
                                     conversions: try conversionManager(vm: vm, memory: memory, devices: wiring.devices, log: deviceLog)),
            control: wiring.control, setupSteps: timer.steps,
            memoryProtection: ram.description, dirtyRings: rings)
        machine.lastSnapshotID.withLock { $0 = snapshot.lineage.id }
        finished = true
        return machine
    }

    /// Restored RAM: how it was set up, what fills it lazily (if anything),
    /// and whether its pages may hold the file's data without being in this
    /// process's page tables (a Full snapshot then reads every page).
    struct RestoredRAM {
        var filler: (any LazyRAMFiller)?
        var fromSnapshot: Bool
        var step: String
        var description: String
        var mappedFromFile = false
    }

    /// Installs the snapshot's RAM ranges as slots and gives them the memory
    /// file's contents as `backend` says.
    static func restoreRAM(_ ranges: [MachineSnapshot.MemoryRange], into vm: VirtualMachine, memory: GuestAddressSpace,
                           configuration: MachineConfiguration, backend: SnapshotMemoryBackend, path: String,
                           log: @escaping @Sendable (String) -> Void) throws -> RestoredRAM {
        let flags: MemorySlotFlags = configuration.trackDirtyPages ? [.logDirtyPages] : []
        func addAnonymous() throws -> [(range: MachineSnapshot.MemoryRange, mapping: MemoryMapping)] {
            try ranges.enumerated().map { slot, range in
                let region = try vm.addMemory(slot: UInt32(slot), at: GuestAddress(range.guestAddress), size: Int(range.size),
                                              alignment: MemoryMapping.hugePageAlignment, backing: .anonymous(.private), flags: flags, to: memory)
                return (range, region.mapping!)
            }
        }
        guard case .file(let paging) = backend else {
            let added = try addAnonymous()
            let connection = try UserfaultHandlerConnection(socketPath: path, regions: added.map {
                (hostAddress: UInt(bitPattern: $0.mapping.baseAddress), size: $0.mapping.size, fileOffset: $0.range.fileOffset)
            })
            return RestoredRAM(filler: connection, fromSnapshot: true, step: "hand RAM's userfaultfd to the page-fault handler",
                               description: "anonymous memory filled by the page-fault handler at \(path) (mem_backend Uffd, userfaultfd \(connection.userfault.fileDescriptor))")
        }
        let memoryFile: Int32
        do { memoryFile = try HostFile.open(path, O_RDONLY, allowed: [.regular], what: "the memory file") } catch let error as HostFileError {
            throw SnapshotError(error.description)
        }
        defer { close(memoryFile) }
        if configuration.memoryBackend != .anonymous {
            // A guest_memfd machine gets a new guest_memfd, filled from the file; a shared-memory one (loaded
            // Eager) new memfds.
            let backing = try ramBacking(configuration.memoryBackend, vm: vm).0
            for (slot, range) in ranges.enumerated() {
                let region = try vm.addMemory(slot: UInt32(slot), at: GuestAddress(range.guestAddress), size: Int(range.size),
                                              alignment: MemoryMapping.hugePageAlignment, backing: backing, flags: flags, to: memory)
                if let mapping = region.mapping { try SnapshotMemoryFile.copy(from: memoryFile, range: range, into: mapping, path: path) }
            }
            let kind = configuration.memoryBackend == .shared ? "shared memory (memfd)" : "guest_memfd"
            return RestoredRAM(filler: nil, fromSnapshot: false, step: "copy RAM into \(kind)",
                               description: "\(kind), filled from the snapshot's memory file \(path)")
        }
        switch paging {
        case .mapped:
            for (slot, range) in ranges.enumerated() {
                try vm.addMemory(slot: UInt32(slot), at: GuestAddress(range.guestAddress), size: Int(range.size), alignment: MemoryMapping.hugePageAlignment,
                                 backing: .file(descriptor: memoryFile, offset: Int(range.fileOffset)), flags: flags, to: memory)
            }
            return RestoredRAM(filler: nil, fromSnapshot: true, step: "map RAM from the memory file",
                               description: "the snapshot's memory file \(path), mapped MAP_PRIVATE (copy-on-write; the file must not change while the guest runs)",
                               mappedFromFile: true)
        case .eager:
            for (range, mapping) in try addAnonymous() { try SnapshotMemoryFile.copy(from: memoryFile, range: range, into: mapping, path: path) }
            return RestoredRAM(filler: nil, fromSnapshot: false, step: "read RAM from the memory file",
                               description: "anonymous memory, read from the snapshot's memory file \(path) before the guest ran (paging Eager)")
        case .onDemand, .prefault:
            let added = try addAnonymous()
            var status = stat()
            guard fstat(memoryFile, &status) == 0 else { throw SnapshotError("cannot read the memory file \(path): \(String(cString: strerror(errno)))") }
            let regions = try added.map { range, mapping in
                let start = off_t(range.fileOffset)
                let extents = try SnapshotMemoryFile.dataExtents(of: memoryFile, in: start..<(start + off_t(range.size)), what: "the memory file \(path)")
                return RestorePager.Region(start: UInt(bitPattern: mapping.baseAddress), size: mapping.size, fileOffset: Int(range.fileOffset),
                                           extents: RestorePager.pageExtents(extents.map { Int($0.lowerBound - start)..<Int($0.upperBound - start) },
                                                                             size: mapping.size))
            }
            let pager: RestorePager
            do {
                pager = try RestorePager(regions: regions, memoryFile: memoryFile, fileSize: Int(status.st_size), prefault: paging == .prefault,
                                         discards: configuration.balloon != nil, log: log)
            } catch let error as SystemCallError {
                throw SnapshotError("paging \(paging.rawValue): \(error)")
            }
            return RestoredRAM(filler: pager, fromSnapshot: true, step: "register RAM with the pager",
                               description: "anonymous memory, filled from the snapshot's memory file \(path) on first touch by Kestrel's pager"
                                   + (paging == .prefault ? " and in the background (paging Prefault)" : " (paging OnDemand; the file must not change while the guest runs)"))
        }
    }
}
