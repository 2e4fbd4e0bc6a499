import KVM

/// What a realm launch does, computed from a checked configuration and
/// shown before anything runs: the protected and unprotected IPA ranges,
/// what is populated with which content and RIPAS, and the KVM operations
/// in order, marking the ones the RMM measures into the Realm Initial
/// Measurement (RIM). It follows `RealmInterface.series`.
public struct RealmLaunchPlan: Sendable {
    /// One range of the IPA space as the realm starts.
    public struct Region: Sendable, Equatable {
        public let name: String
        /// Protected (private) IPAs, and their unprotected (shared) alias.
        public let protected: Range<UInt64>
        public let unprotectedAlias: Range<UInt64>
        /// What backs each half.
        public let backing: String
        /// RIPAS at activation, and who sets it.
        public let ripas: String
    }

    /// One KVM operation of the launch.
    public struct Step: Sendable, Equatable {
        public let operation: String
        /// What the RMM adds to the RIM for it, or nil when nothing.
        public let measurement: String?
    }

    public let configuration: RealmConfiguration
    public let regions: [Region]
    public let devices: [RealmConfiguration.Device]
    public let steps: [Step]

    /// Checks `configuration` (`RealmMemoryRules`) and plans it.
    public init(_ configuration: RealmConfiguration) throws {
        try RealmMemoryRules.validate(configuration)
        self.configuration = configuration
        let top = configuration.machineType.unprotectedBit
        let payloads = configuration.payloads.sorted { $0.address < $1.address }
        var regions: [Region] = []
        for piece in configuration.ram.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) {
            // Split the RAM range into populated payloads and the rest.
            var cursor = piece.range.lowerBound
            func add(_ name: String, _ range: Range<UInt64>, _ ripas: String) {
                regions.append(Region(name: name, protected: range, unprotectedAlias: (range.lowerBound | top)..<(range.upperBound | top),
                                      backing: "guest_memfd (private) / MAP_SHARED memory (shared alias)", ripas: ripas))
            }
            for payload in payloads where piece.range.contains(payload.address) {
                let populated = RealmMemoryRules.populatedRange(payload)
                if cursor < populated.lowerBound {
                    add("\(piece.name) (not populated)", cursor..<populated.lowerBound, "RAM, set by KVM at activation (not measured); reads as zero")
                }
                add("\(piece.name): \(payload.name)", populated,
                    "RAM, set by KVM_ARM_RMI_POPULATE\(payload.measured ? " (contents measured)" : " (contents not measured)")")
                cursor = populated.upperBound
            }
            if cursor < piece.range.upperBound {
                add("\(piece.name) (not populated)", cursor..<piece.range.upperBound, "RAM, set by KVM at activation (not measured); reads as zero")
            }
        }
        self.regions = regions
        devices = configuration.devices.sorted { $0.range.lowerBound < $1.range.lowerBound }

        var steps: [Step] = [
            Step(operation: "KVM_CREATE_VM with \(configuration.machineType)", measurement: nil),
        ]
        for (slot, piece) in configuration.ram.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }).enumerated() {
            steps.append(Step(operation: "KVM_SET_USER_MEMORY_REGION2 slot \(slot): \(piece.name) \(hexRange(piece.range)), "
                + "KVM_MEM_GUEST_MEMFD with userspace_addr at the MAP_SHARED memory of the unprotected alias", measurement: nil))
        }
        steps.append(Step(operation: "KVM_CREATE_DEVICE VGICv3 (realms need the in-kernel irqchip), "
            + "\(configuration.vcpuCount) x KVM_CREATE_VCPU + KVM_ARM_VCPU_INIT with PSCI_0_2", measurement: nil))
        steps.append(Step(operation: "KVM_SET_ONE_REG vCPU 0: PC = 0x\(String(configuration.entry, radix: 16)), "
            + "x0 = 0x\(String(configuration.entryArgument, radix: 16)) (only X0-X30 and PC are settable for a realm, and only before activation)",
            measurement: nil))
        for (index, payload) in payloads.enumerated() {
            let populated = RealmMemoryRules.populatedRange(payload)
            let first = index == 0 ? "; the first call creates the realm descriptor (RIM initialised from the realm parameters)" : ""
            steps.append(Step(operation: "KVM_ARM_RMI_POPULATE \(payload.name) \(hexRange(populated)), "
                + "flags \(payload.measured ? "MEASURE" : "0")\(first)",
                measurement: payload.measured ? "the contents of \(populated.count / 4096) page(s) at 0x\(String(populated.lowerBound, radix: 16))" : nil))
        }
        steps.append(Step(operation: "first KVM_RUN: KVM creates one REC per vCPU (vCPU 0 runnable, the others wait for PSCI CPU_ON), "
            + "sets the unpopulated guest_memfd ranges to RIPAS RAM and activates the realm; POPULATE is refused from then on (EBUSY)",
            measurement: "each REC's creation (the RMM measures its entry state)"))
        self.steps = steps
    }

    /// The plan as text, for `--dry-run` and logs.
    public func render() -> String {
        let type = configuration.machineType
        var lines = [
            "Realm launch plan (\(RealmInterface.series))",
            "  VM type: \(type); IPA space \(type.ipaBits) bits: protected [0, 0x\(String(type.unprotectedBit, radix: 16))), "
                + "unprotected alias = address | 0x\(String(type.unprotectedBit, radix: 16))",
            "  vCPUs: \(configuration.vcpuCount); hash algorithm and personalization value: the RMM's defaults "
                + "(v14 cannot choose them)",
            "Memory:",
        ]
        for region in regions {
            lines.append("  \(hexRange(region.protected)) \(region.name)")
            lines.append("      unprotected alias \(hexRange(region.unprotectedAlias)); \(region.backing)")
            lines.append("      RIPAS \(region.ripas)")
        }
        lines.append("Devices (MMIO exits; RIPAS EMPTY, reached through the unprotected alias):")
        if devices.isEmpty { lines.append("  none") }
        for device in devices { lines.append("  \(hexRange(device.range)) \(device.name)") }
        lines.append("Operations, in order (* = measured into the RIM):")
        for (index, step) in steps.enumerated() {
            lines.append("  \(index + 1). \(step.measurement == nil ? " " : "*") \(step.operation)")
            if let measurement = step.measurement { lines.append("       measures \(measurement)") }
        }
        return lines.joined(separator: "\n")
    }
}
