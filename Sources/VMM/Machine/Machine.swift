import Boot
import Glibc
import Confidential
import GuestMemory
import HostSystem
import KVM
import Synchronization

/// A built Linux virtual machine: memory, in-kernel irqchip and PIT, a 16550
/// on COM1, an i8042 with a keyboard (reset, Ctrl+Alt+Del), Kestrel's exit
/// device, and a thread per vCPU.
/// `MachineBuilder` makes one; this type runs it, pauses it and ends it. What
/// each exit means is `ExitHandler`'s business.
public final class Machine: Sendable {
    /// What the machine was built from, with the changes made since
    /// (`updateDrive`, `updateNetworkInterface`): what a snapshot records.
    public var configuration: MachineConfiguration { current.withLock { $0 } }
    let current: Mutex<MachineConfiguration>
    /// The boot that was set up (the image bytes themselves are not kept);
    /// nil for a machine restored from a snapshot.
    public let plan: LinuxBootSummary?
    /// Whether guest RAM's pages may hold a snapshot's data without being in
    /// this process's page tables: mapped copy-on-write from the memory
    /// file, or filled lazily (`paging` OnDemand or Prefault, a Uffd handler).
    public let ramFromSnapshot: Bool
    /// What fills lazily restored RAM while the machine runs.
    let lazyRAM: (any LazyRAMFiller)?
    /// Whether RAM maps a snapshot's memory file (paging Mapped).
    let ramMappedFromFile: Bool
    public let kvm: KVMSystem
    public let virtualMachine: VirtualMachine
    public let memory: GuestAddressSpace
    public let serial: Serial16550
    /// The i8042 and its keyboard (reset, Ctrl+Alt+Del).
    public let keyboard: I8042Controller
    /// Watches COM1 for the guest kernel's panic line.
    public let panicWatcher: GuestPanicWatcher
    public let vcpuThreads: [VCPUThread]
    /// The virtio devices and their event loop.
    public let devices: VirtioDeviceSet
    public let exitHandler: ExitHandler
    /// How long each set-up step took, for `kestrel run --verbose`.
    public let setupSteps: [(step: String, duration: Duration)]
    /// What backs guest RAM and whether it is still in the host's direct map.
    public let memoryProtection: String
    /// The pages changed since the last snapshot, for Diff snapshots.
    let dirtyPages: DirtyPageTracker
    /// The id of the last snapshot taken of this machine, or of the one it
    /// was restored from: a Diff's parent (`SnapshotLineage`).
    let lastSnapshotID = Mutex<[UInt8]?>(nil)
    /// For an SNP guest with `--snp-certs`: the certificate file each vCPU's
    /// responder serves, and where its refusals are logged.
    let certificates: (file: String, log: @Sendable (String) -> Void)?
    private let control: RunControl
    private let started = Mutex<ContinuousClock.Instant?>(nil)
    /// Whether `run` parks the devices at once (`pauseBeforeRun`); `resume`
    /// clears it. Its lock also orders that park against a resume.
    private let pausedAtStart = Mutex<Bool>(false)
    /// Holds every vCPU thread before its first KVM_RUN until `run`'s
    /// `ready` has returned.
    private let firstRunGate = ConditionLock()
    private let firstRunAllowed = Mutex<Bool>(false)

    init(configuration: MachineConfiguration, plan: LinuxBootSummary?, ramFromSnapshot: Bool = false, lazyRAM: (any LazyRAMFiller)? = nil,
         ramMappedFromFile: Bool = false,
         kvm: KVMSystem, virtualMachine: VirtualMachine,
         memory: GuestAddressSpace, serial: Serial16550, keyboard: I8042Controller, panicWatcher: GuestPanicWatcher, vcpuThreads: [VCPUThread],
         devices: VirtioDeviceSet, exitHandler: ExitHandler, control: RunControl, setupSteps: [(step: String, duration: Duration)],
         memoryProtection: String, certificates: (file: String, log: @Sendable (String) -> Void)? = nil, dirtyRings: [DirtyRing] = []) {
        self.certificates = certificates
        current = Mutex(configuration)
        self.plan = plan
        self.ramFromSnapshot = ramFromSnapshot
        self.lazyRAM = lazyRAM
        self.ramMappedFromFile = ramMappedFromFile
        self.kvm = kvm
        self.virtualMachine = virtualMachine
        self.memory = memory
        self.serial = serial
        self.keyboard = keyboard
        self.panicWatcher = panicWatcher
        self.vcpuThreads = vcpuThreads
        self.devices = devices
        self.exitHandler = exitHandler
        self.control = control
        self.setupSteps = setupSteps
        self.memoryProtection = memoryProtection
        dirtyPages = DirtyPageTracker(virtualMachine: virtualMachine, memory: memory, logsWrites: configuration.trackDirtyPages, rings: dirtyRings)
    }

