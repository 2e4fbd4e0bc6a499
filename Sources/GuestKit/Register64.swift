/// The sixteen 64-bit general-purpose registers, numbered as in ModRM/REX.
public enum Register64: UInt8, CaseIterable, Sendable {
    case rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi
    case r8, r9, r10, r11, r12, r13, r14, r15

    /// The low three bits that go into ModRM or the opcode.
    var low3: UInt8 { rawValue & 7 }
    /// Whether REX.R/X/B must carry the fourth bit.
    var isExtended: Bool { rawValue >= 8 }
}

/// Control registers that MOV to/from CR can name.
public enum ControlRegister: UInt8, Sendable {
    case cr0 = 0, cr2 = 2, cr3 = 3, cr4 = 4, cr8 = 8
}

/// Debug registers that MOV to/from DR can name.
public enum DebugRegister: UInt8, Sendable {
    case dr0 = 0, dr1 = 1, dr2 = 2, dr3 = 3, dr6 = 6, dr7 = 7
}

/// Jcc condition codes (the low nibble of 0F 8x).
public enum Condition: UInt8, Sendable {
    case overflow = 0x0, notOverflow = 0x1
    case below = 0x2, aboveOrEqual = 0x3
    case equal = 0x4, notEqual = 0x5
    case belowOrEqual = 0x6, above = 0x7
    case sign = 0x8, notSign = 0x9
    case less = 0xC, greaterOrEqual = 0xD
    case lessOrEqual = 0xE, greater = 0xF
}

/// A position in assembled code, bound once with `Assembler.bind`.
public struct Label: Hashable, Sendable {
    let id: Int
}

/// A memory operand: `[base + displacement]` or `[rip + label]`.
public struct MemoryOperand: Sendable {
    enum Base: Sendable {
        case register(Register64)
        case ripRelative(Label)
    }

    let base: Base
    let displacement: Int32

    /// `[base + displacement]`.
    public static func at(_ base: Register64, _ displacement: Int32 = 0) -> MemoryOperand {
        MemoryOperand(base: .register(base), displacement: displacement)
    }

    /// `[rip + label]`: the label's address, position-independent.
    public static func rip(_ label: Label) -> MemoryOperand {
        MemoryOperand(base: .ripRelative(label), displacement: 0)
    }
}

/// Assembly that cannot be completed (unbound or twice-bound labels, jumps out of range).
public struct AssemblerError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}
