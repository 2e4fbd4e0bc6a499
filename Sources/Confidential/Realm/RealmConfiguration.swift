import GuestMemory
import KVM

/// A realm VM as a VMM would build it, described before anything is created:
/// the machine type (with its IPA size), the RAM ranges with their two
/// backings, the device MMIO windows, what is loaded into protected memory
/// at launch, and the boot vCPU's entry state. `RealmMemoryRules` checks it
/// and `RealmLaunchPlan` turns it into the ordered list of KVM operations.
public struct RealmConfiguration: Sendable {
    /// Where a RAM range's private (protected) memory comes from.
    public enum PrivateBacking: String, Sendable {
        /// A guest_memfd bound to the memslot (what realms need).
        case guestMemfd = "guest_memfd"
        /// Ordinary host memory: no protected memory for the realm.
        case hostMemory = "host memory"
    }

    /// One range of guest RAM at protected IPAs.
    public struct RAM: Sendable {
        public var name: String
        public var range: Range<UInt64>
        public var privateBacking: PrivateBacking
        /// The mapping behind the unprotected alias (the memslot's `userspace_addr`).
        public var sharedMapping: MemoryMapping.Sharing

        public init(name: String, range: Range<UInt64>, privateBacking: PrivateBacking = .guestMemfd,
                    sharedMapping: MemoryMapping.Sharing = .shared) {
            self.name = name
            self.range = range
            self.privateBacking = privateBacking
            self.sharedMapping = sharedMapping
        }
    }

    /// Something copied into protected memory before the first run.
    public struct Payload: Sendable {
        public var name: String
        public var address: UInt64
        public var size: UInt64
        /// Whether KVM_ARM_RMI_POPULATE hashes it into the Realm Initial Measurement.
        public var measured: Bool

        public init(name: String, address: UInt64, size: UInt64, measured: Bool = true) {
            self.name = name
            self.address = address
            self.size = size
            self.measured = measured
        }

        public var range: Range<UInt64> { address..<(address + size) }
    }

    /// An emulated device's MMIO window (the guest reaches it through the
    /// unprotected alias; KVM reports the address without the top bit).
    public struct Device: Sendable {
        public var name: String
        public var range: Range<UInt64>

        public init(name: String, range: Range<UInt64>) {
            self.name = name
            self.range = range
        }
    }

    public var machineType: ARM64MachineType
    public var ram: [RAM]
    public var devices: [Device]
    public var payloads: [Payload]
    public var vcpuCount: Int
    /// vCPU 0's PC and x0 (a Linux Image's entry and its device tree's address).
    public var entry: UInt64
    public var entryArgument: UInt64

    public init(machineType: ARM64MachineType, ram: [RAM], devices: [Device] = [], payloads: [Payload] = [], vcpuCount: Int = 1,
                entry: UInt64, entryArgument: UInt64 = 0) {
        self.machineType = machineType
        self.ram = ram
        self.devices = devices
        self.payloads = payloads
        self.vcpuCount = vcpuCount
        self.entry = entry
        self.entryArgument = entryArgument
    }
}

/// A configuration a realm cannot run with: the rule it breaks, and why the
/// rule exists.
public struct RealmRuleViolation: Error, Equatable, CustomStringConvertible, Sendable {
    /// A short name for the rule (`realm.shared-memory-is-map-shared`).
    public let rule: String
    public let description: String

    public init(_ rule: String, _ description: String) {
        self.rule = rule
        self.description = description
    }
}

func hexRange(_ range: Range<UInt64>) -> String {
    "[0x\(String(range.lowerBound, radix: 16)), 0x\(String(range.upperBound, radix: 16)))"
}
