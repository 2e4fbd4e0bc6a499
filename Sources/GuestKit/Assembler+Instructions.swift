/// Instructions. Each comment gives the encoding used (Intel SDM notation).
extension Assembler {
    // MARK: Moves

    /// `mov dst, src` (REX.W 89 /r).
    public func mov(_ destination: Register64, _ source: Register64) {
        registerInstruction(w: true, opcode: [0x89], reg: source.rawValue, rm: destination)
    }

    /// `mov dst, imm`: B8+r id when the value fits in 32 unsigned bits
    /// (zero-extends), REX.W C7 /0 id when it is a sign-extended 32-bit value,
    /// else REX.W B8+r io.
    public func mov(_ destination: Register64, _ immediate: UInt64) {
        if immediate <= UInt64(UInt32.max) {
            rex(w: false, rm: destination.rawValue)
            bytes.append(0xB8 + destination.low3)
            append(UInt32(immediate), 4)
        } else if Int32(exactly: Int64(bitPattern: immediate)) != nil {
            registerInstruction(w: true, opcode: [0xC7], reg: 0, rm: destination)
            append(UInt32(truncatingIfNeeded: immediate), 4)
        } else {
            rex(w: true, rm: destination.rawValue)
            bytes.append(0xB8 + destination.low3)
            append(immediate, 8)
        }
    }

    /// `mov dst, imm64` holding a label's absolute address (REX.W B8+r io).
    public func mov(_ destination: Register64, addressOf label: Label) {
        rex(w: true, rm: destination.rawValue)
        bytes.append(0xB8 + destination.low3)
        recordAbsolute(label)
    }

    /// `mov dst, qword [mem]` (REX.W 8B /r).
    public func mov(_ destination: Register64, _ memory: MemoryOperand) {
        memoryInstruction(w: true, opcode: [0x8B], reg: destination.rawValue, memory)
    }

    /// `mov qword [mem], src` (REX.W 89 /r).
    public func mov(_ memory: MemoryOperand, _ source: Register64) {
        memoryInstruction(w: true, opcode: [0x89], reg: source.rawValue, memory)
    }

    /// `mov qword [mem], simm32` (REX.W C7 /0 id).
    public func mov(_ memory: MemoryOperand, immediate: Int32) {
        memoryInstruction(w: true, opcode: [0xC7], reg: 0, memory, trailing: 4)
        append(immediate, 4)
    }

    /// `mov dword [mem], src32` (89 /r).
    public func movl(_ memory: MemoryOperand, _ source: Register64) {
        memoryInstruction(w: false, opcode: [0x89], reg: source.rawValue, memory)
    }

    /// `mov dst32, dword [mem]` (8B /r), zero-extending.
    public func movl(_ destination: Register64, _ memory: MemoryOperand) {
        memoryInstruction(w: false, opcode: [0x8B], reg: destination.rawValue, memory)
    }

    /// `mov byte [mem], src8` (REX 88 /r).
    public func movb(_ memory: MemoryOperand, _ source: Register64) {
        memoryInstruction(w: false, opcode: [0x88], reg: source.rawValue, memory, forceREX: source.rawValue >= 4)
    }

    /// `mov byte [mem], imm8` (C6 /0 ib).
    public func movb(_ memory: MemoryOperand, immediate: UInt8) {
        memoryInstruction(w: false, opcode: [0xC6], reg: 0, memory, trailing: 1)
        bytes.append(immediate)
    }

    /// `movzx dst, byte [mem]` (REX.W 0F B6 /r).
    public func movzxb(_ destination: Register64, _ memory: MemoryOperand) {
        memoryInstruction(w: true, opcode: [0x0F, 0xB6], reg: destination.rawValue, memory)
    }

    /// `lea dst, [mem]` (REX.W 8D /r).
    public func lea(_ destination: Register64, _ memory: MemoryOperand) {
        memoryInstruction(w: true, opcode: [0x8D], reg: destination.rawValue, memory)
    }

