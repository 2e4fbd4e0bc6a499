import Foundation
import GuestMemory
import KVM
import Testing
@testable import GuestKit

@Suite(.timeLimit(.minutes(5))) struct UcallDecodingTests {
    func memory() throws -> GuestAddressSpace {
        let memory = GuestAddressSpace()
        try memory.add(MemoryMapping(anonymousSize: 0x10000), at: 0)
        return memory
    }

    func writeRecord(_ memory: GuestAddressSpace, kind: UInt64, values: [UInt64], message: UInt64 = 0) throws {
        try memory.store(kind, at: 0x1000)
        try memory.store(UInt64(values.count), at: 0x1008)
        for (index, value) in values.enumerated() { try memory.store(value, at: 0x1010 + UInt64(8 * index)) }
        try memory.store(message, at: 0x1040)
    }

    @Test func decodesEachKind() throws {
        let memory = try memory()
        try memory.write(Array("boom".utf8) + [0], at: 0x2000)
        try writeRecord(memory, kind: 1, values: [3, 10, 20])
        #expect(try UcallRecord.decode(at: 0x1000, in: memory) == .sync(stage: 3, values: [10, 20]))
        try writeRecord(memory, kind: 2, values: [1, 2], message: 0x2000)
        #expect(try UcallRecord.decode(at: 0x1000, in: memory) == .assertFailed(message: "boom", values: [1, 2]))
        try writeRecord(memory, kind: 4, values: [])
        #expect(try UcallRecord.decode(at: 0x1000, in: memory) == .done)
        try writeRecord(memory, kind: 5, values: [14, 2, 0x10010, 0xdead000, 1])
        #expect(try UcallRecord.decode(at: 0x1000, in: memory)
                == .exception(GuestException(vector: 14, errorCode: 2, rip: 0x10010, cr2: 0xdead000, expected: true)))
    }

    @Test func malformedRecordsAreErrors() throws {
        let memory = try memory()
        try writeRecord(memory, kind: 99, values: [])
        #expect(throws: HarnessError.self) { try UcallRecord.decode(at: 0x1000, in: memory) }
        #expect(throws: GuestMemoryError.self) { try UcallRecord.decode(at: 0xFFF8, in: memory) }
        try writeRecord(memory, kind: 3, values: [], message: 0x9999_0000)
        #expect(try UcallRecord.decode(at: 0x1000, in: memory) == .print(message: "<message at 0x99990000 unreadable>", values: []))
    }
}


/// The harness against this host's KVM.
@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct GuestMachineTests {
    @Test func syncValuesAndRegistersSurviveUcalls() throws {
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rax, 0xA1)
        a.mov(.rdx, 0xD1)
        a.mov(.r11, 0xB1)
        program.sync(stage: 1, .reg(.rax), .reg(.rdx), .reg(.r11), 42)
        program.sync(stage: 2, .reg(.rax), .reg(.rdx), .reg(.r11))
        program.done()
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        #expect(try machine.expectSync(stage: 1) == [0xA1, 0xD1, 0xB1, 42])
        #expect(try machine.expectSync(stage: 2) == [0xA1, 0xD1, 0xB1])
        try machine.expectDone()
    }

    @Test func guestAssertionBecomesAnError() throws {
        let program = GuestProgram()
        program.assembler.mov(.rcx, 5)
        program.assertEqual(.rcx, 6, "rcx holds six")
        program.done()
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        do {
            try machine.expectDone()
            Issue.record("a failed guest assertion was not reported")
        } catch let error as HarnessError {
            guard case .guestAssertion(let message, let values) = error else { Issue.record("got \(error)"); return }
            #expect(message.hasPrefix("rcx holds six ["))
            #expect(values == [5, 6])
            #expect(error.description.contains("got 0x5, expected 0x6"))
        }
    }

    @Test func unexpectedExceptionIsReported() throws {
        let program = GuestProgram()
        program.assembler.ud2()
        program.done()
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        let exception = try machine.expectException()
        #expect(exception.vector == 6 && !exception.expected)
        #expect(exception.rip == program.layout.codeAddress)
    }

    @Test func watchdogStopsAGuestThatMakesNoProgress() throws {
        let program = GuestProgram()
        let loop = program.assembler.here()
        program.assembler.jmp(loop)
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        let start = Date()
        do {
            _ = try machine.runUntilUcall(timeout: 0.3)
            Issue.record("an endless guest loop returned a ucall")
        } catch let error as HarnessError {
            guard case .timeout(_, let rip) = error else { Issue.record("got \(error)"); return }
            #expect(rip == program.layout.codeAddress)
        }
        // A liveness bound, not a speed goal: alone this takes about 0.3 s, but
        // on a loaded nested host (the Linux boot test running beside it) a
        // signal can take seconds to pull the vCPU out of KVM_RUN.
        #expect(Date().timeIntervalSince(start) < 60)
        // The vCPU is usable again after the watchdog fired.
        #expect(!machine.vcpu.immediateExit)
    }

    @Test func stallWatchEndsARunStuckOnOneInstruction() throws {
        let program = GuestProgram()
        let loop = program.assembler.here()
        program.assembler.jmp(loop)  // RIP never leaves this instruction
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        let stall = GuestMachine.StallWatch(address: program.layout.codeAddress, seconds: 0.2)
        do {
            _ = try machine.runUntilUcall(timeout: 60, stall: stall)
            Issue.record("an endless guest loop returned a ucall")
        } catch HarnessError.stalled(let rip, let seconds) {
            #expect(rip == program.layout.codeAddress)
            #expect(seconds >= 0.2)
        }
        #expect(!machine.vcpu.immediateExit)
    }

    @Test func stallWatchLetsAGuestPastTheAddressRun() throws {
        // The watched instruction comes first; then the guest spins elsewhere
        // for far longer than the watch's seconds on any host, and makes its
        // ucall. Finding RIP away from the address must reset the watch.
        let program = GuestProgram()
        let site = program.assembler.here()
        program.assembler.nop()
        program.assembler.mov(.rcx, 500_000)
        let loop = program.assembler.here()
        program.assembler.dec(.rcx)
        program.assembler.j(.notEqual, loop)
        program.sync(stage: 1, .register(.rcx))
        program.done()
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        let stall = GuestMachine.StallWatch(address: try program.assembler.address(of: site), seconds: 0.05)
        #expect(try machine.expectSync(stage: 1, timeout: 120, stall: stall) == [0])
        try machine.expectDone()
    }

    @Test func unexpectedPortIsAnUnexpectedExit() throws {
        let program = GuestProgram()
        program.assembler.outb(port: 0x80)
        program.done()
        let machine = try GuestMachine(kvm: KVMSystem())
        try machine.loadLongMode(program)
        #expect(throws: HarnessError.self) { try machine.runUntilUcall() }
    }
}

@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct GuestMachineLoadingTests {
    @Test func layoutAndMachineSizesMustAgree() throws {
        let machine = try GuestMachine(kvm: KVMSystem(), memorySize: 2 << 20)
        let program = GuestProgram(layout: LongModeLayout(memorySize: 4 << 20))
        program.done()
        #expect(throws: KVMUsageError.self) { try machine.loadLongMode(program) }
    }
}
