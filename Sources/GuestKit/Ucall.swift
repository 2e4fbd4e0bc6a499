import GuestMemory

/// A call from a test guest to its host, made by writing a record to guest
/// memory and its address to `ucallPort` (as in the kernel's KVM selftests).
public enum Ucall: Equatable, CustomStringConvertible, Sendable {
    /// The guest reached a numbered stage, with values for the host to check.
    case sync(stage: UInt64, values: [UInt64])
    /// A guest assertion failed: its message and the values it compared.
    case assertFailed(message: String, values: [UInt64])
    /// A message from the guest.
    case print(message: String, values: [UInt64])
    /// The guest finished.
    case done
    /// The guest's IDT handler caught an exception.
    case exception(GuestException)

    public var description: String {
        switch self {
        case .sync(let stage, let values): return "SYNC(stage \(stage)\(Self.format(values)))"
        case .assertFailed(let message, let values): return "ASSERT(\"\(message)\"\(Self.format(values)))"
        case .print(let message, let values): return "PRINT(\"\(message)\"\(Self.format(values)))"
        case .done: return "DONE"
        case .exception(let exception): return "EXCEPTION(\(exception))"
        }
    }

    static func format(_ values: [UInt64]) -> String {
        values.isEmpty ? "" : ", " + values.map { "0x" + String($0, radix: 16) }.joined(separator: ", ")
    }
}

/// An exception as the guest's handler saw it.
public struct GuestException: Equatable, CustomStringConvertible, Sendable {
    public let vector: UInt8
    public let errorCode: UInt64
    /// The return RIP on the exception frame (the faulting instruction for
    /// faults, the next instruction for traps and software interrupts).
    public let rip: UInt64
    /// CR2 at the time of the handler (the faulting address for #PF).
    public let cr2: UInt64
    /// Whether the guest had armed a resume address (an expected exception).
    public let expected: Bool

    public init(vector: UInt8, errorCode: UInt64, rip: UInt64, cr2: UInt64, expected: Bool) {
        self.vector = vector
        self.errorCode = errorCode
        self.rip = rip
        self.cr2 = cr2
        self.expected = expected
    }

    public var description: String {
        "\(Self.name(of: vector)) vector \(vector), error code 0x\(String(errorCode, radix: 16)), RIP 0x\(String(rip, radix: 16))"
            + (vector == 14 ? ", CR2 0x\(String(cr2, radix: 16))" : "")
    }

    /// Whether this is the exception `vector` with `errorCode`.
    public func matches(vector: UInt8, errorCode: UInt64) -> Bool {
        self.vector == vector && self.errorCode == errorCode
    }

    /// Vectors that push an error code.
    public static let vectorsWithErrorCode: Set<UInt8> = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]

    /// The mnemonic of an architectural exception vector.
    public static func name(of vector: UInt8) -> String {
        let names: [UInt8: String] = [
            0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
            10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
            19: "#XM", 20: "#VE", 21: "#CP",
        ]
        return names[vector] ?? "INT"
    }
}

/// The record a guest writes before a ucall. Layout (little-endian u64s):
/// kind at 0, value count at 8, values at 16..63 (six), message address at 64.
public enum UcallRecord {
    public static let size = 72
    public static let maximumValues = 6

    public enum Kind: UInt64, Sendable {
        case sync = 1, assertFailed = 2, print = 3, done = 4, exception = 5
    }

    public static let kindOffset: Int32 = 0
    public static let countOffset: Int32 = 8
    public static let valuesOffset: Int32 = 16
    public static let messageOffset: Int32 = 64

    /// Reads and decodes a record; throws when it lies outside guest memory or
    /// names an unknown kind.
    public static func decode(at address: UInt64, in memory: GuestAddressSpace) throws -> Ucall {
        let rawKind = try memory.load(UInt64.self, at: GuestAddress(address + UInt64(kindOffset)))
        let count = Int(min(try memory.load(UInt64.self, at: GuestAddress(address + UInt64(countOffset))), UInt64(maximumValues)))
        let values = try (0..<count).map { try memory.load(UInt64.self, at: GuestAddress(address + UInt64(valuesOffset) + UInt64(8 * $0))) }
        let messageAddress = try memory.load(UInt64.self, at: GuestAddress(address + UInt64(messageOffset)))
        let message = messageAddress == 0 ? "" : (try? memory.string(at: GuestAddress(messageAddress), limit: 1024)) ?? "<message at 0x\(String(messageAddress, radix: 16)) unreadable>"
        guard let kind = Kind(rawValue: rawKind) else { throw HarnessError.malformedUcall(address: address, kind: rawKind) }
        switch kind {
        case .sync: return .sync(stage: values.first ?? 0, values: Array(values.dropFirst()))
        case .assertFailed: return .assertFailed(message: message, values: values)
        case .print: return .print(message: message, values: values)
        case .done: return .done
        case .exception:
            guard values.count == 5 else { throw HarnessError.malformedUcall(address: address, kind: rawKind) }
            return .exception(GuestException(vector: UInt8(truncatingIfNeeded: values[0]), errorCode: values[1],
                                             rip: values[2], cr2: values[3], expected: values[4] != 0))
        }
    }
}
