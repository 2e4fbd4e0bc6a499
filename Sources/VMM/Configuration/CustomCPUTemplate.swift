import KVM
import Metadata

/// Firecracker's custom CPU template (`PUT /cpu-config`, a config file's
/// `cpu-config`), the x86_64 form of its schema: CPUID modifiers and MSR
/// modifiers whose bitmaps clear (`0`), set (`1`) or keep (`x`) each bit,
/// and KVM capabilities the host must have. It applies on top of the named
/// CPU template, after the topology, so it has the last word on CPUID.
public struct CustomCPUTemplate: Equatable, Sendable {
    /// Bits a modifier decides (`mask`) and their values (`bits`, within `mask`).
    public struct BitFilter: Equatable, Sendable {
        public var mask: UInt64
        public var bits: UInt64

        /// `value` with the decided bits replaced.
        public func apply(to value: UInt64) -> UInt64 { value & ~mask | bits }
    }

    public struct CPUIDModifier: Equatable, Sendable {
        public var leaf: UInt32
        public var subleaf: UInt32
        /// KVM_CPUID_FLAG_* for an entry the template adds.
        public var flags: UInt32
        /// By register: eax, ebx, ecx, edx.
        public var registers: [(register: String, filter: BitFilter)]

        public static func == (left: Self, right: Self) -> Bool {
            (left.leaf, left.subleaf, left.flags) == (right.leaf, right.subleaf, right.flags)
                && left.registers.map(\.register) == right.registers.map(\.register)
                && left.registers.map(\.filter) == right.registers.map(\.filter)
        }
    }

    public struct MSRModifier: Equatable, Sendable {
        public var address: UInt32
        public var filter: BitFilter
    }

    /// KVM capabilities the host must offer (KVM_CHECK_EXTENSION > 0).
    public var requiredCapabilities: [UInt32] = []
    /// `!N` entries: Firecracker's checks to skip. Kestrel has no fixed list
    /// for a template to shorten, so these are kept only to be reported.
    public var waivedCapabilities: [UInt32] = []
    public var cpuid: [CPUIDModifier] = []
    public var msrs: [MSRModifier] = []

    public init() {}

    /// Reads the template; every refusal names the field, as `source` says.
    public static func parse(_ value: JSONValue, source: String) throws -> CustomCPUTemplate {
        guard let object = value.objectValue else { throw ConfigurationError("\(source) must be an object") }
        for key in object.keys.sorted() where !["kvm_capabilities", "cpuid_modifiers", "msr_modifiers"].contains(key) {
            if key == "vcpu_features" || key == "reg_modifiers" {
                throw ConfigurationError("\(source).\(key) is for aarch64 hosts; this one is x86_64")
            }
            throw ConfigurationError("\(source).\(key) is not a field of a custom CPU template (known: kvm_capabilities, cpuid_modifiers, msr_modifiers)")
        }
        var template = CustomCPUTemplate()
        for (index, item) in try array(object["kvm_capabilities"], "\(source).kvm_capabilities").enumerated() {
            let place = "\(source).kvm_capabilities[\(index)]"
            guard let text = item.stringValue else { throw ConfigurationError("\(place) must be a string such as \"171\" or \"!172\"") }
            let waived = text.hasPrefix("!")
            guard let number = UInt32(waived ? String(text.dropFirst()) : text) else {
                throw ConfigurationError("\(place) \"\(text)\" is not a decimal capability number, with ! in front to waive it")
            }
            if waived { template.waivedCapabilities.append(number) } else { template.requiredCapabilities.append(number) }
        }
        for (index, item) in try array(object["cpuid_modifiers"], "\(source).cpuid_modifiers").enumerated() {
            let place = "\(source).cpuid_modifiers[\(index)]"
            guard let entry = item.objectValue else { throw ConfigurationError("\(place) must be an object") }
            try MachineConfigFile.refuseUnknownKeys(entry, allowed: ["leaf", "subleaf", "flags", "modifiers"], section: place, source: source)
            guard let leaf = try number(entry["leaf"], "\(place).leaf", bits: 32) else { throw ConfigurationError("\(place).leaf is required") }
            let subleaf = try number(entry["subleaf"], "\(place).subleaf", bits: 32) ?? 0
            var flags: UInt32 = 0
            if let value = entry["flags"], value != .null {
                guard let whole = value.wholeNumber, (0...Int(UInt32.max)).contains(whole) else { throw ConfigurationError("\(place).flags must be a whole number") }
                flags = UInt32(whole)
            }
            var modifier = CPUIDModifier(leaf: UInt32(leaf), subleaf: UInt32(subleaf), flags: flags, registers: [])
            for (registerIndex, register) in try array(entry["modifiers"], "\(place).modifiers").enumerated() {
                let registerPlace = "\(place).modifiers[\(registerIndex)]"
                guard let fields = register.objectValue else { throw ConfigurationError("\(registerPlace) must be an object") }
                try MachineConfigFile.refuseUnknownKeys(fields, allowed: ["register", "bitmap"], section: registerPlace, source: source)
                guard let name = fields["register"]?.stringValue, ["eax", "ebx", "ecx", "edx"].contains(name) else {
                    throw ConfigurationError("\(registerPlace).register must be eax, ebx, ecx or edx")
                }
                modifier.registers.append((name, try bitmap(fields["bitmap"], "\(registerPlace).bitmap", bits: 32)))
            }
            template.cpuid.append(modifier)
        }
        for (index, item) in try array(object["msr_modifiers"], "\(source).msr_modifiers").enumerated() {
            let place = "\(source).msr_modifiers[\(index)]"
            guard let entry = item.objectValue else { throw ConfigurationError("\(place) must be an object") }
            try MachineConfigFile.refuseUnknownKeys(entry, allowed: ["addr", "bitmap"], section: place, source: source)
            guard let address = try number(entry["addr"], "\(place).addr", bits: 32) else { throw ConfigurationError("\(place).addr is required") }
            template.msrs.append(MSRModifier(address: UInt32(address), filter: try bitmap(entry["bitmap"], "\(place).bitmap", bits: 64)))
        }
        return template
    }

