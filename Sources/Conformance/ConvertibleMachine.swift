import Confidential
import GuestKit
import GuestMemory
import KVM
import Synchronization

/// A harness machine whose RAM the guest may convert: a
/// KVM_X86_SW_PROTECTED_VM with 4 MiB at 4 GiB backed by a guest_memfd
/// (private) and MAP_SHARED memory (shared), KVM_CAP_EXIT_HYPERCALL on for
/// KVM_HC_MAP_GPA_RANGE, and Kestrel's `ConversionManager` over it. The
/// private_mem suite and `kestrel bench conversions` drive it.
public final class ConvertibleMachine {
    public static let ramAddress: UInt64 = 1 << 32
    public static let ramSize: UInt64 = 4 << 20
    static let slot: UInt32 = 10

    public let machine: GuestMachine
    public let shared: MemoryMapping
    public let manager: ConversionManager
    /// What the manager (and any device a test adds) logged.
    public let log = LogLines()

    /// `mmio` names device ranges the manager must refuse to convert.
    public init(kvm: KVMSystem, mmio: [(name: String, range: Range<UInt64>)] = []) throws {
        machine = try GuestMachine(kvm: kvm, type: .softwareProtected)
        try machine.vm.enableCapability(.exitHypercall, arguments: [1 << ConversionManager.mapGPARangeHypercall])
        let memfd = try machine.vm.createGuestMemfd(size: Self.ramSize)
        shared = try MemoryMapping(anonymousSize: Int(Self.ramSize), sharing: .shared)
        try machine.vm.install(MemoryRegion(slot: Self.slot, start: GuestAddress(Self.ramAddress), mapping: shared, guestMemfd: memfd))
        try machine.memory.add(shared, at: GuestAddress(Self.ramAddress))
        try machine.mapGigabyte(containing: Self.ramAddress)
        let log = self.log
        manager = try ConversionManager(vm: machine.vm, memory: machine.memory, mmio: mmio, log: { line in log.append(line) })
    }

    /// The hypercall instruction of this CPU's vendor.
    public var instruction: HypercallInstruction {
        get throws { HypercallInstruction.native(for: try machine.kvm.supportedCPUID()) }
    }

    /// Answers MAP_GPA_RANGE through the manager, recording each outcome;
    /// false for any other exit.
    public func serve(_ exit: VCPUExit, outcomes: inout [ConversionManager.Outcome]) -> Bool {
        guard case .hypercall(let call) = exit, call.number == ConversionManager.mapGPARangeHypercall else { return false }
        let (outcome, answer) = manager.handleMapGPARange(arguments: call.arguments)
        outcomes.append(outcome)
        call.setReturnValue(answer)
        return true
    }

    /// The shared memory behind `[ramAddress + offset, + length)`.
    public func sharedBytes(_ offset: UInt64, _ length: UInt64) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: shared.bytes[Int(offset)..<Int(offset + length)])
    }
}

/// Log lines kept for checks, from any thread.
public final class LogLines: Sendable {
    private let storage = Mutex<[String]>([])
    public init() {}
    public func append(_ line: String) { storage.withLock { $0.append(line) } }
    public var lines: [String] { storage.withLock { $0 } }
}
