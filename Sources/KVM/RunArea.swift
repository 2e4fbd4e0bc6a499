import CKVM

#if canImport(Glibc)
import Glibc
#endif

/// The `kvm_run` structure a vCPU shares with KVM: KVM writes why KVM_RUN
/// returned, and the VMM writes its answers (IN data, MMIO read data, hypercall
/// results) for KVM to read on the next KVM_RUN.
///
/// A `VCPU` owns the one KVM maps for it. `RunArea.simulated()` makes one in
/// ordinary memory, so that exit handlers can be driven by exits staged with
/// `simulate(_:)` instead of a guest: the tests of the VMM's exit handler and of
/// the SNP certificate responder work that way.
///
/// Exit payloads that point into the area (`IOExit`, `MMIOExit`,
/// `HypercallExit`, `SNPCertificateRequest`, `SNPLegacyCertificateRequest`)
/// belong to one run: each KVM_RUN (or `simulate`) starts a new one, and a
/// payload used after that stops the program with a message naming the payload,
/// rather than reading or answering another exit's data.
public final class RunArea: @unchecked Sendable {
    // @unchecked Sendable: the pointer is fixed for the area's life; the only
    // field touched from other threads is `immediate_exit`, a byte KVM itself
    // reads racily by design (the kernel's Documentation/virt/kvm/api.rst: "polled once when KVM_RUN starts").
    let run: UnsafeMutablePointer<ckvm_run>
    /// The area's size in bytes (KVM_GET_VCPU_MMAP_SIZE for a vCPU's).
    public let size: Int
    /// Which run the area's contents belong to; payloads remember it.
    private(set) var generation: UInt64 = 0
    let isMapping: Bool

    /// Takes ownership of a mapping of the vCPU fd (unmapped at deinit).
    init(mapping: UnsafeMutableRawPointer, size: Int) {
        // Sound: the mapping is page aligned and at least sizeof(struct kvm_run).
        run = mapping.bindMemory(to: ckvm_run.self, capacity: 1)
        self.size = size
        isMapping = true
    }

    private init(simulatedSize size: Int) {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        run = raw.bindMemory(to: ckvm_run.self, capacity: 1)
        self.size = size
        isMapping = false
    }

    /// A zeroed run area in ordinary memory, for driving exit handlers without
    /// a vCPU (tests, fuzzers, benchmarks). `size` is at least one page.
    public static func simulated(size: Int = 4096) -> RunArea {
        RunArea(simulatedSize: max(size, 4096))
    }

    deinit {
        if isMapping {
            munmap(UnsafeMutableRawPointer(run), size)
        } else {
            UnsafeMutableRawPointer(run).deallocate()
        }
    }

    /// Whether the next KVM_RUN returns at once with EINTR (`immediate_exit`).
    /// Another thread may set it to stop the vCPU, then signal the vCPU's
    /// thread in case it is already inside KVM_RUN.
    public var immediateExit: Bool {
        get { run.pointee.immediate_exit != 0 }
        set { run.pointee.immediate_exit = newValue ? 1 : 0 }
    }

    /// The `exit_reason` KVM wrote last.
    public var exitReason: ExitReason { ExitReason(rawValue: run.pointee.exit_reason) }

    /// The area's address, for C code that issues KVM_RUN itself (the
    /// benchmark's C baseline). Swift code uses `VCPU.run()`.
    public var address: UnsafeMutableRawPointer { UnsafeMutableRawPointer(run) }

    /// Starts a new run: earlier payloads become stale, and `exit_reason` is
    /// cleared so that a failed KVM_RUN is not read as the previous exit.
    @inline(__always)
    func beginRun() {
        generation &+= 1
        run.pointee.exit_reason = 0
    }

    /// Stops the program when a payload of run `stamp` is used in a later run.
    @inline(__always)
    func checkCurrent(_ stamp: UInt64, _ payload: StaticString) {
        precondition(stamp == generation, "\(payload) used after the next KVM_RUN of its vCPU: exit payloads are valid for one run")
    }

    /// Decodes the exit KVM described in the area.
    public func decodeExit() -> VCPUExit {
        VCPUExit.decode(self)
    }

    /// The last exit read as a v15 SNP certificate request (exit 40, type 1),
    /// or nil. Only for kernels carrying that series; see `SNPLegacyCertificateRequest`.
    public var legacyCertificateRequest: SNPLegacyCertificateRequest? {
        SNPLegacyCertificateRequest(area: self)
    }
}

/// Where an exit payload came from: its area and the run it belongs to. Every
/// payload reaches the area through `run(_:)`, which stops the program once
/// the area has moved on to a later run.
struct RunTicket {
    let area: RunArea
    let stamp: UInt64

    init(_ area: RunArea) {
        self.area = area
        stamp = area.generation
    }

    @inline(__always)
    func run(_ payload: StaticString) -> UnsafeMutablePointer<ckvm_run> {
        area.checkCurrent(stamp, payload)
        return area.run
    }

    /// Whether the area is still at this run (for descriptions, which must
    /// not stop the program).
    var isCurrent: Bool { stamp == area.generation }
}
