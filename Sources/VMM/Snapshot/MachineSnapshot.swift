import GuestMemory
import KVM
import Virtio
import X86

/// Everything a snapshot holds apart from guest RAM: the machine's
/// configuration, where RAM lies in the memory file, every vCPU's state, the
/// in-kernel irqchip, PIT and kvmclock, the UART, the i8042 and each virtio
/// transport.
///
/// The state file (`encoded()`, `decode(_:)`):
///
///     "KSTLSNAP"  magic, 8 bytes
///     u32         format version (`formatVersion`)
///     u32         section count
///     sections    4-byte tag, u32 length, payload; in the order written
///     u32         CRC-32 of every byte before it
///
/// Integers are little-endian. Tags: INFO (Kestrel's version, the
/// configuration as a Firecracker document, the RAM layout), VCPU (one per
/// vCPU: CPUID, then KVM's structs as the kernel lays them out), IRQC (one
/// per chip), PIT2, CLCK, UART, KBDC (the i8042), VIRT (one per
/// transport, in placement order) and MEMO (`SnapshotLineage`: u8 kind, 16
/// bytes of id, a flag and 16 bytes of parent id, u64 data bytes, u32 digest). A reader refuses another magic, another version, a bad CRC, a
/// truncated section, an unknown tag and bytes past a section's end.
public struct MachineSnapshot: Equatable, Sendable {
    public static let magic: [UInt8] = Array("KSTLSNAP".utf8)
    /// Bumped whenever the encoding changes; a file of another version is
    /// refused, never guessed at.
    /// Version 2 added the KBDC section, version 3 the MEMO section.
    public static let formatVersion: UInt32 = 3

    /// One range of guest RAM in the memory file.
    public struct MemoryRange: Equatable, Sendable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var fileOffset: UInt64

