import GuestKit
import KVM
import X86

/// Suite `cet_msrs`: the CET rows of the kernel's msrs_test, on vCPUs with the
/// host's CPUID, with one of SHSTK/IBT only, and with both cleared; KVM's
/// save/restore list and GUEST_SSP in KVM_GET_REG_LIST.
public enum CETMSRSuite {
    public static let name = "cet_msrs"

    /// One MSR with the value a feature lets the guest write and values that
    /// must be refused.
    struct Row {
        let msr: ModelSpecificRegister
        /// The feature that makes `writeValue` writable.
        let feature: CPUFeature
        /// The other feature that makes the MSR exist (U_CET/S_CET), if any.
        let secondary: CPUFeature?
        let writeValue: UInt64
        let reservedValues: [UInt64]

        var label: String {
            secondary == nil ? msr.name : "\(msr.name).\(feature.name.lowercased())"
        }
    }

    static let canonicalValue: UInt64 = 0x1234_5678_9000
    static let nonCanonicalValue: UInt64 = 0xAAAA_AAAA_AAAA_AAAA

    static let rows: [Row] = {
        var rows: [Row] = []
        for msr in [ModelSpecificRegister.supervisorCET, .userCET] {
            rows.append(Row(msr: msr, feature: .shadowStack, secondary: .indirectBranchTracking,
                            writeValue: CETControl.shadowStackEnable.rawValue, reservedValues: [1 << 6]))
            rows.append(Row(msr: msr, feature: .indirectBranchTracking, secondary: .shadowStack,
                            writeValue: CETControl.endbranchEnable.rawValue, reservedValues: [1 << 6]))
        }
        for msr in [ModelSpecificRegister.pl0SSP, .pl1SSP, .pl2SSP, .pl3SSP] {
            rows.append(Row(msr: msr, feature: .shadowStack, secondary: nil, writeValue: canonicalValue,
                            reservedValues: [nonCanonicalValue, canonicalValue | 1]))
        }
        rows.append(Row(msr: .interruptSSPTable, feature: .shadowStack, secondary: nil, writeValue: canonicalValue,
                        reservedValues: [nonCanonicalValue]))
        return rows
    }()

    /// Which CET features the test vCPU keeps from the host's CPUID.
    enum Configuration: CaseIterable {
        case hostSupported, primaryOnly, secondaryOnly, bothCleared

        func name(for row: Row) -> String {
            switch self {
            case .hostSupported: return "supported"
            case .primaryOnly: return "only_\(row.feature.name.lowercased())"
            case .secondaryOnly: return "only_\(row.secondary?.name.lowercased() ?? "")"
            case .bothCleared: return "cleared"
            }
        }
    }

    public static func tests() -> [ConformanceTest] {
        var tests: [ConformanceTest] = []
        for row in rows {
            for configuration in Configuration.allCases {
                let requirements: [Requirement]
                let summary: String
                switch configuration {
                case .hostSupported:
                    requirements = [.cpuFeature(row.feature)]
                    summary = "with the host's CPUID: reset value, write/read-back, reserved values #GP, host get/set and ONE_REG agree"
                case .primaryOnly, .secondaryOnly:
                    guard let secondary = row.secondary else { continue }
                    requirements = [.cpuFeature(row.feature), .cpuFeature(secondary)]
                    summary = configuration == .primaryOnly
                        ? "with \(row.feature.name) only: as with the host's CPUID"
                        : "with \(secondary.name) only: the MSR exists but writing the \(row.feature.name) bit raises #GP"
                case .bothCleared:
                    requirements = []
                    summary = "with SHSTK and IBT cleared: RDMSR/WRMSR raise #GP, the host cannot set it"
                }
                tests.append(ConformanceTest(
                    suite: name, name: "\(row.label).\(configuration.name(for: row))", summary: summary,
                    requires: requirements
                ) { context in try run(row, configuration, context) })
            }
        }
        tests.append(XRSTORSCompactedOffsetTest.test)
        tests.append(ConformanceTest(
            suite: name, name: "save_restore_list",
            summary: "each CET MSR is in KVM_GET_MSR_INDEX_LIST exactly when the host supports its feature"
        ) { context in try saveRestoreList(context) })
        tests.append(ConformanceTest(
            suite: name, name: "guest_ssp",
            summary: "GUEST_SSP is in KVM_GET_REG_LIST exactly with SHSTK; otherwise ONE_REG on it fails with EINVAL"
        ) { context in try guestSSP(context) })
        return tests
    }

