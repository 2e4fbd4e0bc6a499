import Glibc
import GuestMemory
import HostSystem
import KVM
import Synchronization

/// Converts guest memory between private and shared for a VM with private
/// memory: it answers KVM_EXIT_MEMORY_FAULT exits and the guest's
/// KVM_HC_MAP_GPA_RANGE hypercalls, sets the range with
/// KVM_SET_MEMORY_ATTRIBUTES, keeps the VM's attribute map (the private ranges
/// of its `GuestAddressSpace`, which devices consult), and discards the
/// backing the range left: a hole punched in the guest_memfd for private to
/// shared, the shared pages released (MADV_REMOVE) for shared to private.
///
/// Every request is checked first. Unaligned, empty, wrapping, outside RAM or
/// overlapping device MMIO ranges are refused and nothing changes. A range
/// partly in the wanted state already (half-converted) changes only the rest;
/// a repeated request changes nothing and makes no KVM call. Conversions are
/// serialised, so two vCPUs converting overlapping ranges leave one consistent
/// state.
public final class ConversionManager: Sendable {
    /// What the manager did with one request.
    public enum Outcome: Equatable, Sendable {
        /// `changed` bytes switched state (the rest of the range already had it).
        case converted(changed: UInt64)
        /// The whole range already had the wanted state.
        case unchanged
        /// Refused before anything changed.
        case refused(String)
        /// KVM_SET_MEMORY_ATTRIBUTES failed; nothing changed.
        case failed(String)

        public var succeeded: Bool {
            switch self {
            case .converted, .unchanged: return true
            case .refused, .failed: return false
            }
        }
    }

    /// Sets a range's attributes in KVM: KVM_SET_MEMORY_ATTRIBUTES, or a test's stand-in.
    public typealias SetAttributes = @Sendable (_ range: Range<UInt64>, _ private: Bool) throws -> Void

    private let ram: [ConvertibleRAM]
    private let memory: GuestAddressSpace
    private let mmio: [(name: String, range: Range<UInt64>)]
    private let setAttributes: SetAttributes
    private let log: @Sendable (String) -> Void
    private let lock = Mutex(Statistics())

    /// Counts for reports and tests.
    public struct Statistics: Equatable, Sendable {
        public var toPrivate = 0, toShared = 0, unchanged = 0, refused = 0, failed = 0
        public var bytesChanged: UInt64 = 0
        public var discardFailures = 0
    }

    /// A manager for `ram` (sorted or not; must not overlap), recording private
    /// ranges in `memory`. `mmio` names device ranges a conversion must not
    /// touch. `log` gets one line per refusal or failure.
    public init(ram: [ConvertibleRAM], memory: GuestAddressSpace, mmio: [(name: String, range: Range<UInt64>)] = [],
                setAttributes: @escaping SetAttributes, log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        let sorted = ram.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for (first, second) in zip(sorted, sorted.dropFirst()) where first.range.upperBound > second.range.lowerBound {
            throw ConversionError("convertible RAM \(ConvertibleRAM.text(first.range)) overlaps \(ConvertibleRAM.text(second.range))")
        }
        self.ram = sorted
        self.memory = memory
        self.mmio = mmio
        self.setAttributes = setAttributes
        self.log = log
    }

    /// A manager for `vm`'s installed regions that have a guest_memfd; KVM
    /// calls go to the VM (KVM_SET_MEMORY_ATTRIBUTES).
    public convenience init(vm: VirtualMachine, memory: GuestAddressSpace, mmio: [(name: String, range: Range<UInt64>)] = [],
                            log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        try self.init(ram: try vm.regions.filter { $0.guestMemfd != nil }.map(ConvertibleRAM.init(region:)), memory: memory, mmio: mmio,
                      setAttributes: { range, isPrivate in
                          try vm.setMemoryAttributes(address: range.lowerBound, size: UInt64(range.count),
                                                     attributes: isPrivate ? .private : [])
                      }, log: log)
    }

    public var statistics: Statistics { lock.withLock { $0 } }

    // MARK: Requests

    /// Converts `[address, address + length)` to private or shared.
    @discardableResult
    public func convert(address: UInt64, length: UInt64, toPrivate: Bool) -> Outcome {
        lock.withLock { statistics in
            let outcome = convertLocked(address: address, length: length, toPrivate: toPrivate, statistics: &statistics)
            switch outcome {
            case .converted(let changed):
                if toPrivate { statistics.toPrivate += 1 } else { statistics.toShared += 1 }
                statistics.bytesChanged += changed
            case .unchanged: statistics.unchanged += 1
            case .refused(let reason): statistics.refused += 1; log("conversion refused: \(reason)")
            case .failed(let reason): statistics.failed += 1; log("conversion failed: \(reason)")
            }
            return outcome
        }
    }

    /// Answers a KVM_EXIT_MEMORY_FAULT: the guest accessed the range as private
    /// (or shared) while KVM had it the other way, so it is converted to match.
    /// A poisoned page is refused: converting it would not help.
    public func handle(_ fault: MemoryFault) -> Outcome {
        if fault.hardwarePoison { return refuse("\(fault): the page is poisoned, converting it would not help") }
        return convert(address: fault.guestPhysicalAddress, length: fault.size, toPrivate: fault.flags.contains(.private))
    }

    /// KVM_HC_MAP_GPA_RANGE (number 12): the guest passes the guest-physical
    /// address in RBX, the number of 4 KiB pages in RCX and the attributes in
    /// RDX (bits 0-1 a page-size hint, bit 4 ENCRYPTED); KVM hands them over as
    /// `hypercall.args[0...2]`.
    public static let mapGPARangeHypercall: UInt64 = 12
    /// KVM_MAP_GPA_RANGE_ENCRYPTED: the range becomes private.
    public static let mapGPARangeEncrypted: UInt64 = 1 << 4
    /// The value a refused hypercall returns to the guest: -KVM_EINVAL.
    public static let hypercallInvalid = UInt64(bitPattern: -22)

