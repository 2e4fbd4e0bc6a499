import CKVM

/// An exit as KVM would describe it in the run area, for `RunArea.simulate`.
public enum SimulatedExit: Sendable {
    /// KVM_EXIT_IO of `data.count / size` items; for OUT, `data` is what the
    /// guest wrote, for IN it is the initial contents of the data buffer.
    case io(direction: IOExit.Direction, port: UInt16, size: Int, data: [UInt8])
    /// KVM_EXIT_MMIO of `data.count` bytes (1 to 8).
    case mmio(address: UInt64, isWrite: Bool, data: [UInt8])
    /// KVM_EXIT_SYSTEM_EVENT.
    case systemEvent(type: SystemEvent.Kind, data: [UInt64])
    /// KVM_EXIT_MEMORY_FAULT.
    case memoryFault(flags: MemoryFaultFlags, address: UInt64, size: UInt64)
    /// KVM_EXIT_HYPERCALL (flags: x86 long mode, or arm64's SMC/16-bit bits).
    case hypercall(number: UInt64, arguments: [UInt64], flags: UInt64 = 0)
    /// KVM_EXIT_ARM_NISV.
    case armNoISV(syndrome: UInt64, faultIPA: UInt64)
    /// KVM_EXIT_SNP_REQ_CERTS.
    case snpRequestCertificates(address: UInt64, pages: UInt64)
    /// The v15 series' KVM_EXIT_VMGEXIT (40) REQ_CERTS, PENDING or DONE.
    case legacyCertificateRequest(address: UInt64, pages: UInt64, done: Bool)
    /// KVM_EXIT_FAIL_ENTRY.
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    /// KVM_EXIT_DEBUG.
    case debug(DebugExit)
    /// KVM_EXIT_INTERNAL_ERROR with its data words.
    case internalError(suberror: UInt32, data: [UInt64])
    /// An exit with no data of its own (HLT, SHUTDOWN, IRQ_WINDOW_OPEN, an
    /// unrecognised reason).
    case bare(ExitReason)
}

extension RunArea {
    /// Writes `exit` into the area the way KVM does, starts a new run as
    /// KVM_RUN would, and returns the decoded exit. Only for simulated areas:
    /// a vCPU's area belongs to KVM.
    public func simulate(_ exit: SimulatedExit) -> VCPUExit {
        precondition(!isMapping, "simulate(_:) is for RunArea.simulated() areas")
        beginRun()
        let pointer = run
        switch exit {
        case .io(let direction, let port, let size, let data):
            let offset = 1024  // inside the area (over sync_regs, which simulated exits do not use)
            precondition(size > 0 && data.count % size == 0 && offset + data.count <= self.size, "simulated I/O data does not fit")
            pointer.pointee.exit_reason = ExitReason.io.rawValue
            pointer.pointee.exit.io = ckvm_exit_io(direction: direction.rawValue, size: UInt8(size), port: port,
                                                   count: UInt32(data.count / size), data_offset: UInt64(offset))
            (address + offset).copyMemory(from: data, byteCount: data.count)
        case .mmio(let address, let isWrite, let data):
            precondition((1...8).contains(data.count), "MMIO exits carry 1 to 8 bytes")
            pointer.pointee.exit_reason = ExitReason.mmio.rawValue
            pointer.pointee.exit.mmio.phys_addr = address
            pointer.pointee.exit.mmio.len = UInt32(data.count)
            pointer.pointee.exit.mmio.is_write = isWrite ? 1 : 0
            withUnsafeMutableBytes(of: &pointer.pointee.exit.mmio.data) { $0.copyBytes(from: data) }
        case .systemEvent(let type, let data):
            pointer.pointee.exit_reason = ExitReason.systemEvent.rawValue
            pointer.pointee.exit.system_event.type = type.rawValue
            pointer.pointee.exit.system_event.ndata = UInt32(min(data.count, 16))
            withUnsafeMutableBytes(of: &pointer.pointee.exit.system_event.data) { raw in
                for (index, word) in data.prefix(16).enumerated() { raw.storeBytes(of: word, toByteOffset: index * 8, as: UInt64.self) }
            }
        case .memoryFault(let flags, let address, let size):
            pointer.pointee.exit_reason = ExitReason.memoryFault.rawValue
            pointer.pointee.exit.memory_fault = ckvm_exit_memory_fault(flags: flags.rawValue, gpa: address, size: size)
        case .hypercall(let number, let arguments, let flags):
            pointer.pointee.exit_reason = ExitReason.hypercall.rawValue
            pointer.pointee.exit.hypercall.nr = number
            pointer.pointee.exit.hypercall.flags = flags
            withUnsafeMutableBytes(of: &pointer.pointee.exit.hypercall.args) { raw in
                for (index, word) in arguments.prefix(6).enumerated() { raw.storeBytes(of: word, toByteOffset: index * 8, as: UInt64.self) }
            }
        case .snpRequestCertificates(let address, let pages):
            pointer.pointee.exit_reason = ExitReason.snpRequestCertificates.rawValue
            pointer.pointee.exit.snp_req_certs = ckvm_exit_snp_req_certs(gpa: address, npages: pages, ret: 0)
        case .legacyCertificateRequest(let address, let pages, let done):
            pointer.pointee.exit_reason = SNPLegacyCertificateRequest.exitReason
            var exit = pointer.pointee.exit.vmgexit
            exit.type = SNPLegacyCertificateRequest.requestCertificatesType
            exit.data_gpa = address
            exit.data_npages = pages
            exit.status = done ? SNPLegacyCertificateRequest.statusDone : SNPLegacyCertificateRequest.statusPending
            exit.flags = 0
            if !done { exit.ret = 0 }  // a DONE exit keeps the answer given to the PENDING one
            pointer.pointee.exit.vmgexit = exit
        case .armNoISV(let syndrome, let faultIPA):
            pointer.pointee.exit_reason = ExitReason.armNoISV.rawValue
            pointer.pointee.exit.arm_nisv = ckvm_exit_arm_nisv(esr_iss: syndrome, fault_ipa: faultIPA)
        case .failEntry(let hardwareReason, let cpu):
            pointer.pointee.exit_reason = ExitReason.failEntry.rawValue
            pointer.pointee.exit.fail_entry = ckvm_exit_fail_entry(hardware_entry_failure_reason: hardwareReason, cpu: cpu)
        case .debug(let debug):
            pointer.pointee.exit_reason = ExitReason.debug.rawValue
            let raw = ckvm_debug_exit(exception: debug.exception, pad: 0, pc: debug.pc, dr6: debug.dr6, dr7: debug.dr7)
            withUnsafeMutableBytes(of: &pointer.pointee.exit.padding) { $0.storeBytes(of: raw, as: ckvm_debug_exit.self) }
        case .internalError(let suberror, let data):
            pointer.pointee.exit_reason = ExitReason.internalError.rawValue
            pointer.pointee.exit.`internal`.suberror = suberror
            pointer.pointee.exit.`internal`.ndata = UInt32(min(data.count, 16))
            withUnsafeMutableBytes(of: &pointer.pointee.exit.`internal`.data) { raw in
                for (index, word) in data.prefix(16).enumerated() { raw.storeBytes(of: word, toByteOffset: index * 8, as: UInt64.self) }
            }
        case .bare(let reason):
            pointer.pointee.exit_reason = reason.rawValue
        }
        return decodeExit()
    }
}
