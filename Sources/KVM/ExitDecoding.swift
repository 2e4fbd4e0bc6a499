import CKVM

extension VCPUExit {
    /// Decodes the exit described by `area`.
    ///
    /// Used by `VCPU.run()` on the mmapped area, and by `RunArea.simulate` on
    /// simulated ones. Offsets the kernel supplies (the I/O data offset) are
    /// checked against the area's size; an out-of-range offset is reported as
    /// an internal inconsistency rather than followed.
    @inline(__always)
    static func decode(_ area: RunArea) -> VCPUExit {
        let run = area.run
        let areaSize = area.size
        let ticket = RunTicket(area)
        let reason = run.pointee.exit_reason
        switch ExitReason(rawValue: reason) {
        case .io:
            let io = run.pointee.exit.io
            let length = Int(io.size) * Int(io.count)
            let offset = Int(clamping: io.data_offset)
            guard offset >= ckvm_run_exit_offset(), length >= 0,
                  offset <= areaSize, length <= areaSize - offset
            else {
                // Sound: never follow an offset outside the mapping.
                return .internalError(InternalError(suberror: UInt32.max, data: [io.data_offset, UInt64(length)], instructionBytes: nil))
            }
            let base = UnsafeMutableRawPointer(run) + offset
            return .io(IOExit(
                direction: io.direction == 0 ? .in : .out, size: Int(io.size), port: io.port,
                count: Int(io.count), buffer: UnsafeMutableRawBufferPointer(start: base, count: length), ticket: ticket))
        case .mmio:
            let length = Int(min(run.pointee.exit.mmio.len, 8))
            let dataOffset = ckvm_run_mmio_data_offset()
            return .mmio(MMIOExit(
                address: run.pointee.exit.mmio.phys_addr, isWrite: run.pointee.exit.mmio.is_write != 0,
                buffer: UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(run) + dataOffset, count: length),
                ticket: ticket))
        case .halt:
            return .halt
        case .shutdown:
            return .shutdown
        case .failEntry:
            return .failEntry(
                hardwareReason: run.pointee.exit.fail_entry.hardware_entry_failure_reason,
                cpu: run.pointee.exit.fail_entry.cpu)
        case .internalError:
            return .internalError(decodeInternalError(run))
        case .systemEvent:
            let event = run.pointee.exit.system_event
            let count = Int(min(event.ndata, 16))
            let words = withUnsafeBytes(of: event.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
            return .systemEvent(SystemEvent(type: SystemEvent.Kind(rawValue: event.type), data: words))
        case .memoryFault:
            let fault = run.pointee.exit.memory_fault
            return .memoryFault(MemoryFault(
                flags: MemoryFaultFlags(rawValue: fault.flags), guestPhysicalAddress: fault.gpa, size: fault.size,
                hardwarePoison: false))
        case .hypercall:
            return .hypercall(HypercallExit(ticket: ticket))
        case .snpRequestCertificates:
            return .snpRequestCertificates(SNPCertificateRequest(ticket: ticket))
        case .exception:
            return .exception(vector: run.pointee.exit.ex.exception, errorCode: run.pointee.exit.ex.error_code)
        case .debug:
            // Sound: struct kvm_debug_exit_arch (32 bytes) lies inside the
            // exit union's 256 padding bytes, which the copy holds whole.
            let debug = withUnsafeBytes(of: run.pointee.exit.padding) { $0.loadUnaligned(as: ckvm_debug_exit.self) }
            return .debug(DebugExit(exception: debug.exception, pc: debug.pc, dr6: debug.dr6, dr7: debug.dr7))
        case .interruptWindowOpen:
            return .interruptWindowOpen
        case .interrupted:
            return .interrupted
        case .unknown:
            return .unknown(hardwareReason: run.pointee.exit.hardware_exit_reason)
        case .armNoISV:
            return .armNoISV(syndrome: run.pointee.exit.arm_nisv.esr_iss, faultIPA: run.pointee.exit.arm_nisv.fault_ipa)
        case .dirtyRingFull:
            return .dirtyRingFull
        default:
            return .unrecognized(ExitReason(rawValue: reason))
        }
    }

    /// KVM_INTERNAL_ERROR_EMULATION with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    /// overlays `u64 flags; u8 insn_size; u8 insn_bytes[15]` on the first data words.
    private static func decodeInternalError(_ run: UnsafeMutablePointer<ckvm_run>) -> InternalError {
        let info = run.pointee.exit.`internal`
        let count = Int(min(info.ndata, 16))
        let words = withUnsafeBytes(of: info.data) { Array($0.bindMemory(to: UInt64.self).prefix(count)) }
        var bytes: [UInt8]? = nil
        let hasInstructionBytes = info.suberror == InternalError.emulationSuberror && count >= 3 && words[0] & 1 != 0
        if hasInstructionBytes {
            withUnsafeBytes(of: info.data) { raw in
                let size = Int(min(raw[8], 15))
                bytes = Array(raw[9..<(9 + size)])
            }
        }
        return InternalError(suberror: info.suberror, data: words, instructionBytes: bytes)
    }
}