        public init(guestAddress: UInt64, size: UInt64, fileOffset: UInt64) {
            self.guestAddress = guestAddress
            self.size = size
            self.fileOffset = fileOffset
        }
    }

    /// One vCPU: its CPUID table and architectural state.
    public struct VCPUState: Equatable, Sendable {
        public var cpuid: [CPUIDEntry]
        public var state: VCPUSnapshot

        public init(cpuid: [CPUIDEntry], state: VCPUSnapshot) {
            self.cpuid = cpuid
            self.state = state
        }

        public static func == (left: Self, right: Self) -> Bool {
            left.cpuid == right.cpuid && MachineSnapshot.encode(left.state) == MachineSnapshot.encode(right.state)
        }
    }

    public var kestrelVersion: String
    /// The machine's configuration as a Firecracker document
    /// (`MachineConfigFile.document(for:)`), rendered.
    public var configuration: String
    public var memory: [MemoryRange]
    public var vcpus: [VCPUState]
    public var interruptControllers: [InterruptControllerState]
    public var pit: PITState
    public var clock: ClockState
    public var serial: Serial16550.SavedState
    public var keyboard: I8042Controller.SavedState
    public var devices: [MMIOTransport.SavedState]
    /// Which snapshot this one is, and which one its memory continues.
    public var lineage: SnapshotLineage

    public init(kestrelVersion: String, configuration: String, memory: [MemoryRange], vcpus: [VCPUState],
                interruptControllers: [InterruptControllerState], pit: PITState, clock: ClockState,
                serial: Serial16550.SavedState, keyboard: I8042Controller.SavedState = .init(), devices: [MMIOTransport.SavedState],
                lineage: SnapshotLineage = .unrecorded) {
        self.lineage = lineage
        self.kestrelVersion = kestrelVersion
        self.configuration = configuration
        self.memory = memory
        self.vcpus = vcpus
        self.interruptControllers = interruptControllers
        self.pit = pit
        self.clock = clock
        self.serial = serial
        self.keyboard = keyboard
        self.devices = devices
    }

    /// The size the memory file must have: the end of its last range.
    public var memoryFileSize: UInt64 { memory.map { $0.fileOffset + $0.size }.max() ?? 0 }

    // MARK: Encoding

    public func encoded() -> [UInt8] {
        var sections: [(tag: String, payload: [UInt8])] = []
        var info = SnapshotWriter()
        info.string(kestrelVersion)
        info.string(configuration)
        info.u32(UInt32(memory.count))
        for range in memory {
            info.u64(range.guestAddress)
            info.u64(range.size)
            info.u64(range.fileOffset)
        }
        sections.append(("INFO", info.bytes))
        for vcpu in vcpus {
            var writer = SnapshotWriter()
            writer.u32(UInt32(vcpu.cpuid.count))
            for entry in vcpu.cpuid {
                for word in [entry.function, entry.index, entry.flags, entry.eax, entry.ebx, entry.ecx, entry.edx] { writer.u32(word) }
            }
            writer.raw(Self.encode(vcpu.state))
            sections.append(("VCPU", writer.bytes))
        }
        for chip in interruptControllers { sections.append(("IRQC", chip.stateBytes)) }
        sections.append(("PIT2", pit.stateBytes))
        sections.append(("CLCK", clock.stateBytes))
        var uart = SnapshotWriter()
        for byte in [serial.interruptEnable, serial.lineControl, serial.modemControl, serial.scratch, serial.divisorLow, serial.divisorHigh] {
            uart.u8(byte)
        }
        uart.bool(serial.fifoEnabled)
        uart.bool(serial.transmitInterruptPending)
        uart.blob(serial.unreadInput)
        sections.append(("UART", uart.bytes))
        var kbdc = SnapshotWriter()
        kbdc.u8(keyboard.controlByte)
        kbdc.blob(keyboard.outputQueue)
        kbdc.bool(keyboard.scanning)
        for pending in [keyboard.pendingControllerCommand, keyboard.pendingKeyboardCommand] {
            kbdc.bool(pending != nil)
            kbdc.u8(pending ?? 0)
        }
        sections.append(("KBDC", kbdc.bytes))
        for device in devices {
            var writer = SnapshotWriter()
            writer.u32(device.deviceType)
            writer.u32(device.deviceFeaturesSelect)
            writer.u32(device.driverFeaturesSelect)
            writer.u64(device.driverFeatures)
            writer.u32(device.queueSelect)
            writer.u32(device.status)
            writer.bool(device.active)
            writer.u32(device.interruptStatus)
            writer.u32(UInt32(device.queues.count))
            for queue in device.queues {
                writer.u16(queue.configuration.size)
                writer.u64(queue.configuration.descriptorTable.rawValue)
                writer.u64(queue.configuration.availableRing.rawValue)
                writer.u64(queue.configuration.usedRing.rawValue)
                writer.bool(queue.ready)
                writer.u16(queue.nextAvailable)
                writer.u16(queue.nextUsed)
                writer.u16(queue.notifiedUsed)
            }
            sections.append(("VIRT", writer.bytes))
        }
        var memo = SnapshotWriter()
        memo.u8(lineage.kind.rawValue)
        memo.raw(Array((lineage.id + [UInt8](repeating: 0, count: 16)).prefix(16)))
        memo.bool(lineage.parent != nil)
        memo.raw(Array(((lineage.parent ?? []) + [UInt8](repeating: 0, count: 16)).prefix(16)))
        memo.u64(lineage.dataBytes)
        memo.u32(lineage.dataDigest)
        sections.append(("MEMO", memo.bytes))

        var file = SnapshotWriter()
        file.raw(Self.magic)
        file.u32(Self.formatVersion)
        file.u32(UInt32(sections.count))
        for section in sections {
            file.raw(Array(section.tag.utf8))
            file.blob(section.payload)
        }
        file.u32(CRC32.checksum(file.bytes[...]))
        return file.bytes
    }

    /// A vCPU's state: KVM's structs whole, then the MSR list.
    static func encode(_ state: VCPUSnapshot) -> [UInt8] {
        var writer = SnapshotWriter()
        writer.blob(state.registers.stateBytes)
        writer.blob(state.specialRegisters.stateBytes)
        writer.blob(state.fpu.stateBytes)
        writer.optional(state.xsave) { $0.blob($1.bytes) }
        writer.optional(state.extendedControlRegisters) { $0.blob($1.stateBytes) }
        writer.blob(state.events.stateBytes)
        writer.u32(state.mpState.rawValue)
        writer.u32(UInt32(state.msrs.count))
        for entry in state.msrs {
            writer.u32(entry.index)
            writer.u64(entry.value)
        }
        writer.optional(state.guestSSP) { $0.u64($1) }
        writer.optional(state.localAPIC) { $0.blob($1) }
        writer.optional(state.debugRegisters) { $0.blob($1.stateBytes) }
        return writer.bytes
    }

    // MARK: Decoding

    /// Reads a state file, refusing anything that is not a whole, unchanged
    /// file of this format version.
    public static func decode(_ bytes: [UInt8]) throws(SnapshotError) -> MachineSnapshot {
        guard bytes.count >= magic.count, Array(bytes.prefix(magic.count)) == magic else {
            throw SnapshotError("not a Kestrel snapshot state file (no \"KSTLSNAP\" at its start)")
        }
        var header = SnapshotReader(bytes, from: magic.count, context: "the header")
        let version = try header.u32("the format version")
        guard version == formatVersion else {
            throw SnapshotError("the snapshot has format version \(version); this Kestrel reads version \(formatVersion) only")
        }
        guard bytes.count >= magic.count + 12 else { throw header.truncated("the header") }
        let stored = UInt32(bytes[bytes.count - 4]) | UInt32(bytes[bytes.count - 3]) << 8
            | UInt32(bytes[bytes.count - 2]) << 16 | UInt32(bytes[bytes.count - 1]) << 24
        let computed = CRC32.checksum(bytes[..<(bytes.count - 4)])
        guard stored == computed else {
            throw SnapshotError("the snapshot is corrupt or truncated: its CRC-32 is 0x\(String(stored, radix: 16)), the bytes give 0x\(String(computed, radix: 16))")
        }
        var file = SnapshotReader(bytes, from: magic.count + 4, to: bytes.count - 4, context: "the section list")
        let count = try file.count("sections", minimumSize: 8)
        var info: SnapshotReader?
        var vcpuSections: [SnapshotReader] = [], chips: [InterruptControllerState] = [], devices: [MMIOTransport.SavedState] = []
        var pit: PITState?, clock: ClockState?, serial: Serial16550.SavedState?, keyboard: I8042Controller.SavedState?
        var lineage: SnapshotLineage?
        for index in 0..<count {
            let tag = String(decoding: try file.take(4, "the tag of section \(index)"), as: UTF8.self)
            let length = Int(try file.u32("the length of section \(index) (\(tag))"))
            let start = file.offset
            _ = try file.take(length, "section \(index) (\(tag))")
            var reader = SnapshotReader(bytes, from: start, to: start + length, context: "section \(tag)")
            func once<T>(_ value: T?) throws(SnapshotError) { if value != nil { throw SnapshotError("the snapshot is corrupt: two \(tag) sections") } }
            switch tag {
            case "INFO": try once(info); info = reader
            case "VCPU": vcpuSections.append(reader)
            case "IRQC": chips.append(try state(InterruptControllerState.self, &reader))
            case "PIT2": try once(pit); pit = try state(PITState.self, &reader)
            case "CLCK": try once(clock); clock = try state(ClockState.self, &reader)
            case "UART": try once(serial); serial = try decodeSerial(&reader)
            case "KBDC": try once(keyboard); keyboard = try decodeKeyboard(&reader)
            case "VIRT": devices.append(try decodeTransport(&reader))
            case "MEMO": try once(lineage); lineage = try decodeLineage(&reader)
            default: throw SnapshotError("the snapshot is corrupt: unknown section \"\(tag)\"")
            }
        }
        try file.requireEnd()
        guard var info else { throw SnapshotError("the snapshot is corrupt: it has no INFO section") }
        guard let pit, let clock, let serial, let keyboard, let lineage else {
            throw SnapshotError("the snapshot is corrupt: it lacks a PIT2, CLCK, UART, KBDC or MEMO section")
        }
        guard !vcpuSections.isEmpty else { throw SnapshotError("the snapshot is corrupt: it has no vCPU") }
        guard Set(chips.compactMap(\.chip)) == Set(InterruptControllerState.Chip.allCases), chips.count == 3 else {
            throw SnapshotError("the snapshot is corrupt: it needs one IRQC section for each PIC and the IOAPIC")
        }
        let kestrel = try info.string("Kestrel's version")
        let configuration = try info.string("the configuration")
        var memory: [MemoryRange] = []
        for index in 0..<(try info.count("RAM ranges", minimumSize: 24)) {
            let range = MemoryRange(guestAddress: try info.u64("range \(index)"), size: try info.u64("range \(index)"), fileOffset: try info.u64("range \(index)"))
            guard range.size > 0, range.size % 4096 == 0, range.fileOffset % 4096 == 0, range.guestAddress % 4096 == 0,
                  range.guestAddress.addingReportingOverflow(range.size).overflow == false,
                  range.fileOffset.addingReportingOverflow(range.size).overflow == false else {
                throw SnapshotError("the snapshot is corrupt: RAM range \(index) is not page-aligned or wraps")
            }
            memory.append(range)
        }
        try info.requireEnd()
        guard !memory.isEmpty else { throw SnapshotError("the snapshot is corrupt: it has no RAM range") }
        var vcpus: [VCPUState] = []
        for var reader in vcpuSections { vcpus.append(try decodeVCPU(&reader)) }
        return MachineSnapshot(kestrelVersion: kestrel, configuration: configuration, memory: memory, vcpus: vcpus,
                               interruptControllers: chips, pit: pit, clock: clock, serial: serial, keyboard: keyboard,
                               devices: devices, lineage: lineage)
    }

    private static func decodeLineage(_ reader: inout SnapshotReader) throws(SnapshotError) -> SnapshotLineage {
        let rawKind = try reader.u8("the kind")
        guard let kind = SnapshotLineage.Kind(rawValue: rawKind) else { throw SnapshotError("the snapshot is corrupt: \(reader.context): kind \(rawKind)") }
        let id = Array(try reader.take(16, "the id"))
        let hasParent = try reader.bool("the parent flag")
        let parent = Array(try reader.take(16, "the parent id"))
        let lineage = SnapshotLineage(kind: kind, id: id, parent: hasParent ? parent : nil,
                                      dataBytes: try reader.u64("the data bytes"), dataDigest: try reader.u32("the digest"))
        try reader.requireEnd()
        return lineage
    }

    /// A KVM struct that is a whole section.
    private static func state<T: StateBytes>(_ type: T.Type, _ reader: inout SnapshotReader) throws(SnapshotError) -> T {
        try make(T.self, from: Array(try reader.take(reader.remaining, reader.context)), reader)
    }

    /// A KVM struct that is one length-prefixed field of a section.
    private static func field<T: StateBytes>(_ type: T.Type, _ what: String, _ reader: inout SnapshotReader) throws(SnapshotError) -> T {
        try make(T.self, from: try reader.blob(what), reader)
    }

    private static func make<T: StateBytes>(_ type: T.Type, from bytes: [UInt8], _ reader: SnapshotReader) throws(SnapshotError) -> T {
        do { return try T(stateBytes: bytes) } catch {
            throw SnapshotError("the snapshot is corrupt: \(reader.context): \(error)")
        }
    }

    private static func decodeVCPU(_ reader: inout SnapshotReader) throws(SnapshotError) -> VCPUState {
        var cpuid: [CPUIDEntry] = []
        for index in 0..<(try reader.count("CPUID entries", minimumSize: 28)) {
            var words: [UInt32] = []
            for _ in 0..<7 { words.append(try reader.u32("CPUID entry \(index)")) }
            cpuid.append(CPUIDEntry(function: words[0], index: words[1], flags: words[2], eax: words[3], ebx: words[4], ecx: words[5], edx: words[6]))
        }
        let registers = try field(Registers.self, "struct kvm_regs", &reader)
        let special = try field(SpecialRegisters.self, "struct kvm_sregs", &reader)
        let fpu = try field(FPUState.self, "struct kvm_fpu", &reader)
        let xsave = try reader.optional("an XSAVE area") { (reader: inout SnapshotReader) throws(SnapshotError) -> XSAVEState in
            let bytes = try reader.blob("the XSAVE area")
            do { return try XSAVEState(bytes: bytes) } catch { throw SnapshotError("the snapshot is corrupt: \(reader.context): \(error)") }
        }
        let xcrs = try reader.optional("struct kvm_xcrs") { (reader: inout SnapshotReader) throws(SnapshotError) in
            try field(ExtendedControlRegisters.self, "struct kvm_xcrs", &reader)
        }
        let events = try field(VCPUEvents.self, "struct kvm_vcpu_events", &reader)
        let mpState = MPState(rawValue: try reader.u32("the MP state"))
        var msrs: [MSREntry] = []
        for index in 0..<(try reader.count("MSRs", minimumSize: 12)) {
            msrs.append(MSREntry(index: try reader.u32("MSR \(index)"), value: try reader.u64("MSR \(index)")))
        }
        let ssp = try reader.optional("GUEST_SSP") { (reader: inout SnapshotReader) throws(SnapshotError) in try reader.u64("GUEST_SSP") }
        let lapic = try reader.optional("a LAPIC page") { (reader: inout SnapshotReader) throws(SnapshotError) -> [UInt8] in
            let page = try reader.blob("the LAPIC page")
            guard page.count == 1024 else { throw SnapshotError("the snapshot is corrupt: \(reader.context): a LAPIC page of \(page.count) bytes, not 1024") }
            return page
        }
        let debug = try reader.optional("struct kvm_debugregs") { (reader: inout SnapshotReader) throws(SnapshotError) in
            try field(DebugRegisters.self, "struct kvm_debugregs", &reader)
        }
        try reader.requireEnd()
        let state = VCPUSnapshot(
            registers: registers, specialRegisters: special, fpu: fpu, extendedControlRegisters: xcrs, events: events, mpState: mpState,
            msrs: msrs, guestSSP: ssp, features: CPUFeatureSet(table: CPUIDTable(entries: cpuid)), xsave: xsave, localAPIC: lapic,
            debugRegisters: debug)
        return VCPUState(cpuid: cpuid, state: state)
    }

    private static func decodeSerial(_ reader: inout SnapshotReader) throws(SnapshotError) -> Serial16550.SavedState {
        var registers: [UInt8] = []
        for name in ["IER", "LCR", "MCR", "SCR", "DLL", "DLM"] { registers.append(try reader.u8(name)) }
        let state = Serial16550.SavedState(
            interruptEnable: registers[0], lineControl: registers[1], modemControl: registers[2], scratch: registers[3],
            divisorLow: registers[4], divisorHigh: registers[5], fifoEnabled: try reader.bool("the FIFO flag"),
            transmitInterruptPending: try reader.bool("the THRE flag"), unreadInput: try reader.blob("the unread input"))
        try reader.requireEnd()
        return state
    }

    private static func decodeKeyboard(_ reader: inout SnapshotReader) throws(SnapshotError) -> I8042Controller.SavedState {
        let control = try reader.u8("the control byte")
        let queue = try reader.blob("the output queue")
        guard queue.count <= I8042Controller.queueLimit else { throw SnapshotError("the snapshot is corrupt: an i8042 queue of \(queue.count) bytes") }
        let scanning = try reader.bool("the scanning flag")
        var pending: [UInt8?] = []
        for what in ["the pending controller command", "the pending keyboard command"] {
            let present = try reader.bool(what), value = try reader.u8(what)
            pending.append(present ? value : nil)
        }
        try reader.requireEnd()
        return I8042Controller.SavedState(controlByte: control, outputQueue: queue, scanning: scanning,
                                          pendingControllerCommand: pending[0], pendingKeyboardCommand: pending[1])
    }

    private static func decodeTransport(_ reader: inout SnapshotReader) throws(SnapshotError) -> MMIOTransport.SavedState {
        let deviceType = try reader.u32("the device type")
        let deviceSelect = try reader.u32("DeviceFeaturesSel"), driverSelect = try reader.u32("DriverFeaturesSel")
        let features = try reader.u64("the driver's features")
        let queueSelect = try reader.u32("QueueSel"), status = try reader.u32("the status")
        let active = try reader.bool("the active flag")
        let interrupt = try reader.u32("InterruptStatus")
        var queues: [MMIOTransport.SavedQueue] = []
        for index in 0..<(try reader.count("queues", minimumSize: 33)) {
            let what = "queue \(index)"
            let configuration = QueueConfiguration(
                size: try reader.u16(what), descriptorTable: GuestAddress(try reader.u64(what)),
                availableRing: GuestAddress(try reader.u64(what)), usedRing: GuestAddress(try reader.u64(what)))
            queues.append(MMIOTransport.SavedQueue(
                configuration: configuration, ready: try reader.bool(what), nextAvailable: try reader.u16(what),
                nextUsed: try reader.u16(what), notifiedUsed: try reader.u16(what)))
        }
        try reader.requireEnd()
        return MMIOTransport.SavedState(
            deviceType: deviceType, deviceFeaturesSelect: deviceSelect, driverFeaturesSelect: driverSelect, driverFeatures: features,
            queueSelect: queueSelect, status: status, active: active, interruptStatus: interrupt, queues: queues)
    }
}