    // MARK: Arithmetic and logic

    /// The ALU group: opcode `op*8+1` for reg,reg and `/op` in 81/83 for immediates.
    public enum ArithmeticOperation: UInt8, Sendable {
        case add = 0, or = 1, and = 4, sub = 5, xor = 6, cmp = 7
    }

    /// `op dst, src` (REX.W 01/09/21/29/31/39 /r).
    public func arithmetic(_ operation: ArithmeticOperation, _ destination: Register64, _ source: Register64) {
        registerInstruction(w: true, opcode: [operation.rawValue << 3 | 1], reg: source.rawValue, rm: destination)
    }

    /// `op dst, simm` (REX.W 83 /op ib, or REX.W 81 /op id).
    public func arithmetic(_ operation: ArithmeticOperation, _ destination: Register64, _ immediate: Int32) {
        if let small = Int8(exactly: immediate) {
            registerInstruction(w: true, opcode: [0x83], reg: operation.rawValue, rm: destination)
            bytes.append(UInt8(bitPattern: small))
        } else {
            registerInstruction(w: true, opcode: [0x81], reg: operation.rawValue, rm: destination)
            append(immediate, 4)
        }
    }

    public func add(_ destination: Register64, _ source: Register64) { arithmetic(.add, destination, source) }
    public func add(_ destination: Register64, _ immediate: Int32) { arithmetic(.add, destination, immediate) }
    public func sub(_ destination: Register64, _ source: Register64) { arithmetic(.sub, destination, source) }
    public func sub(_ destination: Register64, _ immediate: Int32) { arithmetic(.sub, destination, immediate) }
    public func and(_ destination: Register64, _ source: Register64) { arithmetic(.and, destination, source) }
    public func and(_ destination: Register64, _ immediate: Int32) { arithmetic(.and, destination, immediate) }
    public func or(_ destination: Register64, _ source: Register64) { arithmetic(.or, destination, source) }
    public func or(_ destination: Register64, _ immediate: Int32) { arithmetic(.or, destination, immediate) }
    public func xor(_ destination: Register64, _ source: Register64) { arithmetic(.xor, destination, source) }
    public func cmp(_ left: Register64, _ right: Register64) { arithmetic(.cmp, left, right) }
    public func cmp(_ left: Register64, _ immediate: Int32) { arithmetic(.cmp, left, immediate) }

    /// `cmp byte [mem], imm8` (80 /7 ib).
    public func cmpb(_ memory: MemoryOperand, _ immediate: UInt8) {
        memoryInstruction(w: false, opcode: [0x80], reg: 7, memory, trailing: 1)
        bytes.append(immediate)
    }

    /// `test a, b` (REX.W 85 /r).
    public func test(_ left: Register64, _ right: Register64) {
        registerInstruction(w: true, opcode: [0x85], reg: right.rawValue, rm: left)
    }

    /// `inc reg` (REX.W FF /0).
    public func inc(_ register: Register64) { registerInstruction(w: true, opcode: [0xFF], reg: 0, rm: register) }
    /// `dec reg` (REX.W FF /1).
    public func dec(_ register: Register64) { registerInstruction(w: true, opcode: [0xFF], reg: 1, rm: register) }

    /// `shl reg, imm8` (REX.W C1 /4 ib).
    public func shl(_ register: Register64, _ count: UInt8) {
        registerInstruction(w: true, opcode: [0xC1], reg: 4, rm: register)
        bytes.append(count)
    }

    /// `shr reg, imm8` (REX.W C1 /5 ib).
    public func shr(_ register: Register64, _ count: UInt8) {
        registerInstruction(w: true, opcode: [0xC1], reg: 5, rm: register)
        bytes.append(count)
    }

    // MARK: Stack and control flow

    /// `push reg` (50+r, REX.B for r8-r15).
    public func push(_ register: Register64) {
        rex(w: false, rm: register.rawValue)
        bytes.append(0x50 + register.low3)
    }

