/// The few AArch64 instructions the realm suite's guests use, encoded by
/// hand (Arm ARM, A64 base instructions). Each is one little-endian word.
enum ARM64Instruction {
    /// MOVZ Xd, #imm16, LSL #(16 * shift).
    static func movz(_ register: UInt32, _ immediate: UInt16, shift: UInt32 = 0) -> UInt32 {
        0xD280_0000 | shift << 21 | UInt32(immediate) << 5 | register
    }

    /// MOVK Xd, #imm16, LSL #(16 * shift).
    static func movk(_ register: UInt32, _ immediate: UInt16, shift: UInt32) -> UInt32 {
        0xF280_0000 | shift << 21 | UInt32(immediate) << 5 | register
    }

    /// Xd = a 64-bit constant (MOVZ, then MOVK for each non-zero half-word).
    static func move(_ register: UInt32, _ value: UInt64) -> [UInt32] {
        var code = [movz(register, UInt16(truncatingIfNeeded: value))]
        for shift in 1..<4 {
            let part = UInt16(truncatingIfNeeded: value >> (16 * UInt64(shift)))
            if part != 0 { code.append(movk(register, part, shift: UInt32(shift))) }
        }
        return code
    }

    /// LDR Xt, [Xn] and STR Xt, [Xn] (unsigned offset 0).
    static func load(_ target: UInt32, from base: UInt32) -> UInt32 { 0xF940_0000 | base << 5 | target }
    static func store(_ source: UInt32, to base: UInt32) -> UInt32 { 0xF900_0000 | base << 5 | source }

    /// SMC #0: a realm's PSCI and RSI conduit.
    static let smc: UInt32 = 0xD400_0003
    /// B . (a branch to itself): the guest parks.
    static let branchToSelf: UInt32 = 0x1400_0000

    static func bytes(_ code: [UInt32]) -> [UInt8] { code.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }
}