    /// The host's supported CPUID with SHSTK and/or IBT cleared per configuration.
    static func cpuid(for configuration: Configuration, row: Row, host: CPUIDTable) -> CPUIDTable {
        switch configuration {
        case .hostSupported: return host
        case .primaryOnly: return row.secondary.map { $0.setting(false, in: host) } ?? host
        case .secondaryOnly: return row.feature.setting(false, in: host)
        case .bothCleared:
            return CPUFeature.indirectBranchTracking.setting(false, in: CPUFeature.shadowStack.setting(false, in: host))
        }
    }

    static func run(_ row: Row, _ configuration: Configuration, _ context: TestContext) throws {
        let table = cpuid(for: configuration, row: row, host: context.host.supportedCPUID)
        let features = CPUFeatureSet(table: table)
        let index = row.msr.index
        let exists = row.msr.requiresAnyOf.contains(where: features.contains)
        let writable = MSRRules.validate(msr: index, value: row.writeValue, for: features).isValid
        context.note("vCPU features: \(features); \(row.msr) exists: \(exists); 0x\(String(row.writeValue, radix: 16)) writable: \(writable)")

        let probe = GuestMSRProbe(steps: [.read(index), .write(index, row.writeValue), .read(index)]
                                  + row.reservedValues.map { .write(index, $0) })
        let program = GuestProgram()
        probe.emit(into: program)
        let machine = try GuestMachine(kvm: context.kvm, cpuid: table)
        try machine.loadLongMode(program)

        func expectGP(_ outcome: GuestMSRProbe.Outcome, _ what: String) throws {
            try context.expectGeneralProtection(outcome.exception, what)
        }
        func expectNoException(_ outcome: GuestMSRProbe.Outcome, _ what: String) throws {
            if let exception = outcome.exception { throw TestFailure("\(what): unexpected \(exception)") }
        }

        // Step 0: RDMSR gives the reset value, or #GP when the MSR does not exist.
        let reset = try GuestMSRProbe.next(machine, stage: 0)
        if exists {
            try expectNoException(reset, "guest RDMSR \(row.msr)")
            try context.expectEqualHex(reset.value, 0, "guest RDMSR \(row.msr) reset value")
        } else {
            try expectGP(reset, "guest RDMSR \(row.msr) without \(row.msr.requiresAnyOf.map(\.name).joined(separator: "/"))")
        }
        // Steps 1-2: WRMSR of the row's value, then RDMSR.
        let write = try GuestMSRProbe.next(machine, stage: 1)
        let readBack = try GuestMSRProbe.next(machine, stage: 2)
        if writable {
            try expectNoException(write, "guest WRMSR \(row.msr) = 0x\(String(row.writeValue, radix: 16))")
            try expectNoException(readBack, "guest RDMSR \(row.msr) after the write")
            try context.expectEqualHex(readBack.value, row.writeValue, "guest RDMSR \(row.msr) after the write")
        } else if exists, write.exception == nil {
            throw TestFailure(try splitFeatureDiagnosis(row, table: table, machine: machine, readBack: readBack, context))
        } else {
            try expectGP(write, "guest WRMSR \(row.msr) = 0x\(String(row.writeValue, radix: 16)) without \(row.feature.name)")
        }
        // Remaining steps: every reserved or invalid value raises #GP.
        for (offset, value) in row.reservedValues.enumerated() {
            try expectGP(try GuestMSRProbe.next(machine, stage: 3 + offset), "guest WRMSR \(row.msr) = 0x\(String(value, radix: 16))")
        }
        try machine.expectDone()

        // Host side: the vCPU is stopped, with the guest's value in place.
        let vcpu = machine.vcpu
        let listed = try context.kvm.msrIndexList().contains(index)
        if writable {
            try context.expectEqualHex(try vcpu.msr(index), row.writeValue, "KVM_GET_MSRS \(row.msr)")
            try context.expectEqualHex(try vcpu.oneRegister(.msr(index)), row.writeValue, "KVM_GET_ONE_REG \(row.msr)")
            try context.expectEqual(try vcpu.setMSRs([MSREntry(index: index, value: 0)]), 1, "KVM_SET_MSRS \(row.msr) = 0 (MSRs written)")
            try context.expectEqualHex(try vcpu.oneRegister(.msr(index)), 0, "KVM_GET_ONE_REG \(row.msr) after the host wrote 0")
            for value in row.reservedValues {
                try context.expectEqual(try vcpu.setMSRs([MSREntry(index: index, value: value)]), 0,
                                        "KVM_SET_MSRS \(row.msr) = 0x\(String(value, radix: 16)) (MSRs written)")
                try context.expectErrno(.invalidArgument, "KVM_SET_ONE_REG \(row.msr) = 0x\(String(value, radix: 16))") {
                    try vcpu.setOneRegister(.msr(index), value)
                }
            }
        } else if exists {
            // The MSR exists through the other feature: KVM's own check refuses the value from the host too.
            try context.expectEqual(try vcpu.setMSRs([MSREntry(index: index, value: row.writeValue)]), 0,
                                    "KVM_SET_MSRS \(row.msr) = 0x\(String(row.writeValue, radix: 16)) without \(row.feature.name) (MSRs written)")
        } else {
            try context.expectEqual(try vcpu.setMSRs([MSREntry(index: index, value: row.writeValue)]), 0,
                                    "KVM_SET_MSRS \(row.msr) = 0x\(String(row.writeValue, radix: 16)) on a vCPU without the MSR (MSRs written)")
            let read = try vcpu.msrs([index])
            if listed {
                // KVM lets the host read a listed MSR of an absent feature as 0.
                try context.expect(read.isEmpty || read[0].value == 0, "KVM_GET_MSRS \(row.msr) on a vCPU without it gave 0x\(String(read[0].value, radix: 16))")
            } else {
                try context.expect(read.isEmpty, "KVM_GET_MSRS read \(row.msr), which this host does not support")
                try context.expectErrno(.invalidArgument, "KVM_GET_ONE_REG \(row.msr) on a host without it") {
                    _ = try vcpu.oneRegister(.msr(index))
                }
            }
        }
    }

