import KVM

/// Answers a realm's RIPAS change requests. In the v14 series the guest's
/// RSI_IPA_STATE_SET reaches userspace as KVM_EXIT_MEMORY_FAULT: `gpa` and
/// `size` give the protected range (top IPA bit clear), and
/// KVM_MEMORY_EXIT_FLAG_PRIVATE asks for RIPAS RAM (private), its absence
/// for RIPAS EMPTY (shared). The VMM makes the backing match and runs the
/// vCPU again; KVM commits the RIPAS change on that entry. To refuse, the
/// VMM can only stop running the vCPU.
///
/// The RAM parts go through the same `ConversionManager` as x86's
/// private/shared conversions (KVM_SET_MEMORY_ATTRIBUTES, then the old
/// backing is discarded). The realm's own edges are decided here:
/// - a range at the unprotected alias, empty or wrapping: refused (KVM never reports one);
/// - RIPAS RAM where the realm has no RAM, or over a device window: refused;
/// - RIPAS EMPTY over IPA space with no RAM (or over a device window, which is
///   EMPTY already): accepted, nothing to change there;
/// - a range partly in RAM: only the RAM part is converted.
public final class RealmRIPASHandler: Sendable {
    /// What to do with the vCPU after a RIPAS request.
    public enum Decision: Equatable, Sendable {
        /// Run it again: KVM commits the change. `converted` counts bytes whose backing changed.
        case resume(converted: UInt64)
        /// Stop running it, with the reason.
        case stop(String)
    }

    public let machineType: ARM64MachineType
    private let manager: ConversionManager
    private let ram: [Range<UInt64>]
    private let devices: [RealmConfiguration.Device]

    /// `manager` converts the realm's RAM; `ram` is the RAM it covers (the
    /// guest_memfd memslots), `devices` the MMIO windows.
    public init(machineType: ARM64MachineType, manager: ConversionManager, ram: [Range<UInt64>], devices: [RealmConfiguration.Device] = []) {
        self.machineType = machineType
        self.manager = manager
        self.ram = ram.sorted { $0.lowerBound < $1.lowerBound }
        self.devices = devices
    }

    /// Decides on the KVM_EXIT_MEMORY_FAULT of a RIPAS change.
    public func handle(_ fault: MemoryFault) -> Decision {
        let toRAM = fault.flags.contains(.private)
        let what = "RIPAS \(toRAM ? "RAM" : "EMPTY") for [0x\(String(fault.guestPhysicalAddress, radix: 16)), +0x\(String(fault.size, radix: 16)))"
        if fault.hardwarePoison { return .stop("\(what): the page is poisoned") }
        let (end, wraps) = fault.guestPhysicalAddress.addingReportingOverflow(fault.size)
        guard fault.size > 0, !wraps else { return .stop("\(what): the range is empty or wraps") }
        let range = fault.guestPhysicalAddress..<end
        guard range.upperBound <= machineType.unprotectedBit else {
            return .stop("\(what): the range reaches the unprotected alias (bit \(machineType.ipaBits - 1)); RIPAS applies to protected IPAs")
        }
        let inRAM = ram.compactMap { piece -> Range<UInt64>? in
            piece.overlaps(range) ? max(piece.lowerBound, range.lowerBound)..<min(piece.upperBound, range.upperBound) : nil
        }
        if toRAM {
            if let device = devices.first(where: { $0.range.overlaps(range) }) {
                return .stop("\(what): overlaps device \(device.name) \(hexRange(device.range))")
            }
            let covered = inRAM.reduce(UInt64(0)) { $0 + UInt64($1.count) }
            guard covered == UInt64(range.count) else {
                return .stop("\(what): the realm has no RAM at part of the range (\(covered) of \(range.count) bytes are RAM)")
            }
        }
        var converted: UInt64 = 0
        for part in inRAM {
            switch manager.convert(address: part.lowerBound, length: UInt64(part.count), toPrivate: toRAM) {
            case .converted(let changed): converted += changed
            case .unchanged: break
            case .refused(let reason), .failed(let reason): return .stop("\(what): \(reason)")
            }
        }
        return .resume(converted: converted)
    }
}
