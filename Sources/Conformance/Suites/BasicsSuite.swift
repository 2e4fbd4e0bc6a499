import GuestMemory
import GuestKit
import KVM
import X86

/// Suite `basics`: the harness and KVM's plain guest execution, then exception
/// and software-event delivery through a legacy (non-FRED) IDT.
public enum BasicsSuite {
    public static let name = "basics"

    public static func tests() -> [ConformanceTest] {
        [realMode, longMode, ucallRoundTrip, invalidOpcode, pageFaultRead, pageFaultWrite,
         generalProtectionNonCanonical, generalProtectionSelector, preFaultMemory, preFaultDuringSlotDeletion, exitHypercall, dirtyLog, dirtyRing,
         guestDebugGeneralDetect]
            + softwareEvents
    }

    static let realMode = ConformanceTest(
        suite: name, name: "real_mode", summary: "a 16-bit guest does OUT to a port and halts"
    ) { context in
        let machine = try GuestMachine(kvm: context.kvm)
        // mov ax, 0x4b45 ; mov dx, 0x3f8 ; out dx, ax ; hlt
        try machine.loadRealMode(code: [0xB8, 0x45, 0x4B, 0xBA, 0xF8, 0x03, 0xEF, 0xF4])
        let first = try machine.runUntilExit()
        guard case .io(let io) = first else { throw machine.unexpected(first) }
        try context.expectEqual(io.direction, .out, "I/O direction")
        try context.expectEqualHex(io.port, 0x3F8, "port")
        try context.expectEqual(io.size, 2, "access size")
        try context.expectEqualHex(io.value, 0x4B45, "value written")
        let second = try machine.runUntilExit()
        guard case .halt = second else { throw machine.unexpected(second) }
        try context.expectEqualHex(try machine.vcpu.registers().rip, 0x1008, "RIP after HLT")
    }

    /// After the kernel's pre_fault_memory_test: all of RAM is mapped ahead
    /// of the guest, a range outside the slots is ENOENT, an unaligned one
    /// EINVAL, and the guest still runs (`kestrel run --prefault`).
    static let preFaultMemory = ConformanceTest(
        suite: name, name: "pre_fault_memory",
        summary: "KVM_PRE_FAULT_MEMORY maps a slot's RAM before the guest runs, refuses addresses outside the slots (ENOENT) and unaligned ranges (EINVAL)",
        requires: [.capability(.preFaultMemory)]
    ) { context in
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.vcpu.preFaultMemory(address: 0, size: machine.memorySize)
        try context.expectErrno(.noSuchFileOrDirectory, "pre-faulting 4 KiB at 4 GiB, outside every slot") {
            try machine.vcpu.preFaultMemory(address: 1 << 32, size: 4096)
        }
        try context.expectErrno(.invalidArgument, "pre-faulting an unaligned range") {
            try machine.vcpu.preFaultMemory(address: 0x800, size: 4096)
        }
        try machine.loadRealMode(code: [0xF4])
        let exit = try machine.runUntilExit()
        guard case .halt = exit else { throw machine.unexpected(exit) }
    }