    private static func array(_ value: JSONValue?, _ place: String) throws -> [JSONValue] {
        guard let value, value != .null else { return [] }
        guard case .array(let items) = value else { throw ConfigurationError("\(place) must be an array") }
        return items
    }

    /// A string holding a number with Firecracker's prefixes: `0x` hex or `0b` binary.
    static func number(_ value: JSONValue?, _ place: String, bits: Int) throws -> UInt64? {
        guard let value, value != .null else { return nil }
        guard let text = value.stringValue else { throw ConfigurationError("\(place) must be a string such as \"0x1\"") }
        let radix = text.hasPrefix("0x") ? 16 : text.hasPrefix("0b") ? 2 : 0
        guard radix != 0, let number = UInt64(text.dropFirst(2), radix: radix), bits == 64 || number >> bits == 0 else {
            throw ConfigurationError("\(place) \"\(text)\" is not a \(bits)-bit number written 0x... or 0b...")
        }
        return number
    }

    /// `0b` then up to `bits` of 0, 1 and x (`_` separates), the last the lowest bit.
    static func bitmap(_ value: JSONValue?, _ place: String, bits: Int) throws -> BitFilter {
        guard let text = value?.stringValue else { throw ConfigurationError("\(place) is required: a string 0b followed by \(bits) of 0, 1 or x") }
        let digits = text.dropFirst(2).filter { $0 != "_" }
        guard text.hasPrefix("0b"), (1...bits).contains(digits.count), digits.allSatisfy({ "01x".contains($0) }) else {
            throw ConfigurationError("\(place) \"\(text)\" is not 0b followed by at most \(bits) of 0, 1 or x")
        }
        var filter = BitFilter(mask: 0, bits: 0)
        for (position, digit) in digits.reversed().enumerated() where digit != "x" {
            filter.mask |= 1 << UInt64(position)
            if digit == "1" { filter.bits |= 1 << UInt64(position) }
        }
        return filter
    }

    /// `table` with the CPUID modifiers applied; a leaf the table lacks is added with the modifier's flags.
    public func apply(to table: CPUIDTable) -> CPUIDTable {
        var table = table
        for modifier in cpuid {
            // The entry KVM would use for this leaf and sub-leaf (one without the
            // significant-index flag serves every sub-leaf), changed in place.
            var entry = table.entry(function: modifier.leaf, index: modifier.subleaf)
                ?? CPUIDEntry(function: modifier.leaf, index: modifier.subleaf, flags: modifier.flags)
            for (register, filter) in modifier.registers {
                switch register {
                case "eax": entry.eax = UInt32(truncatingIfNeeded: filter.apply(to: UInt64(entry.eax)))
                case "ebx": entry.ebx = UInt32(truncatingIfNeeded: filter.apply(to: UInt64(entry.ebx)))
                case "ecx": entry.ecx = UInt32(truncatingIfNeeded: filter.apply(to: UInt64(entry.ecx)))
                default: entry.edx = UInt32(truncatingIfNeeded: filter.apply(to: UInt64(entry.edx)))
                }
            }
            table.set(entry)
        }
        return table
    }

    /// Applies the MSR modifiers to `vcpu`: each MSR is read (KVM_GET_MSRS),
    /// its decided bits replaced and written back (KVM_SET_MSRS). An MSR KVM
    /// will not read or write is an error naming it.
    public func applyMSRs(to vcpu: VCPU) throws {
        for modifier in msrs {
            let hex = "0x" + String(modifier.address, radix: 16)
            guard let current = try? vcpu.msrs([modifier.address]).first else {
                throw ConfigurationError("cpu-config: KVM does not let this vCPU read MSR \(hex)")
            }
            let written = try vcpu.setMSRs([MSREntry(index: modifier.address, value: modifier.filter.apply(to: current.value))])
            guard written == 1 else { throw ConfigurationError("cpu-config: KVM refused the value for MSR \(hex)") }
        }
    }
}