    /// The vCPUs, in id order.
    public var vcpus: [VCPU] { vcpuThreads.map(\.vcpu) }

    /// Time the first vCPU thread started.
    public var startTime: ContinuousClock.Instant? { started.withLock { $0 } }

    /// Gives the heap memory that held the kernel and initrd images back to the
    /// system (glibc keeps freed large blocks otherwise).
    public func releaseLoaderMemory() {
        ProcessHeap.trim()
    }

    /// Resident memory of this process, with the guest's RAM (the regions
    /// of this machine) apart from Kestrel's own, from /proc/self/smaps.
    public func memoryFootprint() -> MemoryFootprint? {
        ProcessMemory.footprint(guestStarts: Set(memory.regions.map { UInt($0.mapping.address) }))
    }

    /// Makes `run` start paused: the vCPUs park before their first
    /// instruction and the devices before their first event, until `resume`
    /// (a snapshot loaded with resume_vm false). Call before `run`.
    public func pauseBeforeRun() {
        pausedAtStart.withLock { $0 = true }
        vcpuThreads.forEach { $0.requestPause() }
    }

    /// Runs every vCPU on its own thread until the machine stops; returns why.
    /// With `seccomp`, the device thread and each vCPU thread install their
    /// allow-lists before any work, and this (the main) thread its own once
    /// they exist.
    /// - `ready` is called on this thread once every vCPU thread has started;
    ///   the threads wait before their first KVM_RUN until it returns. It is
    ///   the place to answer the API: an answer written while a vCPU already
    ///   runs can wait behind it for a core, for up to a scheduler tick.
    /// - `running` is called next, with the vCPUs let go (and before this
    ///   thread's own allow-list): the place for work that must not delay the
    ///   guest, such as releasing start-up memory.
    public func run(seccomp: SeccompPolicy? = nil, ready: () -> Void = {}, running: () -> Void = {}) -> RunOutcome {
        started.withLock { $0 = .now }
        control.attach(vcpuThreads)
        // Last of all, once no vCPU or device touches RAM.
        defer { lazyRAM?.stop() }
        lazyRAM?.onFailure { [self] detail in finish(.vcpuFailure(vcpu: 0, detail: detail)) }
        if let seccomp { lazyRAM?.confine(seccomp) }
        do {
            try devices.start(setUp: { seccomp?.enter(.virtio) })
        } catch {
            return .vcpuFailure(vcpu: 0, detail: "cannot start the device thread: \(error)")
        }
        pausedAtStart.withLock { paused in if paused { devices.loop.pause() } }
        defer { devices.stop() }
        var threads: [POSIXThread] = []
        for (index, vcpuThread) in vcpuThreads.enumerated() {
            do {
                threads.append(try vcpuThread.spawn { [self] thread in
                    // Firecracker's name for a vCPU thread, by which Kata
                    // Containers finds the threads to place in its cgroups.
                    let name = "fc_vcpu \(index)"
                    if let seccomp { seccomp.enter(.vcpu, threadName: name) } else { POSIXThread.setKernelName(name) }
                    firstRunGate.wait(until: { firstRunAllowed.withLock { $0 } }) {}
                    runLoop(thread, index: index)
                })
            } catch {
                finish(.vcpuFailure(vcpu: index, detail: "\(error)"))
                break
            }
        }
        ready()
        firstRunGate.withLockBroadcasting { firstRunAllowed.withLock { $0 = true } }
        releaseLoaderMemory()
        running()
        seccomp?.enter(.vmm)
        for thread in threads { thread.join() }
        let ending = control.outcome ?? .vcpuFailure(vcpu: 0, detail: "every vCPU stopped without a reason")
        switch ending {
        case .guestExit, .poweredOff: return ending
        default: return panicWatcher.panicMessage.map { .guestPanic(message: $0, then: ending) } ?? ending
        }
    }