    static let longMode = ConformanceTest(
        suite: name, name: "long_mode", summary: "a 64-bit guest runs with paging, sees CR0/CR4/EFER as set, computes"
    ) { context in
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rbx, .cr0)
        a.mov(.rsi, .cr4)
        a.mov(.rcx, UInt64(ModelSpecificRegister.efer.index))
        a.rdmsr()
        a.shl(.rdx, 32)
        a.or(.rax, .rdx)
        a.mov(.rdi, .rax)
        // Sum 1...1000 with a loop, and a 64-bit immediate round trip.
        a.mov(.rax, 0)
        a.mov(.rcx, 1000)
        let loop = a.here()
        a.add(.rax, .rcx)
        a.dec(.rcx)
        a.j(.notEqual, loop)
        a.mov(.r15, 0xFEDC_BA98_7654_3210)
        program.sync(stage: 1, .reg(.rbx), .reg(.rsi), .reg(.rdi), .reg(.rax), .reg(.r15))
        program.done()
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.loadLongMode(program)
        let values = try machine.expectSync(stage: 1)
        try context.expect(values[0] & ControlBits.cr0Paging != 0, "guest CR0 0x\(String(values[0], radix: 16)) lacks PG")
        try context.expect(values[1] & ControlBits.cr4PhysicalAddressExtension != 0, "guest CR4 lacks PAE")
        try context.expect(values[2] & ControlBits.eferLongModeActive != 0, "guest EFER 0x\(String(values[2], radix: 16)) lacks LMA")
        try context.expectEqual(values[3], 500_500, "sum of 1...1000 computed by the guest")
        try context.expectEqualHex(values[4], 0xFEDC_BA98_7654_3210, "64-bit immediate")
        try machine.expectDone()
    }

    static let ucallRoundTrip = ConformanceTest(
        suite: name, name: "ucall_round_trip", summary: "SYNC values, host-to-guest data, PRINT, guest assert pass, DONE"
    ) { context in
        let program = GuestProgram()
        let a = program.assembler
        let scratch = program.layout.scratchAddress
        program.sync(stage: 1, .reg(.rdi), .reg(.rsi))
        a.mov(.rbx, scratch)
        a.mov(.rax, .at(.rbx))
        program.print("guest read the host's value", .reg(.rax))
        program.assertEqual(.rax, 0x5A5A_0000_1234_5678, "guest sees the value the host wrote")
        a.inc(.rax)
        a.mov(.at(.rbx, 8), .rax)
        program.sync(stage: 2, .reg(.rax))
        program.done()
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.loadLongMode(program, arguments: [0x1111, 0x2222])
        try context.expectEqual(try machine.expectSync(stage: 1), [0x1111, 0x2222], "stage 1 values (entry arguments)")
        try machine.memory.store(UInt64(0x5A5A_0000_1234_5678), at: GuestAddress(scratch))
        var printed: [String] = []
        let next = try machine.nextUcall { printed.append($0) }
        guard case .sync(2, let values) = next else { throw GuestMachine.mismatch(next, expected: "SYNC(stage 2)") }
        try context.expectEqual(printed, ["guest read the host's value, 0x5a5a000012345678"], "PRINT received")
        try context.expectEqual(values, [0x5A5A_0000_1234_5679], "stage 2 value")
        try context.expectEqualHex(try machine.memory.load(UInt64.self, at: GuestAddress(scratch + 8)), 0x5A5A_0000_1234_5679, "guest write seen by host")
        try machine.expectDone()
        printed.forEach(context.note)
    }

    /// Runs `body` in a guest with a resume address armed, and checks that the
    /// IDT handler reported exactly `vector` and `errorCode` at the labelled RIP.
    static func expectException(_ context: TestContext, vector: UInt8, errorCode: UInt64, name: String,
                                faultAddress: UInt64? = nil, trap: Bool = false,
                                setup: (Assembler) -> Void = { _ in },
                                _ body: (GuestProgram) -> Void) throws {
        let program = GuestProgram()
        let a = program.assembler
        setup(a)
        let instruction = a.newLabel()
        let resume = program.expectingException {
            a.bind(instruction)
            body(program)
        }
        program.done()
        let machine = try GuestMachine(kvm: context.kvm)
        let guest = try machine.loadLongMode(program)
        let exception: GuestException
        do {
            exception = try machine.expectException()
        } catch let error as HarnessError where error.exitReason == .internalError {
            throw TestFailure("KVM could not deliver \(name) (vector \(vector)) through the guest IDT: \(error)")
        }
        let expectedRIP = trap ? try guest.address(of: resume) : try guest.address(of: instruction)
        let instructionRIP = try guest.address(of: instruction)
        if trap && exception.vector == 6 && exception.rip == instructionRIP {
            // #UD at the instruction: the CPU did not recognise it. KVM reflects
            // a #UD it cannot emulate, so this is the (possibly emulated) CPU.
            throw TestFailure("\(name) raised #UD (vector 6) at the instruction itself instead of reaching vector \(vector) "
                + "(\(exception)): the CPU did not execute it\n"
                + "diagnosis: the processor under KVM does not implement \(name); QEMU's TCG before 9.1 decodes ICEBP (F1) "
                + "as an invalid opcode (FINDINGS.md, section 2)")
        }
        try context.expectEqual(exception.vector, vector, "vector seen by the handler (\(exception))")
        try context.expectEqualHex(exception.errorCode, errorCode, "error code seen by the handler")
        try context.expectEqualHex(exception.rip, expectedRIP, "return RIP on the exception frame (\(trap ? "next instruction" : "faulting instruction"))")
        if let faultAddress { try context.expectEqualHex(exception.cr2, faultAddress, "CR2") }
        try machine.expectDone()
        context.note("handler saw \(exception)")
    }

    static let invalidOpcode = ConformanceTest(
        suite: name, name: "exception_ud", summary: "UD2 raises #UD (vector 6) at the instruction"
    ) { context in
        try expectException(context, vector: 6, errorCode: 0, name: "#UD") { $0.assembler.ud2() }
    }

    static let pageFaultRead = ConformanceTest(
        suite: name, name: "exception_pf_read", summary: "a read of an unmapped address raises #PF, error 0, CR2 = address"
    ) { context in
        let address = LongModeLayout().unmappedAddress
        try expectException(context, vector: 14, errorCode: 0, name: "#PF", faultAddress: address,
                            setup: { $0.mov(.rbx, address) }) {
            $0.assembler.mov(.rax, .at(.rbx))
        }
    }

    static let pageFaultWrite = ConformanceTest(
        suite: name, name: "exception_pf_write", summary: "a write to an unmapped address raises #PF, error 2 (W), CR2 = address"
    ) { context in
        let address = LongModeLayout().unmappedAddress + 0x1238
        try expectException(context, vector: 14, errorCode: 2, name: "#PF", faultAddress: address,
                            setup: { $0.mov(.rbx, address) }) {
            $0.assembler.mov(.at(.rbx), .rax)
        }
    }

    static let generalProtectionNonCanonical = ConformanceTest(
        suite: name, name: "exception_gp_noncanonical", summary: "a non-canonical access raises #GP(0)"
    ) { context in
        try expectException(context, vector: 13, errorCode: 0, name: "#GP",
                            setup: { $0.mov(.rbx, 0x8000_0000_0000_0000) }) {
            $0.assembler.mov(.rax, .at(.rbx))
        }
    }

    static let generalProtectionSelector = ConformanceTest(
        suite: name, name: "exception_gp_selector", summary: "loading DS with a selector past the GDT limit raises #GP(selector)"
    ) { context in
        try expectException(context, vector: 13, errorCode: 0x1238, name: "#GP",
                            setup: { $0.mov(.rax, 0x1238) }) {
            $0.assembler.emit(0x8E, 0xD8)  // mov ds, ax
        }
    }

    /// INT3, INT1/ICEBP and INT n executed at CPL 0 with a legacy IDT: each must
    /// reach its handler with the right vector and the next instruction's RIP.
    static let softwareEvents: [ConformanceTest] = [
        ("software_int3", "INT3", UInt8(3), { @Sendable (a: Assembler) in a.int3() }),
        ("software_icebp", "INT1/ICEBP", UInt8(1), { @Sendable (a: Assembler) in a.icebp() }),
        ("software_int_n", "INT $0x20", UInt8(0x20), { @Sendable (a: Assembler) in a.int(0x20) }),
    ].map { testName, instruction, vector, emit in
        ConformanceTest(
            suite: name, name: testName,
            summary: "\(instruction) at CPL 0 reaches IDT vector \(vector) with RIP after the instruction"
        ) { context in
            // The instruction is the first thing after its label, so the trap's
            // return RIP must be the resume label right after it.
            try expectException(context, vector: vector, errorCode: 0, name: instruction, trap: true) { emit($0.assembler) }
        }
    }
}
