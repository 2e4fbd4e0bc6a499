/// IA32_FRED_CONFIG: bits 63:12 the entry point page (ring 3 events enter at
/// the base, ring 0 events at base + 256), bits 1:0 the current stack level.
public struct FREDConfiguration: Hashable, Sendable {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public init(entryPoint: UInt64, currentStackLevel: UInt8 = 0) {
        rawValue = entryPoint & ~UInt64(0xFFF) | UInt64(currentStackLevel & 0x3)
    }

    /// The page-aligned entry point (bits 63:12).
    public var entryPoint: UInt64 { rawValue & ~UInt64(0xFFF) }
    /// Where events from ring 0 enter.
    public var ringZeroEntry: UInt64 { entryPoint + 256 }
    /// Bits 1:0.
    public var currentStackLevel: UInt8 { UInt8(rawValue & 0x3) }
}

/// IA32_FRED_STKLVLS: two bits per exception vector 0-31, the stack level the
/// event is delivered on.
public struct FREDStackLevels: Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64 = 0) { self.rawValue = rawValue }

    public func level(forVector vector: Int) -> UInt8 {
        precondition((0..<32).contains(vector), "FRED stack levels cover vectors 0-31")
        return UInt8((rawValue >> UInt64(2 * vector)) & 0x3)
    }

    public mutating func setLevel(_ level: UInt8, forVector vector: Int) {
        precondition((0..<32).contains(vector), "FRED stack levels cover vectors 0-31")
        let shift = UInt64(2 * vector)
        rawValue = rawValue & ~(0x3 << shift) | UInt64(level & 0x3) << shift
    }
}

/// FRED event types (bits 51:48 of the frame's SS qword).
public enum FREDEventType: UInt8, Sendable, CustomStringConvertible {
    case externalInterrupt = 0
    case nonMaskableInterrupt = 2
    case hardwareException = 3
    case softwareInterrupt = 4
    case privilegedSoftwareException = 5
    case softwareException = 6
    case other = 7

    public var description: String {
        switch self {
        case .externalInterrupt: return "external interrupt"
        case .nonMaskableInterrupt: return "NMI"
        case .hardwareException: return "hardware exception"
        case .softwareInterrupt: return "software interrupt (INT n)"
        case .privilegedSoftwareException: return "privileged software exception (INT1)"
        case .softwareException: return "software exception (INT3, INTO)"
        case .other: return "other event (SYSCALL, SYSENTER)"
        }
    }
}

/// The 64-byte frame FRED pushes, lowest address first: error code, RIP, CS,
/// RFLAGS, RSP, SS, event data, reserved.
public struct FREDFrame: Hashable, Sendable {
    public static let size = 64

    public var errorCode: UInt64
    public var rip: UInt64
    public var csQword: UInt64
    public var rflags: UInt64
    public var rsp: UInt64
    public var ssQword: UInt64
    public var eventData: UInt64

    /// The number of qwords in a frame (the last is reserved).
    public static let qwordCount = size / 8

    /// Decodes the eight qwords of a frame, or nil when `qwords` is not exactly
    /// eight long.
    public init?(qwords: [UInt64]) {
        guard qwords.count == Self.qwordCount else { return nil }
        errorCode = qwords[0]
        rip = qwords[1]
        csQword = qwords[2]
        rflags = qwords[3]
        rsp = qwords[4]
        ssQword = qwords[5]
        eventData = qwords[6]
    }

    /// Bits 39:32 of the SS qword.
    public var vector: UInt8 { UInt8(truncatingIfNeeded: ssQword >> 32) }
    /// Bits 51:48 of the SS qword, raw.
    public var rawEventType: UInt8 { UInt8((ssQword >> 48) & 0xF) }
    public var eventType: FREDEventType? { FREDEventType(rawValue: rawEventType) }
    /// Bit 58: the event occurred during event delivery.
    public var isNested: Bool { ssQword & (1 << 58) != 0 }
    /// Bits 63:60: length of the instruction that caused a software event.
    public var instructionLength: UInt8 { UInt8(ssQword >> 60) }
}