    /// `pop reg` (58+r, REX.B for r8-r15).
    public func pop(_ register: Register64) {
        rex(w: false, rm: register.rawValue)
        bytes.append(0x58 + register.low3)
    }

    /// `push simm` (6A ib or 68 id), sign-extended to 64 bits.
    public func push(immediate: Int32) {
        if let small = Int8(exactly: immediate) {
            bytes.append(contentsOf: [0x6A, UInt8(bitPattern: small)])
        } else {
            bytes.append(0x68)
            append(immediate, 4)
        }
    }

    /// `pushfq` (9C).
    public func pushfq() { bytes.append(0x9C) }
    /// `popfq` (9D).
    public func popfq() { bytes.append(0x9D) }

    /// `call rel32` (E8 cd).
    public func call(_ label: Label) { branch([0xE8], to: label) }
    /// `call reg` (FF /2).
    public func call(_ register: Register64) { registerInstruction(w: false, opcode: [0xFF], reg: 2, rm: register) }
    /// `ret` (C3).
    public func ret() { bytes.append(0xC3) }
    /// `jmp rel32` (E9 cd).
    public func jmp(_ label: Label) { branch([0xE9], to: label) }
    /// `jmp reg` (FF /4).
    public func jmp(_ register: Register64) { registerInstruction(w: false, opcode: [0xFF], reg: 4, rm: register) }
    /// `jcc rel32` (0F 80+cc cd).
    public func j(_ condition: Condition, _ label: Label) { branch([0x0F, 0x80 | condition.rawValue], to: label) }

    // MARK: Port I/O

    /// `out dx, al|ax|eax` (EE, 66 EF, EF) for a size of 1, 2 or 4 bytes.
    public func outDX(size: Int) {
        switch size {
        case 1: bytes.append(0xEE)
        case 2: bytes.append(contentsOf: [0x66, 0xEF])
        default: bytes.append(0xEF)
        }
    }

    /// `in al|ax|eax, dx` (EC, 66 ED, ED) for a size of 1, 2 or 4 bytes.
    public func inDX(size: Int) {
        switch size {
        case 1: bytes.append(0xEC)
        case 2: bytes.append(contentsOf: [0x66, 0xED])
        default: bytes.append(0xED)
        }
    }

    /// `out imm8, al` (E6 ib).
    public func outb(port: UInt8) { bytes.append(contentsOf: [0xE6, port]) }
    /// `in al, imm8` (E4 ib).
    public func inb(port: UInt8) { bytes.append(contentsOf: [0xE4, port]) }

    // MARK: System

