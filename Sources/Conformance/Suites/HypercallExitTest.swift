import GuestKit
import KVM
import TextFormat

extension BasicsSuite {
    /// KVM_HC_VAPIC_POLL_IRQ: a hypercall KVM completes in the kernel with 0.
    static let vapicPollIRQ: UInt64 = 1
    /// KVM_HC_MAP_GPA_RANGE, and its bit in KVM_CAP_EXIT_HYPERCALL.
    static let mapGPARange: UInt64 = 12
    /// -KVM_ENOSYS and -KVM_EINVAL as the guest sees them in RAX.
    static let hypercallNoSystem = UInt64(bitPattern: -1000)
    static let hypercallInvalid = UInt64(bitPattern: -22)
    /// How long the vCPU may sit on the hypercall instruction before the test
    /// calls it stuck. KVM completes KVM_HC_VAPIC_POLL_IRQ in microseconds
    /// (one exit to KVM and back), even in the lab's emulated L1s, so this is
    /// several thousand times what a working host needs, and the verdict on a
    /// host that never completes it comes in well under a second.
    static let stallSeconds = 0.4

    /// After the hypercall handling in `__kvm_emulate_hypercall()`
    /// (arch/x86/kvm/x86.c) and the private_mem selftests' use of it: without
    /// KVM_CAP_EXIT_HYPERCALL, MAP_GPA_RANGE is -KVM_ENOSYS; once enabled, it
    /// exits to userspace with its three arguments and the value userspace
    /// sets is the guest's RAX; KVM itself refuses an unaligned address and a
    /// zero page count with -KVM_EINVAL, without an exit.
    static let exitHypercall = ConformanceTest(
        suite: name, name: "exit_hypercall",
        summary: "KVM_HC_MAP_GPA_RANGE is -KVM_ENOSYS until KVM_CAP_EXIT_HYPERCALL enables it, then exits with its arguments "
            + "and userspace's return value reaches RAX; an unaligned address or zero pages is -KVM_EINVAL without an exit",
        requires: [.capabilityBits(.exitHypercall, mask: 1 << 12, vmType: .default)]
    ) { context in
        let instruction = HypercallInstruction.native(for: try context.kvm.supportedCPUID())
        context.note("hypercall instruction: \(instruction)")

        // Not enabled: the control hypercall first, which KVM answers in the
        // kernel, then MAP_GPA_RANGE.
        let plain = try GuestMachine(kvm: context.kvm)
        let program = GuestProgram()
        let site = program.hypercall(vapicPollIRQ, [], using: instruction)
        program.sync(stage: 1, .register(.rax))
        program.hypercall(mapGPARange, [0x20_0000, 3, 0x10], using: instruction)
        program.sync(stage: 2, .register(.rax))
        program.done()
        try plain.loadLongMode(program)
        let siteAddress = try program.assembler.address(of: site)
        let control: [UInt64]
        do {
            control = try plain.expectSync(stage: 1, timeout: 5, stall: .init(address: siteAddress, seconds: stallSeconds))
        } catch HarnessError.stalled(let rip, let seconds) {
            // Control: the other vendor's instruction, which KVM also accepts.
            let other: HypercallInstruction = instruction == .vmcall ? .vmmcall : .vmcall
            let probe = try GuestMachine(kvm: context.kvm)
            let otherProgram = GuestProgram()
            let otherSite = otherProgram.hypercall(vapicPollIRQ, [], using: other)
            otherProgram.sync(stage: 1, .register(.rax))
            try probe.loadLongMode(otherProgram)
            let otherResult: String
            do {
                let stall = GuestMachine.StallWatch(address: try otherProgram.assembler.address(of: otherSite), seconds: stallSeconds)
                otherResult = "completed with RAX 0x\(String(try probe.expectSync(stage: 1, timeout: 5, stall: stall)[0], radix: 16))"
            } catch {
                otherResult = "did not complete either (\(error))"
            }
            throw TestFailure("""
                the vCPU never got past the \(instruction) instruction at RIP 0x\(String(rip, radix: 16)): it was there at every \
                check for \(seconds.text(places: 2)) s; KVM_HC_VAPIC_POLL_IRQ, which KVM completes in the kernel with 0 and no exit, \
                did not complete; the same hypercall with \(other) \(otherResult)
                diagnosis: this host does not complete guest hypercall instructions (RIP stays on the instruction, \
                no exit reaches userspace), so no hypercall, MAP_GPA_RANGE included, can work here
                """)
        }
        try context.expectEqualHex(control[0], 0, "RAX after KVM_HC_VAPIC_POLL_IRQ")
        try context.expectEqualHex(try plain.expectSync(stage: 2)[0], hypercallNoSystem,
                                   "RAX after MAP_GPA_RANGE without KVM_CAP_EXIT_HYPERCALL (-KVM_ENOSYS)")
        try plain.expectDone()

        // Enabled: the exit, its arguments, the answer, and KVM's own refusals.
        let machine = try GuestMachine(kvm: context.kvm)
        try machine.vm.enableCapability(.exitHypercall, arguments: [1 << mapGPARange])
        let enabled = GuestProgram()
        enabled.hypercall(mapGPARange, [0x20_0000, 3, 0x10], using: instruction)
        enabled.sync(stage: 3, .register(.rax))
        enabled.hypercall(mapGPARange, [0x20_0800, 1, 0], using: instruction)
        enabled.sync(stage: 4, .register(.rax))
        enabled.hypercall(mapGPARange, [0x20_0000, 0, 0], using: instruction)
        enabled.sync(stage: 5, .register(.rax))
        enabled.done()
        try machine.loadLongMode(enabled)
        var calls: [[UInt64]] = []
        let answered = try machine.runUntilUcall { exit in
            guard case .hypercall(let call) = exit, call.number == mapGPARange else { return false }
            calls.append(Array(call.arguments.prefix(3)))
            call.setReturnValue(0x1234)
            return true
        }
        try context.expectEqual(calls, [[0x20_0000, 3, 0x10]], "MAP_GPA_RANGE arguments in the KVM_EXIT_HYPERCALL exit")
        guard case .sync(3, let values) = answered else { throw GuestMachine.mismatch(answered, expected: "SYNC(stage 3)") }
        try context.expectEqualHex(values[0], 0x1234, "RAX after userspace answered the hypercall")
        try context.expectEqualHex(try machine.expectSync(stage: 4)[0], hypercallInvalid, "RAX after MAP_GPA_RANGE of an unaligned address")
        try context.expectEqualHex(try machine.expectSync(stage: 5)[0], hypercallInvalid, "RAX after MAP_GPA_RANGE of zero pages")
        try machine.expectDone()
    }
}
