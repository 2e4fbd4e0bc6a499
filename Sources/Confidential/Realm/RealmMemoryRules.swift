import GuestMemory
import KVM

/// The memory rules of a realm, checked when it is configured, before any
/// VM exists. Each refusal names its rule and, where one is known, the bug it
/// prevents.
public enum RealmMemoryRules {
    public static let pageSize: UInt64 = 4096

    /// Throws the first rule `configuration` breaks.
    public static func validate(_ configuration: RealmConfiguration) throws {
        let type = configuration.machineType
        guard type.kind == .realm else {
            throw RealmRuleViolation("realm.vm-type", "the machine type is \(type), not KVM_VM_TYPE_ARM_REALM")
        }
        guard !configuration.ram.isEmpty else { throw RealmRuleViolation("realm.ram", "a realm needs at least one RAM range") }
        guard configuration.vcpuCount >= 1 else { throw RealmRuleViolation("realm.vcpus", "a realm needs at least one vCPU") }
        let top = type.unprotectedBit
        let ram = configuration.ram.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for piece in ram {
            guard !piece.range.isEmpty, piece.range.lowerBound % pageSize == 0, piece.range.upperBound % pageSize == 0 else {
                throw RealmRuleViolation("realm.ram-aligned", "RAM \(piece.name) \(hexRange(piece.range)) must be non-empty and page-aligned")
            }
            guard piece.range.upperBound <= top else {
                throw RealmRuleViolation("realm.protected-ipa", "RAM \(piece.name) \(hexRange(piece.range)) reaches past the protected half of "
                    + "the \(type.ipaBits)-bit IPA space (it ends at 0x\(String(top, radix: 16)); addresses with bit \(type.ipaBits - 1) set are the "
                    + "unprotected alias)")
            }
            guard piece.sharedMapping == .shared else {
                throw RealmRuleViolation("realm.shared-memory-is-map-shared", "the memory behind RAM \(piece.name)'s unprotected alias is "
                    + "MAP_PRIVATE; it must be MAP_SHARED. With MAP_PRIVATE, what the guest writes after a private-to-shared conversion "
                    + "lands in pages the VMM never reads: QEMU lost a realm's virtio-net ring writes this way "
                    + "(\"virtio: zero sized buffers are not allowed\")")
            }
            guard piece.privateBacking == .guestMemfd else {
                throw RealmRuleViolation("realm.private-memory-is-guest-memfd", "RAM \(piece.name)'s private memory is \(piece.privateBacking.rawValue); "
                    + "a realm's protected memory must come from guest_memfd (KVM_ARM_RMI_POPULATE and the initial RIPAS RAM apply only to "
                    + "guest_memfd memslots, and host memory is not protected from the host)")
            }
        }
        for (first, second) in zip(ram, ram.dropFirst()) where first.range.overlaps(second.range) {
            throw RealmRuleViolation("realm.ram-disjoint", "RAM \(first.name) \(hexRange(first.range)) overlaps \(second.name) \(hexRange(second.range))")
        }
        for device in configuration.devices {
            guard !device.range.isEmpty, device.range.upperBound <= top else {
                throw RealmRuleViolation("realm.device-in-ipa-space", "device \(device.name) \(hexRange(device.range)) must be non-empty and below "
                    + "the unprotected alias bit (0x\(String(top, radix: 16))); KVM reports MMIO addresses without that bit")
            }
            if let piece = ram.first(where: { $0.range.overlaps(device.range) }) {
                throw RealmRuleViolation("realm.devices-outside-protected-memory", "device \(device.name) \(hexRange(device.range)) overlaps "
                    + "protected memory (RAM \(piece.name) \(hexRange(piece.range))): its accesses would be to private pages, never MMIO exits")
            }
        }
        let payloads = configuration.payloads.sorted { $0.address < $1.address }
        for payload in payloads {
            guard payload.size > 0, payload.address % pageSize == 0 else {
                throw RealmRuleViolation("realm.payload-aligned", "\(payload.name) at 0x\(String(payload.address, radix: 16)) must be non-empty and "
                    + "page-aligned (KVM_ARM_RMI_POPULATE takes page-aligned ranges)")
            }
            let populated = populatedRange(payload)
            guard ram.contains(where: { $0.range.lowerBound <= populated.lowerBound && populated.upperBound <= $0.range.upperBound }) else {
                throw RealmRuleViolation("realm.payload-in-ram", "\(payload.name) \(hexRange(populated)) does not lie inside one RAM range")
            }
        }
        for (first, second) in zip(payloads, payloads.dropFirst()) where populatedRange(first).overlaps(populatedRange(second)) {
            throw RealmRuleViolation("realm.payload-disjoint", "\(first.name) \(hexRange(populatedRange(first))) and \(second.name) "
                + "\(hexRange(populatedRange(second))) share pages")
        }
        guard payloads.contains(where: { $0.measured && $0.range.contains(configuration.entry) }) else {
            throw RealmRuleViolation("realm.entry-is-measured", "vCPU 0 would start at 0x\(String(configuration.entry, radix: 16)), outside every "
                + "measured payload: the realm would run code its Realm Initial Measurement does not cover")
        }
    }

    /// The pages KVM_ARM_RMI_POPULATE copies for a payload.
    static func populatedRange(_ payload: RealmConfiguration.Payload) -> Range<UInt64> {
        let end = (payload.address + payload.size + pageSize - 1) / pageSize * pageSize
        return payload.address..<end
    }
}
