import GuestMemory
import KVM
import X86

/// A one-vCPU VM for tests: memory at GPA 0, a vCPU, and helpers to load a
/// real-mode blob or a long-mode `GuestProgram` and run it to its next ucall
/// under a watchdog.
public final class GuestMachine {
    public let kvm: KVMSystem
    public let vm: VirtualMachine
    public let vcpu: VCPU
    public let memory: GuestAddressSpace
    public let memorySize: UInt64
    /// Runs the vCPU on the calling thread under a deadline.
    public let vcpuThread: VCPUThread
    private var nextPageDirectory: UInt64
    public private(set) var guest: AssembledGuest?

    /// Creates the VM (of `type`), `memorySize` bytes of RAM from `ramBacking`
    /// in slot 0 at GPA 0, and vCPU 0 with the host's supported CPUID (or
    /// `cpuid`). `beforeVCPU` gets the VM before the vCPU exists, for what KVM
    /// takes only then (KVM_CAP_DIRTY_LOG_RING, for one).
    public init(kvm: KVMSystem, type: VMType = .default, memorySize: UInt64 = 4 << 20, cpuid: CPUIDTable? = nil,
                ramBacking: RAMBacking = .anonymous(.private), beforeVCPU: (VirtualMachine) throws -> Void = { _ in }) throws {
        self.kvm = kvm
        self.memorySize = memorySize
        vm = try kvm.createVirtualMachine(type: type)
        memory = GuestAddressSpace()
        try vm.addMemory(slot: 0, at: 0, size: Int(memorySize), backing: ramBacking, to: memory)
        try beforeVCPU(vm)
        vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(cpuid ?? kvm.supportedCPUID())
        vcpuThread = try VCPUThread(vcpu)
        nextPageDirectory = LongModeLayout(memorySize: memorySize).extraPageDirectoryArea.lowerBound
    }

    // MARK: Loading

    /// Loads 16-bit code at `address` and points CS:IP at it (CS base 0).
    public func loadRealMode(code: [UInt8], at address: UInt64 = 0x1000) throws {
        try memory.write(code, at: GuestAddress(address))
        var special = try vcpu.specialRegisters()
        special.cs.base = 0
        special.cs.selector = 0
        try vcpu.setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = address
        registers.rflags = 0x2
        try vcpu.setRegisters(registers)
    }

    /// Builds the program, writes page tables, GDT, IDT and code, and sets the
    /// vCPU to 64-bit mode at the program's entry with `arguments` in RDI, RSI,
    /// RDX, RCX (System V order).
    @discardableResult
    public func loadLongMode(_ program: GuestProgram, arguments: [UInt64] = []) throws -> AssembledGuest {
        let layout = program.layout
        guard layout.memorySize == memorySize else {
            throw KVMUsageError("the program's layout is for \(layout.memorySize) bytes of memory; this machine has \(memorySize)")
        }
        let built = try program.build()
        guard layout.codeAddress + UInt64(built.code.count) <= layout.scratchAddress else {
            throw KVMUsageError("guest code is \(built.code.count) bytes; it must end below 0x\(String(layout.scratchAddress, radix: 16))")
        }
        try writePageTables(layout)
        for (position, entry) in DescriptorTables.gdtEntries.enumerated() {
            try memory.store(entry, at: GuestAddress(layout.gdtAddress + UInt64(8 * position)))
        }
        for (vector, stub) in built.stubAddresses.enumerated() {
            try memory.write(DescriptorTables.interruptGate(handler: stub, selector: layout.codeSelector),
                             at: GuestAddress(layout.idtAddress + UInt64(16 * vector)))
        }
        try memory.write(built.code, at: GuestAddress(layout.codeAddress))
        try memory.store(UInt64(0), at: GuestAddress(layout.exceptionFixupAddress))

        var special = try vcpu.specialRegisters()
        special.cr3 = layout.pml4Address
        special.cr4 = ControlBits.cr4PhysicalAddressExtension | ControlBits.cr4OSFXSR | ControlBits.cr4OSXMMEXCPT
        special.cr0 = ControlBits.cr0ProtectionEnable | ControlBits.cr0MonitorCoprocessor | ControlBits.cr0ExtensionType
            | ControlBits.cr0NumericError | ControlBits.cr0WriteProtect | ControlBits.cr0Paging
        special.efer = ControlBits.eferLongModeEnable | ControlBits.eferLongModeActive
        special.cs = Self.segment(selector: layout.codeSelector, type: 0xB, longMode: true)
        let data = Self.segment(selector: layout.dataSelector, type: 0x3, longMode: false)
        special.ds = data
        special.es = data
        special.fs = data
        special.gs = data
        special.ss = data
        special.tr = Segment(base: 0, limit: 0x67, selector: 0x18, type: 0xB, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0)
        special.ldt = Segment(base: 0, limit: 0, selector: 0, type: 0x2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1)
        special.gdt.base = layout.gdtAddress
        special.gdt.limit = UInt16(8 * DescriptorTables.gdtEntries.count - 1)
        special.idt.base = layout.idtAddress
        special.idt.limit = 16 * 256 - 1
        try vcpu.setSpecialRegisters(special)

        var registers = Registers()
        registers.rip = built.entry
        registers.rsp = layout.stackTop
        registers.rflags = 0x2
        let argumentRegisters: [WritableKeyPath<Registers, UInt64>] = [\.rdi, \.rsi, \.rdx, \.rcx]
        for (position, value) in arguments.prefix(argumentRegisters.count).enumerated() {
            registers[keyPath: argumentRegisters[position]] = value
        }
        try vcpu.setRegisters(registers)
        guest = built
        return built
    }

