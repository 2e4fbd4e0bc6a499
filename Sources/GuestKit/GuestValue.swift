/// A value a guest passes to its host: a register's content or a constant.
public enum GuestValue: Sendable, ExpressibleByIntegerLiteral {
    case register(Register64)
    case immediate(UInt64)

    public init(integerLiteral value: UInt64) { self = .immediate(value) }

    public static func reg(_ register: Register64) -> GuestValue { .register(register) }
}
