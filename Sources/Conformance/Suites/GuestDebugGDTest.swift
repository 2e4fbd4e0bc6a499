import GuestKit
import KVM

extension BasicsSuite {
    /// DR7.GD (general detect, bit 13) and DR6.BD (bit 13).
    static let dr7GeneralDetect: UInt64 = 1 << 13
    static let dr6BreakpointDebugAccess: UInt64 = 1 << 13
    /// DR7's reserved bit 10, which reads as 1.
    static let dr7Fixed: UInt64 = 0x400
    /// DR6 with no event: bits 31:16 and 11:4 read as 1 (DR6_ACTIVE_LOW).
    static let dr6ActiveLow: UInt64 = 0xFFFF_0FF0

    /// After the DR7.GD case of the kernel's debug_regs selftest: with guest
    /// debugging on (KVM_GUESTDBG_USE_HW_BP) and GD set in the host's DR7, a
    /// guest MOV from DR0 is a debug event for the host. KVM_RUN ends with
    /// KVM_EXIT_DEBUG: #DB at the MOV, DR6 0xffff2ff0 (BD), the MOV not done.
    /// VMX's handle_dr() checks GD itself; SVM without DecodeAssists and
    /// emulating backends hand MOV DR to KVM's emulator, which before Linux
    /// 7.2 checked the guest's own DR7 instead of the host's.
    static let guestDebugGeneralDetect = ConformanceTest(
        suite: name, name: "guest_debug_dr7_gd",
        summary: "with KVM_GUESTDBG_USE_HW_BP and DR7.GD in the host's debug registers, a guest MOV from DR0 ends KVM_RUN with "
            + "KVM_EXIT_DEBUG (#DB at the MOV, DR6 0xffff2ff0) instead of executing",
        requires: [.capability(.setGuestDebug)]
    ) { context in
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rax, 0x5A5A)
        let site = a.here()
        a.mov(.rax, .dr0)
        program.sync(stage: 1, .register(.rax))
        program.done()
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.loadLongMode(program)
        let siteAddress = try program.assembler.address(of: site)
        try machine.vcpu.setGuestDebug([.enable, .useHardwareBreakpoints],
                                       debugRegisters: [0, 0, 0, 0, 0, 0, 0, dr7Fixed | dr7GeneralDetect])
        let exit = try machine.runUntilExit()
        switch exit {
        case .debug(let debug):
            try context.expectEqual(debug.exception, 1, "the exception in KVM_EXIT_DEBUG (#DB)")
            try context.expectEqualHex(debug.pc, siteAddress, "the exit's pc (the MOV from DR0, not done)")
            try context.expectEqualHex(debug.dr6, dr6ActiveLow | dr6BreakpointDebugAccess, "the exit's DR6 (BD)")
            try context.expectEqualHex(try machine.vcpu.registers().rax, 0x5A5A, "RAX (the MOV must not have executed)")
        case .io(let io) where io.port == ucallPort:
            // The guest went on: the MOV executed. The control: the host's DR7
            // without GD and the guest's own DR7 with it, under the same guest
            // debugging. A #DB there shows the check read the guest's DR7.
            let ucall = try UcallRecord.decode(at: UInt64(io.value), in: machine.memory)
            guard case .sync(1, let values) = ucall else { throw GuestMachine.mismatch(ucall, expected: "SYNC(stage 1) or KVM_EXIT_DEBUG") }
            throw TestFailure("""
                the guest's MOV from DR0 executed (RAX then 0x\(String(values.first ?? 0, radix: 16))) although the host's DR7 \
                has GD under KVM_GUESTDBG_USE_HW_BP: no KVM_EXIT_DEBUG; \(controlResult(context))
                diagnosis: KVM emulated the MOV DR and its emulator checked GD in the guest's DR7 (vcpu->arch.dr7) instead of the \
                effective DR7, the host's guest_debug_dr7, and would have queued the #DB to the guest rather than exit \
                (check_dr_read() in arch/x86/kvm/emulate.c; fixed in Linux 7.2 by 51543660c521 "KVM: x86: Honor \
                KVM_GUESTDBG_USE_HW_BP when emulating MOV DR (in emulator)"). KVM emulates MOV DR while guest debugging is on \
                when SVM has no DecodeAssists (dr_interception()), and on emulating backends
                """)
        default:
            throw machine.unexpected(exit)
        }
    }

    /// The control's clause, or what stopped it, so that an error in the
    /// control does not hide the failure it explains.
    static func controlResult(_ context: TestContext) -> String {
        do { return try guestGDControl(context) } catch { return "control: could not run (\(error))" }
    }

    /// The control: host DR7 without GD, the guest's own DR7 with it. Returns
    /// what happened, as a clause for the failure message.
    static func guestGDControl(_ context: TestContext) throws -> String {
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rcx, dr7Fixed | dr7GeneralDetect)
        a.mov(.dr7, .rcx)
        program.expectingException { a.mov(.rax, .dr0) }
        program.sync(stage: 1, .register(.rax))
        program.done()
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.loadLongMode(program)
        try machine.vcpu.setGuestDebug([.enable, .useHardwareBreakpoints], debugRegisters: [0, 0, 0, 0, 0, 0, 0, dr7Fixed])
        let (exception, _) = try machine.runToSync(stage: 1)
        guard let exception else {
            return "control: with the host's DR7 0x400 and GD in the guest's own DR7, the MOV executed too (no #DB)"
        }
        return "control: with the host's DR7 0x400 and GD in the guest's own DR7, the guest took \(exception) at the MOV, "
            + "so GD was taken from the guest's DR7"
    }
}