    /// Identity-maps the 1 GiB range that holds `address` (2 MiB pages), for
    /// memory slots outside the first GiB. Call before `loadLongMode` or after.
    public func mapGigabyte(containing address: UInt64) throws {
        let layout = LongModeLayout(memorySize: memorySize)
        let index = address >> 30
        guard index < 512 else { throw KVMUsageError("0x\(String(address, radix: 16)) is beyond the 512 GiB the PML4's first entry covers") }
        if index == 0 { return }
        guard nextPageDirectory <= layout.extraPageDirectoryArea.upperBound else {
            throw KVMUsageError("no room for another page directory in the test layout")
        }
        let directory = nextPageDirectory
        nextPageDirectory += 0x1000
        for (position, entry) in PageTables.identityPageDirectory(base: index << 30).enumerated() {
            try memory.store(entry, at: GuestAddress(directory + UInt64(8 * position)))
        }
        try memory.store(directory | PageTables.present | PageTables.writable, at: GuestAddress(layout.pdptAddress + 8 * index))
    }

    private func writePageTables(_ layout: LongModeLayout) throws {
        try memory.store(layout.pdptAddress | PageTables.present | PageTables.writable, at: GuestAddress(layout.pml4Address))
        try memory.store(layout.firstPageDirectoryAddress | PageTables.present | PageTables.writable, at: GuestAddress(layout.pdptAddress))
        for (position, entry) in PageTables.identityPageDirectory(base: 0).enumerated() {
            try memory.store(entry, at: GuestAddress(layout.firstPageDirectoryAddress + UInt64(8 * position)))
        }
    }

    private static func segment(selector: UInt16, type: UInt8, longMode: Bool) -> Segment {
        Segment(base: 0, limit: 0xFFFF_FFFF, selector: selector, type: type, present: 1, dpl: 0,
                db: longMode ? 0 : 1, s: 1, l: longMode ? 1 : 0, g: 1, avl: 0, unusable: 0)
    }

    // MARK: Running

    /// Default time a guest may run before the watchdog stops it.
    public static let defaultTimeout: Double = 10

    /// Runs until KVM returns an exit, on the calling thread, for at most
    /// `timeout` seconds. Throws `HarnessError.timeout` when the deadline passed.
    ///
    /// With `stall`, the run is cut into slices of a quarter of its `seconds`,
    /// and RIP is read after each. When the vCPU is at `stall.address` at every
    /// check for `stall.seconds`, the run throws `HarnessError.stalled` without
    /// waiting out `timeout`. Use it for straight-line guest code that passes
    /// the address once, so that finding RIP there again means the instruction
    /// never completed.
    public func runUntilExit(timeout: Double = GuestMachine.defaultTimeout, stall: StallWatch? = nil) throws -> VCPUExit {
        defer { vcpuThread.leaveThread() }
        let deadline = ContinuousClock.now + Self.duration(timeout)
        let slice = stall.map { Self.duration($0.seconds / 4) }
        var stalledSince: ContinuousClock.Instant?
        while true {
            let now = ContinuousClock.now
            switch try vcpuThread.run(until: slice.map { min(now + $0, deadline) } ?? deadline) {
            case .exit(let exit):
                return exit
            case .deadlineExpired where stall != nil && ContinuousClock.now < deadline:
                guard let rip = try? vcpu.registers().rip, rip == stall!.address else {
                    stalledSince = nil
                    continue
                }
                let since = stalledSince ?? ContinuousClock.now
                stalledSince = since
                let seconds = Self.seconds(ContinuousClock.now - since)
                if seconds >= stall!.seconds { throw HarnessError.stalled(rip: rip, seconds: seconds) }
            case .deadlineExpired, .stopped:
                throw HarnessError.timeout(seconds: timeout, rip: try? vcpu.registers().rip)
            }
        }
    }

