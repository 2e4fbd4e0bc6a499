import Foundation
import KVM
import Testing
@testable import X86

@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5)))
struct VCPUSnapshotTests {
    func makeVCPU(_ kvm: KVMSystem) throws -> VCPU {
        let vcpu = try kvm.createVirtualMachine().createVCPU()
        try vcpu.setCPUID(kvm.supportedCPUID())
        return vcpu
    }

    @Test func roundTripRestoresWhatWasCaptured() throws {
        let kvm = try KVMSystem()
        let vcpu = try makeVCPU(kvm)
        var registers = try vcpu.registers()
        registers.r12 = 0xCAFE
        try vcpu.setRegisters(registers)
        try vcpu.setMSRs([MSREntry(index: 0x174, value: 0x42)])
        let snapshot = try VCPUSnapshot.capture(vcpu, system: kvm)
        #expect(snapshot.msrs.contains(MSREntry(index: 0x174, value: 0x42)))

        // Disturb the state, restore, and read everything back.
        registers.r12 = 0
        try vcpu.setRegisters(registers)
        try vcpu.setMSRs([MSREntry(index: 0x174, value: 0)])
        try snapshot.restore(into: vcpu)
        let again = try VCPUSnapshot.capture(vcpu, system: kvm)
        #expect(again.registers.r12 == 0xCAFE)
        #expect(try vcpu.msr(0x174) == 0x42)
        #expect(again.msrs.map(\.index) == snapshot.msrs.map(\.index))
        #expect(again.registers.rip == snapshot.registers.rip)
        #expect(again.specialRegisters.cr0 == snapshot.specialRegisters.cr0)

        // A refused MSR that really differs is an error naming it.
        var unrestorable = snapshot
        unrestorable.msrs.append(MSREntry(index: 0x4B56_4D06, value: 0x21))  // MSR_KVM_ASYNC_PF_INT, vector 0x21
        if (try? vcpu.setMSRs([MSREntry(index: 0x4B56_4D06, value: 0x21)])) == 0 {
            #expect(throws: VCPUSnapshot.RestoreError.msrRefused(index: 0x4B56_4D06, name: "MSR 0x4b564d06")) {
                try unrestorable.restore(into: vcpu)
            }
        }

        // Into a fresh vCPU of another VM as well.
        let other = try makeVCPU(kvm)
        try snapshot.restore(into: other)
        #expect(try other.registers().r12 == 0xCAFE)
        #expect(try other.msr(0x174) == 0x42)
    }

    @Test func capturesCETAndFREDStateExactlyWhenListed() throws {
        let kvm = try KVMSystem()
        let listed = Set(try kvm.msrIndexList())
        let snapshot = try VCPUSnapshot.capture(try makeVCPU(kvm), system: kvm)
        let captured = Set(snapshot.msrs.map(\.index))
        for msr in [ModelSpecificRegister.xss] + ModelSpecificRegister.cet + ModelSpecificRegister.fred {
            if !listed.contains(msr.index) { #expect(!captured.contains(msr.index), "\(msr) captured but not listed") }
            if listed.contains(msr.index) && msr.requiresAnyOf.contains(where: snapshot.features.contains) {
                #expect(captured.contains(msr.index), "\(msr) listed and supported but not captured")
            }
        }
        let hasShadowStack = snapshot.features.contains(.shadowStack)
        #expect((snapshot.guestSSP != nil) == hasShadowStack)
    }

    @Test func refusesValuesThatBreakTheRulesAndWritesNothing() throws {
        let kvm = try KVMSystem()
        let vcpu = try makeVCPU(kvm)
        var snapshot = try VCPUSnapshot.capture(vcpu, system: kvm)
        snapshot.registers.r13 = 0x5555
        snapshot.msrs.append(MSREntry(index: ModelSpecificRegister.userCET.index, value: 1 << 7))
        let features = CPUFeatureSet(table: try vcpu.cpuid())
        let expectedRule = MSRRules.validate(msr: 0x6A0, value: 1 << 7, for: features).description
        #expect(throws: VCPUSnapshot.RestoreError.invalidValue(register: "IA32_U_CET", rule: expectedRule)) {
            try snapshot.restore(into: vcpu)
        }
        #expect(try vcpu.registers().r13 != 0x5555)

        var badSSP = try VCPUSnapshot.capture(vcpu, system: kvm)
        badSSP.guestSSP = 0x1001
        #expect(throws: VCPUSnapshot.RestoreError.self) { try badSSP.restore(into: vcpu) }
    }
}
