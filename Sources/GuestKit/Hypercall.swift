import KVM

/// The instruction a guest uses to make a KVM hypercall: `vmcall` on Intel,
/// `vmmcall` on AMD. KVM accepts the other vendor's instruction too, but only
/// by emulating it after a #UD and patching the guest's code, which a test
/// should not depend on.
public enum HypercallInstruction: Sendable, Equatable {
    case vmcall, vmmcall

    /// The native instruction for the CPU vendor in CPUID leaf 0 of `cpuid`
    /// (KVM_GET_SUPPORTED_CPUID reports the host's vendor there).
    public static func native(for cpuid: CPUIDTable) -> HypercallInstruction {
        guard let leaf = cpuid.entry(function: 0) else { return .vmcall }
        // "AuthenticAMD" and "HygonGenuine" begin with these EBX words.
        let amd: UInt32 = 0x6874_7541  // "Auth"
        let hygon: UInt32 = 0x6F67_7948  // "Hygo"
        return leaf.ebx == amd || leaf.ebx == hygon ? .vmmcall : .vmcall
    }
}

extension GuestProgram {
    /// A KVM hypercall: RAX = `number`; RBX, RCX, RDX, RSI = `arguments` (the
    /// order KVM reads a0 to a3 in). The result is left in RAX; RBX, RCX, RDX
    /// and RSI are restored. Returns the label of the hypercall instruction
    /// itself, so a host can tell a guest stuck on it.
    @discardableResult
    public func hypercall(_ number: UInt64, _ arguments: [GuestValue], using instruction: HypercallInstruction) -> Label {
        precondition(arguments.count <= 4, "a KVM hypercall takes at most four arguments")
        let a = assembler
        let targets: [Register64] = [.rbx, .rcx, .rdx, .rsi]
        for register in targets { a.push(register) }
        // Push every value first, then pop into the targets, so a value read
        // from one of the target registers is taken before any is overwritten.
        for value in arguments {
            switch value {
            case .immediate(let constant):
                a.mov(.rax, constant)
                a.push(.rax)
            case .register(let register):
                a.push(register)
            }
        }
        for register in targets.prefix(arguments.count).reversed() { a.pop(register) }
        a.mov(.rax, number)
        let site = a.here()
        switch instruction {
        case .vmcall: a.vmcall()
        case .vmmcall: a.vmmcall()
        }
        for register in targets.reversed() { a.pop(register) }
        return site
    }
}
