import KVM
import Testing
@testable import GuestKit

/// The hypercall helpers. The guest side against a real KVM is the
/// conformance test `basics.exit_hypercall` (it fails on kvm_pvm, which never
/// completes a hypercall instruction, and passes in the lab).
@Suite(.timeLimit(.minutes(5))) struct HypercallExitTests {
    @Test func instructionFollowsTheVendor() {
        func table(ebx: UInt32) -> CPUIDTable {
            CPUIDTable(entries: [CPUIDEntry(function: 0, index: 0, flags: 0, eax: 0x10, ebx: ebx, ecx: 0, edx: 0)])
        }
        #expect(HypercallInstruction.native(for: table(ebx: 0x6874_7541)) == .vmmcall)  // AuthenticAMD
        #expect(HypercallInstruction.native(for: table(ebx: 0x6F67_7948)) == .vmmcall)  // HygonGenuine
        #expect(HypercallInstruction.native(for: table(ebx: 0x756E_6547)) == .vmcall)  // GenuineIntel
        #expect(HypercallInstruction.native(for: CPUIDTable(entries: [])) == .vmcall)
    }

    /// The arguments go to RBX, RCX, RDX, RSI (KVM's a0 to a3) through the
    /// stack, so a value taken from a target register is read before any is
    /// overwritten; the label marks the instruction itself.
    @Test func argumentsAndSite() throws {
        let program = GuestProgram()
        let site = program.hypercall(12, [.register(.rcx), .register(.rbx), 7], using: .vmmcall)
        let code = try program.assembler.assemble()
        let offset = Int(try program.assembler.address(of: site) - program.layout.codeAddress)
        #expect(Array(code[offset..<offset + 3]) == [0x0F, 0x01, 0xD9])
        // Saves rbx, rcx, rdx, rsi; pushes rcx, then rbx, then 7 (through rax) ...
        #expect(Array(code[0..<6]) == [0x53, 0x51, 0x52, 0x56, 0x51, 0x53])
        // ... and pops them into rdx, rcx, rbx: a0 = old rcx, a1 = old rbx, a2 = 7.
        let pops: [UInt8] = [0x50, 0x5A, 0x59, 0x5B]
        #expect((0..<offset).contains { Array(code[$0..<min($0 + 4, code.count)]) == pops })
        // After the instruction, rsi, rdx, rcx, rbx are restored.
        #expect(Array(code[offset + 3..<offset + 7]) == [0x5E, 0x5A, 0x59, 0x5B])
    }

    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func enableCapabilityTakesAtMostFourArguments() throws {
        let vm = try KVMSystem().createVirtualMachine()
        #expect(throws: KVMUsageError.self) { try vm.enableCapability(.exitHypercall, arguments: [1, 2, 3, 4, 5]) }
    }
}
