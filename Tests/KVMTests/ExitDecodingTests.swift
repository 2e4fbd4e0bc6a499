import CKVM
import Testing
@testable import KVM

/// Exit decoding against synthetic run areas, so every case is covered
/// without a guest producing it.
@Suite(.timeLimit(.minutes(5))) struct ExitDecodingTests {
    @Test func ioOutWithData() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 2
        area.run.pointee.exit.io = ckvm_exit_io(direction: 1, size: 4, port: 0xE000, count: 1, data_offset: 4000)
        area.raw.storeBytes(of: UInt32(0xB000).littleEndian, toByteOffset: 4000, as: UInt32.self)
        guard case .io(let io) = area.decode() else { Issue.record("not an IO exit"); return }
        #expect(io.direction == .out)
        #expect(io.port == 0xE000)
        #expect(io.size == 4)
        #expect(io.value == 0xB000)
        #expect(io.data.count == 4)
    }

    @Test func ioInAnswerLandsInTheRunArea() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 2
        area.run.pointee.exit.io = ckvm_exit_io(direction: 0, size: 2, port: 0x60, count: 1, data_offset: 1024)
        guard case .io(let io) = area.decode() else { Issue.record("not an IO exit"); return }
        io.setValue(0xBEEF)
        #expect(area.raw.load(fromByteOffset: 1024, as: UInt16.self) == 0xBEEF)
        #expect(area.raw.load(fromByteOffset: 1026, as: UInt8.self) == 0)
    }

    @Test func ioDataOffsetOutsideTheAreaIsNotFollowed() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 2
        area.run.pointee.exit.io = ckvm_exit_io(direction: 1, size: 4, port: 1, count: 2, data_offset: 4092)
        guard case .internalError(let error) = area.decode() else { Issue.record("bad offset was followed"); return }
        #expect(error.data.first == 4092)
    }

    @Test func emulationFailureWithInstructionBytes() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 17
        let base = area.raw + 32
        base.storeBytes(of: UInt32(1), as: UInt32.self)  // suberror EMULATION
        base.storeBytes(of: UInt32(3), toByteOffset: 4, as: UInt32.self)  // ndata
        base.storeBytes(of: UInt64(1), toByteOffset: 8, as: UInt64.self)  // flags: instruction bytes valid
        base.storeBytes(of: UInt8(2), toByteOffset: 16, as: UInt8.self)  // insn_size
        base.storeBytes(of: UInt8(0xCD), toByteOffset: 17, as: UInt8.self)
        base.storeBytes(of: UInt8(0x20), toByteOffset: 18, as: UInt8.self)
        guard case .internalError(let error) = area.decode() else { Issue.record("not an internal error"); return }
        #expect(error.kind == .emulation)
        #expect(error.instructionBytes == [0xCD, 0x20])
        #expect(error.data.count == 3)
        #expect(error.description.contains("instruction bytes [cd 20]"))
    }

    @Test func internalErrorWithoutInstructionBytes() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 17
        area.run.pointee.exit.`internal`.suberror = 3
        area.run.pointee.exit.`internal`.ndata = 1
        area.run.pointee.exit.`internal`.data.0 = 0x80000b0e
        guard case .internalError(let error) = area.decode() else { Issue.record("not an internal error"); return }
        #expect(error.kind == .deliveryEvent)
        #expect(error.instructionBytes == nil)
        #expect(error.data == [0x80000b0e])
    }

    @Test func memoryFault() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 39
        area.run.pointee.exit.memory_fault = ckvm_exit_memory_fault(flags: 8, gpa: 0x1_0000_0000, size: 0x1000)
        guard case .memoryFault(let fault) = area.decode() else { Issue.record("not a memory fault"); return }
        #expect(fault.flags.contains(.private))
        #expect(fault.guestPhysicalAddress == 0x1_0000_0000)
        #expect(fault.size == 0x1000)
    }

    @Test func snpCertificateRequestResponses() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 42
        area.run.pointee.exit.snp_req_certs = ckvm_exit_snp_req_certs(gpa: 0x20_0000, npages: 1, ret: 0)
        guard case .snpRequestCertificates(let request) = area.decode() else { Issue.record("not SNP_REQ_CERTS"); return }
        #expect(request.guestPhysicalAddress == 0x20_0000)
        #expect(request.pageCount == 1)
        request.respond(.bufferTooSmall(pagesNeeded: 4))
        #expect(area.run.pointee.exit.snp_req_certs.ret == 28)
        #expect(area.run.pointee.exit.snp_req_certs.npages == 4)
        request.respond(.busy)
        #expect(request.returnCode == 11)
        request.respond(.failure)
        #expect(request.returnCode == 5)
        request.respond(.certificatesWritten)
        #expect(request.returnCode == 0)
    }

    @Test func hypercallAnswer() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 3
        area.run.pointee.exit.hypercall.nr = 12
        area.run.pointee.exit.hypercall.args.1 = 0x55
        guard case .hypercall(let call) = area.decode() else { Issue.record("not a hypercall"); return }
        #expect(call.number == 12)
        #expect(call.arguments == [0, 0x55, 0, 0, 0, 0])
        call.setReturnValue(0xFFFF)
        #expect(area.run.pointee.exit.hypercall.ret == 0xFFFF)
    }

    /// struct kvm_debug_exit_arch: exception, pad, pc, dr6, dr7 at offsets 0, 8, 16, 24.
    @Test func debugExitCarriesDR6AndDR7() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 4
        withUnsafeMutableBytes(of: &area.run.pointee.exit.padding) { raw in
            raw.storeBytes(of: UInt32(1), toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: UInt64(0x40_1000), toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: UInt64(0xFFFF_2FF0), toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: UInt64(0x2400), toByteOffset: 24, as: UInt64.self)
        }
        guard case .debug(let debug) = area.decode() else { Issue.record("not a debug exit"); return }
        #expect(debug == DebugExit(exception: 1, pc: 0x40_1000, dr6: 0xFFFF_2FF0, dr7: 0x2400))
        let simulated = RunArea.simulated().simulate(.debug(debug))
        guard case .debug(let again) = simulated else { Issue.record("\(simulated)"); return }
        #expect(again == debug && "\(simulated)" == "KVM_EXIT_DEBUG: exception 1 at 0x401000, DR6 0xffff2ff0, DR7 0x2400")
    }

    @Test func otherReasons() {
        let area = RunArea.simulated()
        area.run.pointee.exit_reason = 5
        #expect(area.decode().reason == .halt)
        area.run.pointee.exit_reason = 8
        #expect(area.decode().reason == .shutdown)
        area.run.pointee.exit_reason = 9
        area.run.pointee.exit.fail_entry = ckvm_exit_fail_entry(hardware_entry_failure_reason: 0x21, cpu: 1)
        guard case .failEntry(let reason, let cpu) = area.decode() else { Issue.record("not FAIL_ENTRY"); return }
        #expect(reason == 0x21 && cpu == 1)
        area.run.pointee.exit_reason = 24
        area.run.pointee.exit.system_event.type = 2
        area.run.pointee.exit.system_event.ndata = 1
        guard case .systemEvent(let event) = area.decode() else { Issue.record("not a system event"); return }
        #expect(event.typeName == "KVM_SYSTEM_EVENT_RESET")
        #expect(event.data.count == 1)
        area.run.pointee.exit_reason = 6
        area.run.pointee.exit.mmio.phys_addr = 0xFEE0_0000
        area.run.pointee.exit.mmio.len = 4
        area.run.pointee.exit.mmio.is_write = 1
        guard case .mmio(let mmio) = area.decode() else { Issue.record("not MMIO"); return }
        #expect(mmio.isWrite && mmio.data.count == 4 && mmio.address == 0xFEE0_0000)
        area.run.pointee.exit_reason = 1234
        guard case .unrecognized(let reason) = area.decode() else { Issue.record("unknown reason not kept"); return }
        #expect(reason.rawValue == 1234)
        #expect(reason.name == "exit reason 1234")
        area.run.pointee.exit_reason = 0
        area.run.pointee.exit.hardware_exit_reason = 0x30
        guard case .unknown(let hardware) = area.decode() else { Issue.record("not UNKNOWN"); return }
        #expect(hardware == 0x30)
    }
}

extension RunArea {
    /// The area's bytes, for writing fields the way KVM does.
    var raw: UnsafeMutableRawPointer { address }
    func decode() -> VCPUExit { decodeExit() }
}