    /// Why a vCPU that has the MSR only through the other feature could set
    /// this feature's bit, from two controls on the same vCPU setup: the
    /// host's KVM_SET_MSRS of the same value, and the same WRMSR through
    /// KVM's instruction emulator (when kvm.force_emulation_prefix is on).
    /// When both refuse it, KVM's own check (kvm_is_valid_u_s_cet) never saw
    /// the guest's write: the MSR was not intercepted, and the CPU, which
    /// has the feature, took it. kvm_intel 6.18 to 7.2 pass U_CET and S_CET
    /// through for reads and writes when the vCPU has either feature
    /// (vmx_recalc_msr_intercepts; FINDINGS.md section 17).
    static func splitFeatureDiagnosis(_ row: Row, table: CPUIDTable, machine: GuestMachine, readBack: GuestMSRProbe.Outcome,
                                      _ context: TestContext) throws -> String {
        let index = row.msr.index
        let value = "0x\(String(row.writeValue, radix: 16))"
        var text = "guest WRMSR \(row.msr) = \(value) without \(row.feature.name): expected #GP(0), got no exception"
            + (readBack.exception == nil ? " (RDMSR then gave 0x\(String(readBack.value, radix: 16)))" : "")
        let hostWritten = try machine.vcpu.setMSRs([MSREntry(index: index, value: row.writeValue)])
        text += "; KVM_SET_MSRS of the same value wrote \(hostWritten) of 1 MSRs"
        var emulatorRefused: Bool?
        if let fep = HostProbe.kvmParameter("force_emulation_prefix"), !["", "0", "N", "n"].contains(fep) {
            let probe = GuestMSRProbe(steps: [.emulatedWrite(index, row.writeValue)])
            let program = GuestProgram()
            probe.emit(into: program)
            let control = try GuestMachine(kvm: context.kvm, cpuid: table)
            try control.loadLongMode(program)
            let emulated = try GuestMSRProbe.next(control, stage: 0)
            try control.expectDone()
            emulatorRefused = emulated.exception?.matches(vector: 13, errorCode: 0) == true
            text += "; the same WRMSR through KVM's emulator (force_emulation_prefix) gave \(GuestMSRProbe.describe(emulated.exception))"
        } else {
            text += "; kvm.force_emulation_prefix is off, so the emulator control did not run"
        }
        if hostWritten == 0, emulatorRefused == true {
            text += ". KVM's own check refuses the value, so the guest's WRMSR did not reach KVM: the MSR is not intercepted"
                + " for this vCPU and the CPU, which has \(row.feature.name), accepted the bit"
                + " (kvm_intel passes U_CET and S_CET through when the vCPU has IBT or SHSTK; FINDINGS.md section 17)"
        } else if hostWritten == 0, emulatorRefused == nil {
            text += ". KVM's check refuses the value from the host, so the guest's write probably did not reach KVM"
                + " (with kvm.force_emulation_prefix on, the emulator control tells; FINDINGS.md section 17)"
        }
        return text
    }

