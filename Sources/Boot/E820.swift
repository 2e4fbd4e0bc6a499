/// One entry of the BIOS e820 memory map (also the PVH memory map's types).
public struct E820Entry: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
        case acpi = 3
        case nvs = 4
        case unusable = 5
    }

    public let address: UInt64
    public let size: UInt64
    public let kind: Kind

    public init(address: UInt64, size: UInt64, kind: Kind) {
        self.address = address
        self.size = size
        self.kind = kind
    }

    public var end: UInt64 { address + size }

    /// The way Linux prints it: `[mem 0x0000000000000000-0x000000000009fbff] usable`.
    public var description: String {
        func pad(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
        }
        let name: String
        switch kind {
        case .ram: name = "usable"
        case .reserved: name = "reserved"
        case .acpi: name = "ACPI data"
        case .nvs: name = "ACPI NVS"
        case .unusable: name = "unusable"
        }
        return "[mem \(pad(address))-\(pad(end - 1))] \(name)"
    }
}