    /// Lets go of a machine that will never `run` (its start failed after it
    /// was built): a restore pager's threads end with it.
    public func discard() { lazyRAM?.stop() }

    /// Ends the run with `reason` (the first reason wins) and stops every vCPU.
    public func finish(_ reason: RunOutcome) {
        control.finish(reason)
    }

    /// Pauses every vCPU, returning once all are out of KVM_RUN, then
    /// quiesces the devices: their event loop parks between handlers, so no
    /// queue moves and no backend writes guest memory until `resume`.
    public func pause() {
        vcpuThreads.forEach { $0.requestPause() }
        vcpuThreads.forEach { $0.waitUntilPaused() }
        devices.loop.pause()
    }

    /// As `pause`, calling `serve` while it waits for the vCPUs and the
    /// devices to stop: for a caller that must answer what they may be
    /// waiting on meanwhile (userfaultfd faults on write-protected RAM).
    public func pause(serving serve: () throws -> Void) throws {
        vcpuThreads.forEach { $0.requestPause() }
        devices.loop.requestPause()
        while !vcpuThreads.allSatisfy(\.pauseSettled) || !devices.loop.pauseSettled {
            try serve()
            usleep(20)
        }
        try serve()
    }

    /// Lets the devices and then the vCPUs run again.
    public func resume() {
        pausedAtStart.withLock { paused in
            paused = false
            devices.loop.resume()
        }
        vcpuThreads.forEach { $0.resume() }
    }

    /// Whether every vCPU is parked by a pause and the devices are quiesced.
    public var isPaused: Bool { vcpuThreads.allSatisfy(\.isPaused) && devices.loop.isPaused }

    /// KVM_EXIT_DIRTY_RING_FULL exits in a row with nothing harvested that
    /// end the run: far more than a race with another harvesting thread
    /// gives, far fewer than a spin of more than a moment.
    static let emptyRingExitLimit = 10_000

    private func runLoop(_ thread: VCPUThread, index: Int) {
        // One certificate service and responder per vCPU, used on its thread only.
        let responder = certificates.map { certificates in
            SNPCertificateResponder(service: SNPCertificateService(
                configuration: .init(certificateFile: certificates.file, mmioRanges: devices.mmioRanges.map(\.range)),
                guestMemory: memory, log: certificates.log))
        }
        defer { responder?.releaseHeldLease() }
        // KVM_EXIT_DIRTY_RING_FULL exits in a row that found nothing to harvest.
        var emptyRingExits = 0
        while true {
            let exit: VCPUExit
            do {
                switch try thread.run() {
                case .exit(let decoded): exit = decoded
                case .stopped, .deadlineExpired: return
                }
            } catch {
                finish(.vcpuFailure(vcpu: index, detail: "\(error)"))
                return
            }
            if case .dirtyRingFull = exit {
                // KVM stops a vCPU whose ring is (nearly) full until the rings are harvested and reset.
                let harvested: Int
                do { harvested = try dirtyPages.harvestRings() } catch {
                    finish(.vcpuFailure(vcpu: index, detail: "harvesting the dirty rings: \(error)"))
                    return
                }
                // Another thread may have harvested just before; but a ring
                // that stays full with nothing in it never empties again.
                emptyRingExits = harvested > 0 ? 0 : emptyRingExits + 1
                if emptyRingExits >= Self.emptyRingExitLimit {
                    finish(.vcpuFailure(vcpu: index, detail: "KVM_EXIT_DIRTY_RING_FULL \(emptyRingExits) times in a row with no entry in the ring "
                        + "to harvest: the host's KVM lost track of this vCPU's dirty ring (a ring overfilled past its soft limit shows as a "
                        + "kvm_dirty_ring_push warning in the host's kernel log); use dirty_log Bitmap on this host"))
                    return
                }
                continue
            }
            if let responder, case .answered = responder.handle(exit, on: thread.vcpu) {
                // The file stays locked until the firmware has used the blob.
                if responder.heldLease != nil { thread.completeExit { responder.releaseHeldLease() } }
                continue
            }
            switch exitHandler.handle(exit, vcpu: index, rip: { try? thread.vcpu.registers().rip }) {
            case .resume: continue
            case .finish(let outcome): finish(outcome)
            }
        }
    }
}