    static func saveRestoreList(_ context: TestContext) throws {
        let listed = Set(try context.kvm.msrIndexList())
        for msr in ModelSpecificRegister.cet {
            let supported = msr.requiresAnyOf.contains(where: context.host.hasFeature)
            try context.expect(listed.contains(msr.index) == supported,
                               "\(msr) is \(listed.contains(msr.index) ? "" : "not ")in KVM_GET_MSR_INDEX_LIST, but the host "
                                   + "\(supported ? "supports" : "lacks") \(msr.requiresAnyOf.map(\.name).joined(separator: "/"))")
        }
    }

    static func guestSSP(_ context: TestContext) throws {
        let shadowStack = context.host.hasFeature(.shadowStack)
        let vm = try context.kvm.createVirtualMachine()
        let vcpu = try vm.createVCPU()
        try vcpu.setCPUID(context.host.supportedCPUID)
        let registers: [OneRegisterID]
        do {
            registers = try vcpu.registerList()
        } catch let error as SystemCallError where error.errno == .invalidArgument && context.host.capability(.oneRegister) == 0 {
            // x86 KVM gained KVM_GET_REG_LIST and ONE_REG with the CET series
            // (Linux 6.18); before that the ioctl is unknown on x86 vCPUs.
            try context.skip("this KVM has no KVM_GET_REG_LIST for x86 (\(error); KVM_CAP_ONE_REG is 0)")
        }
        let listed = registers.contains(.guestSSP)
        try context.expectEqual(listed, shadowStack, "GUEST_SSP in KVM_GET_REG_LIST (host SHSTK: \(shadowStack))")
        if shadowStack {
            try vcpu.setOneRegister(.guestSSP, canonicalValue)
            try context.expectEqualHex(try vcpu.oneRegister(.guestSSP), canonicalValue, "GUEST_SSP after KVM_SET_ONE_REG")
            try context.expectErrno(.invalidArgument, "KVM_SET_ONE_REG GUEST_SSP = unaligned 0x\(String(canonicalValue | 1, radix: 16))") {
                try vcpu.setOneRegister(.guestSSP, canonicalValue | 1)
            }
            try context.expectErrno(.invalidArgument, "KVM_SET_ONE_REG GUEST_SSP = non-canonical") {
                try vcpu.setOneRegister(.guestSSP, nonCanonicalValue)
            }
        } else {
            try context.expectErrno(.invalidArgument, "KVM_GET_ONE_REG GUEST_SSP without SHSTK") {
                _ = try vcpu.oneRegister(.guestSSP)
            }
        }
    }
}