    /// `rdmsr` (0F 32): EDX:EAX = MSR[ECX].
    public func rdmsr() { bytes.append(contentsOf: [0x0F, 0x32]) }
    /// `wrmsr` (0F 30): MSR[ECX] = EDX:EAX.
    public func wrmsr() { bytes.append(contentsOf: [0x0F, 0x30]) }
    /// `xsetbv` (0F 01 D1): XCR[ECX] = EDX:EAX.
    public func xsetbv() { bytes.append(contentsOf: [0x0F, 0x01, 0xD1]) }
    /// `xrstors64 [mem]` (REX.W 0F C7 /3): restores, from the compacted image
    /// at `memory`, the components in EDX:EAX that XCR0 or IA32_XSS enables.
    public func xrstors64(_ memory: MemoryOperand) { memoryInstruction(w: true, opcode: [0x0F, 0xC7], reg: 3, memory) }
    /// `cpuid` (0F A2).
    public func cpuid() { bytes.append(contentsOf: [0x0F, 0xA2]) }
    /// `vmcall` (0F 01 C1): Intel's hypercall instruction.
    public func vmcall() { bytes.append(contentsOf: [0x0F, 0x01, 0xC1]) }
    /// `vmmcall` (0F 01 D9): AMD's hypercall instruction.
    public func vmmcall() { bytes.append(contentsOf: [0x0F, 0x01, 0xD9]) }
    /// `hlt` (F4).
    public func hlt() { bytes.append(0xF4) }
    /// `cli` (FA).
    public func cli() { bytes.append(0xFA) }
    /// `sti` (FB).
    public func sti() { bytes.append(0xFB) }
    /// `nop` (90).
    public func nop() { bytes.append(0x90) }
    /// KVM's forced-emulation prefix, `ud2` then "kvm" (0F 0B 6B 76 6D): with
    /// kvm.force_emulation_prefix set, KVM skips it and emulates the
    /// instruction that follows; without, the guest takes #UD.
    public func forcedEmulationPrefix() { bytes.append(contentsOf: [0x0F, 0x0B, 0x6B, 0x76, 0x6D]) }
    /// `ud2` (0F 0B): raises #UD.
    public func ud2() { bytes.append(contentsOf: [0x0F, 0x0B]) }
    /// `iretq` (REX.W CF).
    public func iretq() { bytes.append(contentsOf: [0x48, 0xCF]) }
    /// `int3` (CC): software breakpoint exception, vector 3.
    public func int3() { bytes.append(0xCC) }
    /// `int1`/`icebp` (F1): privileged software exception, vector 1.
    public func icebp() { bytes.append(0xF1) }
    /// `int imm8` (CD ib): software interrupt.
    public func int(_ vector: UInt8) { bytes.append(contentsOf: [0xCD, vector]) }
    /// `erets` (F2 0F 01 CA): FRED return to the same ring (supervisor).
    public func erets() { bytes.append(contentsOf: [0xF2, 0x0F, 0x01, 0xCA]) }
    /// `eretu` (F3 0F 01 CA): FRED return to user mode.
    public func eretu() { bytes.append(contentsOf: [0xF3, 0x0F, 0x01, 0xCA]) }
    /// `rep stosb` (F3 AA): fill RCX bytes at RDI with AL.
    public func repStosb() { bytes.append(contentsOf: [0xF3, 0xAA]) }

    /// `repe scasb` (F3 AE): compare AL with the bytes at RDI while they are
    /// equal, for at most RCX bytes. After a mismatch ZF is clear and RDI is one
    /// past the differing byte. RCX must not be 0 (the flags would be stale).
    public func repeScasb() { bytes.append(contentsOf: [0xF3, 0xAE]) }

    /// `mov reg, crN` (0F 20 /r, REX.R for CR8).
    public func mov(_ destination: Register64, _ control: ControlRegister) { specialMove(0x20, control.rawValue, destination) }
    /// `mov crN, reg` (0F 22 /r, REX.R for CR8).
    public func mov(_ control: ControlRegister, _ source: Register64) { specialMove(0x22, control.rawValue, source) }
    /// `mov reg, drN` (0F 21 /r).
    public func mov(_ destination: Register64, _ debug: DebugRegister) { specialMove(0x21, debug.rawValue, destination) }
    /// `mov drN, reg` (0F 23 /r).
    public func mov(_ debug: DebugRegister, _ source: Register64) { specialMove(0x23, debug.rawValue, source) }

    /// MOV to or from a control or debug register: 0F `opcode` /r with the
    /// special register in ModRM.reg (REX.R above 7) and the general one in r/m.
    private func specialMove(_ opcode: UInt8, _ special: UInt8, _ general: Register64) {
        rex(w: false, reg: special, rm: general.rawValue)
        bytes.append(contentsOf: [0x0F, opcode])
        modrm(3, special, general.low3)
    }

    /// `lgdt [mem]` (0F 01 /2).
    public func lgdt(_ memory: MemoryOperand) { memoryInstruction(w: false, opcode: [0x0F, 0x01], reg: 2, memory) }
    /// `lidt [mem]` (0F 01 /3).
    public func lidt(_ memory: MemoryOperand) { memoryInstruction(w: false, opcode: [0x0F, 0x01], reg: 3, memory) }
}