    /// Answers KVM_HC_MAP_GPA_RANGE with its three arguments; returns the
    /// value for the guest's RAX (0, or -KVM_EINVAL when refused or failed).
    public func handleMapGPARange(arguments: [UInt64]) -> (outcome: Outcome, returnValue: UInt64) {
        guard arguments.count >= 3 else { return (refuse("MAP_GPA_RANGE with \(arguments.count) arguments"), Self.hypercallInvalid) }
        let (address, pages, attributes) = (arguments[0], arguments[1], arguments[2])
        let known = Self.mapGPARangeEncrypted | 0x3
        guard attributes & ~known == 0, attributes & 0x3 != 0x3 else {
            return (refuse("MAP_GPA_RANGE attributes 0x\(String(attributes, radix: 16)) have unknown bits"), Self.hypercallInvalid)
        }
        let (length, overflow) = pages.multipliedReportingOverflow(by: 4096)
        guard !overflow else { return (refuse("MAP_GPA_RANGE of \(pages) pages overflows"), Self.hypercallInvalid) }
        let outcome = convert(address: address, length: length, toPrivate: attributes & Self.mapGPARangeEncrypted != 0)
        return (outcome, outcome.succeeded ? 0 : Self.hypercallInvalid)
    }

    /// Counts and logs a request refused before it reached a range.
    private func refuse(_ reason: String) -> Outcome {
        lock.withLock { $0.refused += 1 }
        log("conversion refused: \(reason)")
        return .refused(reason)
    }

    // MARK: The conversion

    private func convertLocked(address: UInt64, length: UInt64, toPrivate: Bool, statistics: inout Statistics) -> Outcome {
        let page = UInt64(MemoryMapping.pageSize)
        let what = "\(toPrivate ? "to private" : "to shared") of [0x\(String(address, radix: 16)), +0x\(String(length, radix: 16)))"
        guard length > 0 else { return .refused("\(what): the range is empty") }
        guard address % page == 0, length % page == 0 else { return .refused("\(what): not aligned to \(page)-byte pages") }
        let (end, wraps) = address.addingReportingOverflow(length)
        guard !wraps else { return .refused("\(what): the range wraps past 2^64") }
        let range = address..<end
        if let device = mmio.first(where: { $0.range.overlaps(range) }) {
            return .refused("\(what): overlaps \(device.name) at \(ConvertibleRAM.text(device.range))")
        }
        // The pieces of RAM that hold the range, which must cover it without a gap.
        var pieces: [(ram: ConvertibleRAM, range: Range<UInt64>)] = []
        var cursor = address
        for piece in ram where piece.range.upperBound > cursor && piece.range.lowerBound < end {
            guard piece.range.lowerBound <= cursor else { break }
            let part = cursor..<min(end, piece.range.upperBound)
            pieces.append((piece, part))
            cursor = part.upperBound
        }
        guard cursor == end else {
            return .refused("\(what): 0x\(String(cursor, radix: 16)) is outside convertible RAM")
        }
        // What actually changes: for private, the parts that are shared now;
        // for shared, the parts that are private now.
        let privateNow = memory.privateParts(of: range)
        let changing = toPrivate ? Self.subtract(privateNow, from: range) : privateNow
        guard !changing.isEmpty else { return .unchanged }

        if toPrivate { memory.setPrivate(range, true) }  // devices stop reaching it first
        do {
            try setAttributes(range, toPrivate)
        } catch {
            if toPrivate {
                // Back to how it was: only the parts that were private stay so.
                memory.setPrivate(range, false)
                for part in privateNow { memory.setPrivate(part, true) }
            }
            return .failed("\(what): KVM_SET_MEMORY_ATTRIBUTES: \(error)")
        }
        if !toPrivate { memory.setPrivate(range, false) }
        var changed: UInt64 = 0
        for part in changing {
            changed += UInt64(part.count)
            for piece in pieces where piece.range.overlaps(part) {
                let lower = max(piece.range.lowerBound, part.lowerBound), upper = min(piece.range.upperBound, part.upperBound)
                if !discard(piece.ram, lower..<upper, wasPrivate: !toPrivate) { statistics.discardFailures += 1 }
            }
        }
        return .converted(changed: changed)
    }

    /// Releases the backing a range no longer uses; false (and one log line)
    /// when that fails, which leaves the conversion standing.
    private func discard(_ piece: ConvertibleRAM, _ range: Range<UInt64>, wasPrivate: Bool) -> Bool {
        let offset = range.lowerBound - piece.range.lowerBound
        do {
            if wasPrivate {
                try FileSpace.allocate(piece.privateFile, mode: [.punchHole, .keepSize], offset: Int(piece.privateOffset + offset),
                                       length: range.count)
            } else {
                try piece.shared.advise(offset: Int(offset), length: range.count, MADV_REMOVE)
            }
            return true
        } catch {
            log("conversion of \(ConvertibleRAM.text(range)): discarding its old \(wasPrivate ? "private" : "shared") backing failed: \(error)")
            return false
        }
    }

    /// `range` minus the sorted, disjoint `parts`.
    static func subtract(_ parts: [Range<UInt64>], from range: Range<UInt64>) -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        var cursor = range.lowerBound
        for part in parts where part.upperBound > cursor && part.lowerBound < range.upperBound {
            if part.lowerBound > cursor { result.append(cursor..<part.lowerBound) }
            cursor = max(cursor, part.upperBound)
        }
        if cursor < range.upperBound { result.append(cursor..<range.upperBound) }
        return result
    }
}
