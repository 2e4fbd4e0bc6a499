import GuestKit
import KVM
import X86

/// Suite `cpuid`: what KVM_SET_CPUID2 sets is what KVM_GET_CPUID2 returns and
/// what the guest's CPUID sees, the premise of every CPU template (after the
/// kernel's cpuid_test). Each test clears XSAVE (CPUID.1:ECX[26]) first, the
/// bit Kestrel's `nested` template hides.
public enum CPUIDSuite {
    public static let name = "cpuid"

    /// XSAVE: CPUID.1:ECX[26].
    static let xsave = CPUFeature(name: "XSAVE", leaf: 1, register: .ecx, bit: 26)

    public static func tests() -> [ConformanceTest] {
        [
            ConformanceTest(suite: name, name: "get_returns_set",
                            summary: "KVM_GET_CPUID2 returns every entry KVM_SET_CPUID2 set (XSAVE cleared), but for leaf 0xD sub-leaves 0 and 1, which follow XCR0 and XSS") {
                try getReturnsSet($0)
            },
            ConformanceTest(suite: name, name: "guest_sees_set",
                            summary: "the guest's CPUID leaf 1 shows XSAVE clear after KVM_SET_CPUID2 cleared it") { try guestSeesSet($0) },
        ]
    }

    /// Entries KVM updates at run time, as the kernel's cpuid_test excludes them.
    static func isRuntimeManaged(_ entry: CPUIDEntry) -> Bool {
        entry.function == 0xD && (entry.index == 0 || entry.index == 1)
    }

    static func maskedTable(_ context: TestContext) -> CPUIDTable {
        xsave.setting(false, in: context.host.supportedCPUID)
    }

    static func describe(_ entry: CPUIDEntry) -> String {
        let hex = { (value: UInt32) in "0x" + String(value, radix: 16) }
        return "eax \(hex(entry.eax)) ebx \(hex(entry.ebx)) ecx \(hex(entry.ecx)) edx \(hex(entry.edx))"
    }

    static func getReturnsSet(_ context: TestContext) throws {
        let table = maskedTable(context)
        let vm = try context.kvm.createVirtualMachine()
        let vcpu = try vm.createVCPU()
        try vcpu.setCPUID(table)
        let returned = try vcpu.cpuid()
        var differences: [String] = []
        for entry in table.entries where !isRuntimeManaged(entry) {
            let leaf = "leaf 0x\(String(entry.function, radix: 16)).\(entry.index)"
            guard let got = returned.entries.first(where: { $0.function == entry.function && $0.index == entry.index }) else {
                differences.append("\(leaf) is missing")
                continue
            }
            if (got.eax, got.ebx, got.ecx, got.edx, got.flags) != (entry.eax, entry.ebx, entry.ecx, entry.edx, entry.flags) {
                differences.append("\(leaf): set \(describe(entry)), got \(describe(got))")
            }
        }
        if returned.entries.count != table.entries.count {
            differences.append("\(table.entries.count) entries set, \(returned.entries.count) returned")
        }
        context.note("\(table.entries.count) entries set, \(returned.entries.count) returned")
        try context.expect(differences.isEmpty, "KVM_GET_CPUID2 differs from what KVM_SET_CPUID2 set: " + differences.prefix(6).joined(separator: "; "))
    }

    static func guestSeesSet(_ context: TestContext) throws {
        let table = maskedTable(context)
        let program = GuestProgram()
        let a = program.assembler
        a.mov(.rax, 1)
        a.mov(.rcx, 0)
        a.cpuid()
        a.mov(.r8, .rcx)
        program.sync(stage: 1, .reg(.r8))
        program.done()
        let machine = try GuestMachine(kvm: context.kvm, cpuid: table)
        try machine.loadLongMode(program)
        let values = try machine.expectSync(stage: 1)
        try machine.expectDone()
        let ecx = UInt32(truncatingIfNeeded: values[0])
        let set = table.entry(function: 1)?.ecx ?? 0
        context.note("CPUID.1:ECX set 0x\(String(set, radix: 16)), guest saw 0x\(String(ecx, radix: 16))")
        try context.expect(ecx & (1 << 26) == 0,
                           "the guest's CPUID.1:ECX is 0x\(String(ecx, radix: 16)) with XSAVE (bit 26) set, although KVM_SET_CPUID2 cleared it (set 0x\(String(set, radix: 16)))")
    }
}