    /// An instruction a run watches for a vCPU that never gets past it (see
    /// `runUntilExit(timeout:stall:)`).
    public struct StallWatch: Sendable {
        public var address: UInt64
        public var seconds: Double
        public init(address: UInt64, seconds: Double) {
            self.address = address
            self.seconds = seconds
        }
    }

    private static func duration(_ seconds: Double) -> Duration { .nanoseconds(Int64(max(seconds, 0) * 1e9)) }
    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }

    /// Runs until the guest makes a ucall. Any other exit is a `HarnessError`
    /// carrying the decoded exit and RIP.
    public func runUntilUcall(timeout: Double = GuestMachine.defaultTimeout, stall: StallWatch? = nil) throws -> Ucall {
        let exit = try runUntilExit(timeout: timeout, stall: stall)
        if case .io(let io) = exit, io.port == ucallPort, io.direction == .out, io.size == 4 {
            return try UcallRecord.decode(at: UInt64(io.value), in: memory)
        }
        throw unexpected(exit)
    }

    /// Runs until the guest makes a ucall, passing every other exit to
    /// `serve`, which answers it and returns true to resume the guest, or
    /// returns false to make it a `HarnessError`. `timeout` bounds each run.
    public func runUntilUcall(timeout: Double = GuestMachine.defaultTimeout, serving serve: (VCPUExit) throws -> Bool) throws -> Ucall {
        while true {
            let exit = try runUntilExit(timeout: timeout)
            if case .io(let io) = exit, io.port == ucallPort, io.direction == .out, io.size == 4 {
                return try UcallRecord.decode(at: UInt64(io.value), in: memory)
            }
            guard try serve(exit) else { throw unexpected(exit) }
        }
    }

    /// A `HarnessError` for an exit the test did not expect, with the RIP.
    public func unexpected(_ exit: VCPUExit) -> HarnessError {
        var bytes: [UInt8]? = nil
        if case .internalError(let error) = exit { bytes = error.instructionBytes }
        return .unexpectedExit(exit: exit.description, reason: exit.reason, rip: try? vcpu.registers().rip, instructionBytes: bytes)
    }

    /// Runs to the next ucall and requires SYNC of `stage`; returns its values.
    /// A guest assertion or any other ucall throws.
    @discardableResult
    public func expectSync(stage: UInt64, timeout: Double = GuestMachine.defaultTimeout, stall: StallWatch? = nil) throws -> [UInt64] {
        let ucall = try runUntilUcall(timeout: timeout, stall: stall)
        if case .sync(stage, let values) = ucall { return values }
        throw Self.mismatch(ucall, expected: "SYNC(stage \(stage))")
    }

    /// Runs to the next SYNC of `stage`, collecting the exception report the
    /// guest's handler may make first (an instruction run under
    /// `expectingException`). Any other ucall throws.
    public func runToSync(stage: UInt64, timeout: Double = GuestMachine.defaultTimeout) throws -> (exception: GuestException?, values: [UInt64]) {
        var ucall = try runUntilUcall(timeout: timeout)
        var exception: GuestException? = nil
        if case .exception(let reported) = ucall {
            exception = reported
            ucall = try runUntilUcall(timeout: timeout)
        }
        guard case .sync(stage, let values) = ucall else { throw Self.mismatch(ucall, expected: "SYNC(stage \(stage))") }
        return (exception, values)
    }

    /// Runs to the next ucall and requires DONE.
    public func expectDone(timeout: Double = GuestMachine.defaultTimeout) throws {
        let ucall = try runUntilUcall(timeout: timeout)
        if case .done = ucall { return }
        throw Self.mismatch(ucall, expected: "DONE")
    }

    /// Runs to the next ucall and requires an exception report.
    public func expectException(timeout: Double = GuestMachine.defaultTimeout) throws -> GuestException {
        let ucall = try runUntilUcall(timeout: timeout)
        if case .exception(let exception) = ucall { return exception }
        throw Self.mismatch(ucall, expected: "an exception")
    }

    /// Runs to the next ucall, skipping PRINTs (passed to `log`).
    public func nextUcall(timeout: Double = GuestMachine.defaultTimeout, log: (String) -> Void = { _ in }) throws -> Ucall {
        while true {
            let ucall = try runUntilUcall(timeout: timeout)
            if case .print(let message, let values) = ucall {
                log(message + Ucall.format(values))
                continue
            }
            return ucall
        }
    }

    /// The error for a ucall other than the one expected (a guest assertion
    /// becomes `.guestAssertion`).
    public static func mismatch(_ ucall: Ucall, expected: String) -> HarnessError {
        if case .assertFailed(let message, let values) = ucall { return .guestAssertion(message: message, values: values) }
        return .unexpectedUcall(got: ucall, expected: expected)
    }
}
