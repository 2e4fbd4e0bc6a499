import CKVM
import Glibc
import Testing
@testable import KVM

/// Simulated run areas: every staged exit decodes to what was staged, answers
/// land where KVM reads them, and a payload used after the next run stops the
/// program instead of touching another exit's data.
@Suite(.timeLimit(.minutes(5))) struct RunAreaTests {
    @Test func stagedExitsDecodeToWhatWasStaged() throws {
        let area = RunArea.simulated()
        guard case .io(let io) = area.simulate(.io(direction: .out, port: 0x3F8, size: 1, data: [0x41, 0x42])) else {
            Issue.record("not an I/O exit"); return
        }
        #expect(io.port == 0x3F8 && io.count == 2 && io.direction == .out && Array(io.data) == [0x41, 0x42])

        guard case .mmio(let mmio) = area.simulate(.mmio(address: 0xD000_0000, isWrite: false, data: [0, 0, 0, 0])) else {
            Issue.record("not an MMIO exit"); return
        }
        mmio.data.storeBytes(of: UInt32(0xCAFE_F00D), as: UInt32.self)
        #expect(area.run.pointee.exit.mmio.len == 4 && mmio.address == 0xD000_0000 && !mmio.isWrite)
        #expect(withUnsafeBytes(of: area.run.pointee.exit.mmio.data) { $0.load(as: UInt32.self) } == 0xCAFE_F00D)

        guard case .systemEvent(let event) = area.simulate(.systemEvent(type: .crash, data: [7])) else {
            Issue.record("not a system event"); return
        }
        #expect(event.type == .crash && event.data == [7] && event.description == "KVM_SYSTEM_EVENT_CRASH")

        guard case .memoryFault(let fault) = area.simulate(.memoryFault(flags: .private, address: 0x1000, size: 0x1000)) else {
            Issue.record("not a memory fault"); return
        }
        #expect(fault == MemoryFault(flags: .private, guestPhysicalAddress: 0x1000, size: 0x1000))

        guard case .hypercall(let call) = area.simulate(.hypercall(number: 12, arguments: [1, 2, 3])) else {
            Issue.record("not a hypercall"); return
        }
        #expect(call.number == 12 && call.arguments.prefix(3) == [1, 2, 3])
        call.setReturnValue(99)
        #expect(area.run.pointee.exit.hypercall.ret == 99)

        guard case .snpRequestCertificates(let request) = area.simulate(.snpRequestCertificates(address: 0x2000, pages: 1)) else {
            Issue.record("not a certificate request"); return
        }
        request.respond(.bufferTooSmall(pagesNeeded: 3))
        #expect(request.returnCode == 28 && request.pageCount == 3)  // ENOSPC and the pages needed
        request.respond(.busy)
        #expect(request.returnCode == 11)  // EAGAIN

        #expect(area.simulate(.failEntry(hardwareReason: 0x21, cpu: 1)).description.contains("0x21 on cpu 1"))
        guard case .internalError(let error) = area.simulate(.internalError(suberror: 3, data: [5])) else {
            Issue.record("not an internal error"); return
        }
        #expect(error.kind == .deliveryEvent && error.data == [5])
        guard case .halt = area.simulate(.bare(.halt)) else { Issue.record("not HLT"); return }
        guard case .unrecognized(let reason) = area.simulate(.bare(ExitReason(rawValue: 200))) else { Issue.record("decoded 200"); return }
        #expect(reason.rawValue == 200)
    }

    @Test func legacyCertificateRequestsAreReadOnlyFromExit40Type1() {
        let area = RunArea.simulated()
        _ = area.simulate(.legacyCertificateRequest(address: 0x3000, pages: 2, done: false))
        let request = area.legacyCertificateRequest
        #expect(request?.status == .pending && request?.pageCount == 2 && request?.guestPhysicalAddress == 0x3000)
        request?.notifyWhenDone()
        #expect(request?.flags == 1)
        _ = area.simulate(.bare(.halt))
        #expect(area.legacyCertificateRequest == nil)
    }

    @Test func immediateExitIsTheByteKVMReads() {
        let area = RunArea.simulated()
        area.immediateExit = true
        #expect(area.run.pointee.immediate_exit == 1)
        area.immediateExit = false
        #expect(area.run.pointee.immediate_exit == 0)
    }

    /// The payload of one run, used after the next: the program stops with a
    /// message rather than reading the next exit's bytes.
    @Test func aPayloadUsedAfterTheNextRunStopsTheProgram() async {
        await #expect(processExitsWith: .failure) {
            let area = RunArea.simulated()
            // Not an I/O exit: end without the trap the test waits for.
            guard case .io(let io) = area.simulate(.io(direction: .in, port: 0x60, size: 1, data: [0])) else { exit(0) }
            _ = area.simulate(.bare(.halt))
            io.setValue(1)  // stale: must trap
        }
    }

    @Test func aPayloadUsedInItsOwnRunIsFine() async {
        await #expect(processExitsWith: .success) {
            let area = RunArea.simulated()
            guard case .io(let io) = area.simulate(.io(direction: .in, port: 0x60, size: 1, data: [0])) else { fatalError("not an I/O exit") }
            io.setValue(1)
        }
    }
}

/// The Swift register values convert to their C structs field for field.
@Suite(.timeLimit(.minutes(5))) struct RegisterConversionTests {
    @Test func specialRegistersRoundTripThroughTheABIStruct() {
        var special = SpecialRegisters()
        special.cs = Segment(base: 0x1000, limit: 0xFFFF, selector: 8, type: 0xB, present: 1, dpl: 3, db: 0, s: 1, l: 1, g: 1, avl: 1, unusable: 0)
        special.tr = Segment(limit: 0x67, selector: 0x18, type: 0xB, present: 1)
        special.gdt = DescriptorTable(base: 0x5000, limit: 0x27)
        special.cr0 = 0x8000_0031
        special.cr4 = 1 << 32 | 0x20
        special.efer = 0xD01
        special.apicBase = 0xFEE0_0900
        special.interruptBitmap = [1, 0, 1 << 63, 0]
        let raw = special.raw
        #expect(raw.cs.l == 1 && raw.cs.dpl == 3 && raw.tr.limit == 0x67 && raw.gdt.limit == 0x27 && raw.apic_base == 0xFEE0_0900)
        #expect(SpecialRegisters(raw) == special)
    }

    @Test func registersAndCPUIDEntriesRoundTrip() {
        var registers = Registers()
        registers.rax = 1; registers.r15 = 15; registers.rip = 0x10_0000; registers.rflags = 2
        #expect(Registers(registers.raw) == registers)
        #expect(registers.raw.r15 == 15)
        let entry = CPUIDEntry(function: 7, index: 1, flags: 1, eax: 1, ebx: 2, ecx: 3, edx: 4)
        #expect(CPUIDEntry(entry.raw) == entry)
    }
}
