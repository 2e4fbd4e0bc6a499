import Testing
@testable import GuestKit

/// Encodings checked against the Intel SDM forms (byte sequences as GNU as
/// produces them for the same operand forms).
@Suite(.timeLimit(.minutes(5))) struct AssemblerTests {
    func bytes(_ build: (Assembler) -> Void) throws -> [UInt8] {
        let assembler = Assembler(origin: 0x10000)
        build(assembler)
        return try assembler.assemble()
    }

    @Test func registerMoves() throws {
        #expect(try bytes { $0.mov(.rax, .rbx) } == [0x48, 0x89, 0xD8])
        #expect(try bytes { $0.mov(.r8, .rax) } == [0x49, 0x89, 0xC0])
        #expect(try bytes { $0.mov(.rax, .r15) } == [0x4C, 0x89, 0xF8])
    }

    @Test func immediateMoves() throws {
        #expect(try bytes { $0.mov(.rax, 0x1234) } == [0xB8, 0x34, 0x12, 0x00, 0x00])
        #expect(try bytes { $0.mov(.r9, 0x1234) } == [0x41, 0xB9, 0x34, 0x12, 0x00, 0x00])
        #expect(try bytes { $0.mov(.rax, 0xFEDC_BA98_7654_3210) } == [0x48, 0xB8, 0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE])
        #expect(try bytes { $0.mov(.rax, UInt64.max) } == [0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test func memoryOperands() throws {
        #expect(try bytes { $0.mov(.rax, .at(.rbx)) } == [0x48, 0x8B, 0x03])
        #expect(try bytes { $0.mov(.rax, .at(.rsp, 24)) } == [0x48, 0x8B, 0x44, 0x24, 0x18])
        #expect(try bytes { $0.mov(.rax, .at(.rbp)) } == [0x48, 0x8B, 0x45, 0x00])
        #expect(try bytes { $0.mov(.rax, .at(.r12)) } == [0x49, 0x8B, 0x04, 0x24])
        #expect(try bytes { $0.mov(.rax, .at(.r13)) } == [0x49, 0x8B, 0x45, 0x00])
        #expect(try bytes { $0.mov(.at(.r11, 16), .rax) } == [0x49, 0x89, 0x43, 0x10])
        #expect(try bytes { $0.mov(.at(.rbx, 0x1000), .rax) } == [0x48, 0x89, 0x83, 0x00, 0x10, 0x00, 0x00])
        #expect(try bytes { $0.mov(.at(.rbx, -8), .rax) } == [0x48, 0x89, 0x43, 0xF8])
        #expect(try bytes { $0.mov(.at(.rax), immediate: 0) } == [0x48, 0xC7, 0x00, 0x00, 0x00, 0x00, 0x00])
        #expect(try bytes { $0.movzxb(.rax, .at(.rbx)) } == [0x48, 0x0F, 0xB6, 0x03])
        #expect(try bytes { $0.movb(.at(.rdi), .rsi) } == [0x40, 0x88, 0x37])
        #expect(try bytes { $0.movb(.at(.rdi), .rax) } == [0x88, 0x07])
        #expect(try bytes { $0.movl(.at(.rdi, 4), .rax) } == [0x89, 0x47, 0x04])
        #expect(try bytes { $0.cmpb(.at(.rbx), 0xAA) } == [0x80, 0x3B, 0xAA])
        #expect(try bytes { $0.lidt(.at(.rax)) } == [0x0F, 0x01, 0x18])
        #expect(try bytes { $0.lgdt(.at(.rax)) } == [0x0F, 0x01, 0x10])
    }

    @Test func arithmetic() throws {
        #expect(try bytes { $0.add(.rax, .rcx) } == [0x48, 0x01, 0xC8])
        #expect(try bytes { $0.sub(.rsp, 16) } == [0x48, 0x83, 0xEC, 0x10])
        #expect(try bytes { $0.add(.rsp, 16) } == [0x48, 0x83, 0xC4, 0x10])
        #expect(try bytes { $0.cmp(.rax, 0xAA) } == [0x48, 0x81, 0xF8, 0xAA, 0x00, 0x00, 0x00])
        #expect(try bytes { $0.cmp(.rax, .rbx) } == [0x48, 0x39, 0xD8])
        #expect(try bytes { $0.xor(.r11, .r11) } == [0x4D, 0x31, 0xDB])
        #expect(try bytes { $0.and(.rax, -4096) } == [0x48, 0x81, 0xE0, 0x00, 0xF0, 0xFF, 0xFF])
        #expect(try bytes { $0.test(.rdx, .rdx) } == [0x48, 0x85, 0xD2])
        #expect(try bytes { $0.inc(.rbx) } == [0x48, 0xFF, 0xC3])
        #expect(try bytes { $0.dec(.rcx) } == [0x48, 0xFF, 0xC9])
        #expect(try bytes { $0.shl(.rdx, 32) } == [0x48, 0xC1, 0xE2, 0x20])
        #expect(try bytes { $0.shr(.rax, 12) } == [0x48, 0xC1, 0xE8, 0x0C])
    }

    @Test func stackAndCalls() throws {
        #expect(try bytes { $0.push(.rax) } == [0x50])
        #expect(try bytes { $0.push(.r11) } == [0x41, 0x53])
        #expect(try bytes { $0.pop(.r11) } == [0x41, 0x5B])
        #expect(try bytes { $0.push(immediate: 0) } == [0x6A, 0x00])
        #expect(try bytes { $0.push(immediate: 200) } == [0x68, 0xC8, 0x00, 0x00, 0x00])
        #expect(try bytes { $0.call(.rax) } == [0xFF, 0xD0])
        #expect(try bytes { $0.jmp(.r8) } == [0x41, 0xFF, 0xE0])
        #expect(try bytes { $0.ret() } == [0xC3])
        #expect(try bytes { $0.pushfq(); $0.popfq() } == [0x9C, 0x9D])
    }

    @Test func branchesToLabels() throws {
        #expect(try bytes { a in let l = a.here(); a.nop(); a.jmp(l) } == [0x90, 0xE9, 0xFA, 0xFF, 0xFF, 0xFF])
        #expect(try bytes { a in let l = a.newLabel(); a.j(.notEqual, l); a.bind(l) } == [0x0F, 0x85, 0, 0, 0, 0])
        #expect(try bytes { a in let l = a.newLabel(); a.call(l); a.nop(); a.bind(l); a.ret() } == [0xE8, 0x01, 0, 0, 0, 0x90, 0xC3])
        #expect(try bytes { a in let l = a.newLabel(); a.j(.equal, l); a.hlt(); a.bind(l) } == [0x0F, 0x84, 0x01, 0, 0, 0, 0xF4])
    }

    @Test func ripRelativeAndAbsoluteAddresses() throws {
        let assembler = Assembler(origin: 0x10000)
        let data = assembler.newLabel()
        assembler.lea(.rax, .rip(data))
        assembler.mov(.rbx, addressOf: data)
        assembler.bind(data)
        assembler.quad(0x55)
        let code = try assembler.assemble()
        // lea rax, [rip+10]: the label is 10 bytes past the end of the lea (mov imm64 is 10 bytes).
        #expect(Array(code[0..<7]) == [0x48, 0x8D, 0x05, 0x0A, 0x00, 0x00, 0x00])
        #expect(Array(code[7..<17]) == [0x48, 0xBB, 0x11, 0x00, 0x01, 0, 0, 0, 0, 0])
        #expect(try assembler.address(of: data) == 0x10011)
    }

    @Test func systemInstructions() throws {
        #expect(try bytes { $0.outDX(size: 4) } == [0xEF])
        #expect(try bytes { $0.outDX(size: 2) } == [0x66, 0xEF])
        #expect(try bytes { $0.outDX(size: 1) } == [0xEE])
        #expect(try bytes { $0.inDX(size: 1) } == [0xEC])
        #expect(try bytes { $0.outb(port: 0x80) } == [0xE6, 0x80])
        #expect(try bytes { $0.rdmsr(); $0.wrmsr(); $0.cpuid() } == [0x0F, 0x32, 0x0F, 0x30, 0x0F, 0xA2])
        #expect(try bytes { $0.xsetbv() } == [0x0F, 0x01, 0xD1])
        // xrstors64 [rdi]: REX.W 0F C7, ModRM mod 00 reg 3 rm rdi; [r12] needs a SIB byte.
        #expect(try bytes { $0.xrstors64(.at(.rdi)) } == [0x48, 0x0F, 0xC7, 0x1F])
        #expect(try bytes { $0.xrstors64(.at(.r12)) } == [0x49, 0x0F, 0xC7, 0x1C, 0x24])
        #expect(try bytes { $0.iretq() } == [0x48, 0xCF])
        #expect(try bytes { $0.int3(); $0.icebp(); $0.int(0x20) } == [0xCC, 0xF1, 0xCD, 0x20])
        #expect(try bytes { $0.hlt(); $0.ud2(); $0.cli(); $0.sti() } == [0xF4, 0x0F, 0x0B, 0xFA, 0xFB])
        #expect(try bytes { $0.mov(.rax, .cr2) } == [0x0F, 0x20, 0xD0])
        #expect(try bytes { $0.mov(.cr4, .rax) } == [0x0F, 0x22, 0xE0])
        #expect(try bytes { $0.mov(.cr8, .rax) } == [0x44, 0x0F, 0x22, 0xC0])
        #expect(try bytes { $0.mov(.rax, .dr0) } == [0x0F, 0x21, 0xC0])  // the kernel's debug_regs selftest's "mov %dr0, %rax"
        #expect(try bytes { $0.mov(.dr7, .rcx) } == [0x0F, 0x23, 0xF9])
        #expect(try bytes { $0.mov(.r9, .dr6) } == [0x41, 0x0F, 0x21, 0xF1])
        #expect(try bytes { $0.repStosb() } == [0xF3, 0xAA])
        #expect(try bytes { $0.forcedEmulationPrefix() } == [0x0F, 0x0B, 0x6B, 0x76, 0x6D])  // KVM_FEP in the kernel's selftests
        #expect(try bytes { $0.repeScasb() } == [0xF3, 0xAE])
        #expect(try bytes { $0.vmcall(); $0.vmmcall() } == [0x0F, 0x01, 0xC1, 0x0F, 0x01, 0xD9])
        #expect(try bytes { $0.erets() } == [0xF2, 0x0F, 0x01, 0xCA])
        #expect(try bytes { $0.eretu() } == [0xF3, 0x0F, 0x01, 0xCA])
    }

    @Test func stringsArePooledAfterTheCode() throws {
        let assembler = Assembler(origin: 0)
        let first = assembler.string("hi")
        #expect(assembler.string("hi") == first)
        assembler.lea(.rdi, .rip(first))
        let code = try assembler.assemble()
        #expect(Array(code.suffix(3)) == Array("hi".utf8) + [0])
        #expect(try assembler.address(of: first) == 7)
    }

    @Test func labelMistakesAreErrors() {
        let unbound = Assembler(origin: 0)
        unbound.jmp(unbound.newLabel())
        #expect(throws: AssemblerError.self) { try unbound.assemble() }
        let twice = Assembler(origin: 0)
        let label = twice.here()
        twice.bind(label)
        #expect(throws: AssemblerError.self) { try twice.assemble() }
    }

    @Test func interruptGateEncoding() {
        #expect(DescriptorTables.interruptGate(handler: 0x1234_5678_9ABC_DEF0, selector: 8)
                == [0xF0, 0xDE, 0x08, 0x00, 0x00, 0x8E, 0xBC, 0x9A, 0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0])
        #expect(PageTables.identityPageDirectory(base: 1 << 30)[1] == (1 << 30) + (1 << 21) | 0x83)
    }
}
