import Testing
@testable import X86

@Suite(.timeLimit(.minutes(5))) struct CETControlRuleTests {
    static let both = CPUFeatureSet([.shadowStack, .indirectBranchTracking])
    static let shadowStackOnly = CPUFeatureSet([.shadowStack])
    static let ibtOnly = CPUFeatureSet([.indirectBranchTracking])
    static let none = CPUFeatureSet([])

    static func valid(_ index: UInt32, _ value: UInt64, _ features: CPUFeatureSet) -> Bool {
        MSRRules.validate(msr: index, value: value, for: features).isValid
    }

    /// Which single bits may be set, for each feature combination.
    static func expectedSingleBit(_ bit: Int, _ features: CPUFeatureSet) -> Bool {
        if (6...9).contains(bit) { return false }  // reserved
        if bit <= 1 { return features.contains(.shadowStack) }
        if !features.contains(.indirectBranchTracking) { return false }  // 5:2 and 63:10
        return bit != 12 && bit != 13  // legacy bitmap base must be 4-aligned
    }

    @Test(arguments: [ModelSpecificRegister.userCET.index, ModelSpecificRegister.supervisorCET.index])
    func everyBitUnderEveryFeatureCombination(_ index: UInt32) {
        for features in [Self.both, Self.shadowStackOnly, Self.ibtOnly] {
            for bit in 0..<64 {
                #expect(Self.valid(index, 1 << UInt64(bit), features) == Self.expectedSingleBit(bit, features),
                        "MSR 0x\(String(index, radix: 16)) bit \(bit) with \(features)")
            }
            #expect(Self.valid(index, 0, features))
        }
    }

    @Test func absentWithoutShadowStackAndIBT() {
        for index in [ModelSpecificRegister.userCET.index, ModelSpecificRegister.supervisorCET.index] {
            let validity = MSRRules.validate(msr: index, value: 0, for: Self.none)
            #expect(!validity.isValid)
            #expect(validity.description.contains("does not exist without SHSTK or IBT"))
        }
    }

    @Test func suppressAndWaitForEndbranchTogether() {
        let index = ModelSpecificRegister.userCET.index
        #expect(Self.valid(index, CETControl.suppress.rawValue, Self.ibtOnly))
        #expect(Self.valid(index, CETControl.waitForEndbranch.rawValue, Self.ibtOnly))
        let both = MSRRules.validate(msr: index, value: CETControl([.suppress, .waitForEndbranch]).rawValue, for: Self.both)
        #expect(both == .invalid("IA32_U_CET sets SUPPRESS (bit 10) together with WAIT_ENDBR (bit 11)"))
    }

    @Test func legacyBitmapAlignmentBoundaries() {
        let index = ModelSpecificRegister.supervisorCET.index
        for (value, valid) in [(UInt64(0x1000), false), (0x2000, false), (0x3000, false), (0x4000, true),
                               (0x5000, false), (0x8000, true), (0xFFFF_FFFF_FFFF_C000, true)] {
            #expect(Self.valid(index, value, Self.ibtOnly) == valid, "0x\(String(value, radix: 16))")
        }
        #expect(CETControl(rawValue: 0x4000).legacyBitmapBase == 4)
    }

    @Test func reasonsNameTheMSRAndTheRule() {
        #expect(MSRRules.validate(msr: 0x6A0, value: 1 << 7, for: Self.both)
                == .invalid("IA32_U_CET sets reserved bits 9:6 (0x80)"))
        #expect(MSRRules.validate(msr: 0x6A2, value: 1, for: Self.ibtOnly)
                == .invalid("IA32_S_CET sets bits 1:0 (0x1), which need SHSTK"))
        #expect(MSRRules.validate(msr: 0x6A2, value: 4, for: Self.shadowStackOnly)
                == .invalid("IA32_S_CET sets bits 5:2 or 63:10 (0x4), which need IBT"))
    }
}

@Suite(.timeLimit(.minutes(5))) struct ShadowStackPointerRuleTests {
    static let shadowStack = CPUFeatureSet([.shadowStack])
    static let pointerMSRs: [UInt32] = [0x6A4, 0x6A5, 0x6A6, 0x6A7]

    @Test(arguments: pointerMSRs)
    func alignmentAndCanonicalBoundaries(_ index: UInt32) {
        let cases: [(UInt64, Bool)] = [
            (0, true), (0x1234_5678_9000, true), (0x1234_5678_9001, false), (0x1234_5678_9002, false),
            (0x1234_5678_9003, false), (0x1234_5678_9004, true),
            (0x0000_7FFF_FFFF_FFFC, true), (0x0000_8000_0000_0000, false),
            (0xFFFF_8000_0000_0000, true), (0xFFFF_7FFF_FFFF_FFFC, false), (0xAAAA_AAAA_AAAA_AAAA, false),
        ]
        for (value, valid) in cases {
            #expect(MSRRules.validate(msr: index, value: value, for: Self.shadowStack).isValid == valid,
                    "0x\(String(index, radix: 16)) = 0x\(String(value, radix: 16))")
        }
        #expect(MSRRules.validate(msr: index, value: 0x1000, for: CPUFeatureSet([.indirectBranchTracking]))
                == .invalid("\(ModelSpecificRegister.catalogue[index]!.name) does not exist without SHSTK"))
    }

    @Test func interruptSSPTableNeedsNoAlignment() {
        #expect(MSRRules.validate(msr: 0x6A8, value: 0x1234_5678_9001, for: Self.shadowStack).isValid)
        #expect(!MSRRules.validate(msr: 0x6A8, value: 0x0000_8000_0000_0000, for: Self.shadowStack).isValid)
        #expect(!MSRRules.validate(msr: 0x6A8, value: 0, for: CPUFeatureSet([])).isValid)
    }

    @Test func guestSSP() {
        #expect(MSRRules.validateGuestSSP(0x1000, for: Self.shadowStack).isValid)
        #expect(MSRRules.validateGuestSSP(0x1002, for: Self.shadowStack) == .invalid("GUEST_SSP 0x1002 is not 4-byte aligned"))
        #expect(!MSRRules.validateGuestSSP(0xFFFF_0000_0000_0000, for: Self.shadowStack).isValid)
        #expect(MSRRules.validateGuestSSP(0x1000, for: CPUFeatureSet([])) == .invalid("GUEST_SSP does not exist without SHSTK"))
    }

    @Test func canonicalWithFiveLevelPaging() {
        #expect(CanonicalAddress.isCanonical(0x00FF_FFFF_FFFF_FFFF, virtualAddressBits: 57))
        #expect(!CanonicalAddress.isCanonical(0x0100_0000_0000_0000, virtualAddressBits: 57))
        #expect(!CanonicalAddress.isCanonical(0x00FF_FFFF_FFFF_FFFF))
    }
}

@Suite(.timeLimit(.minutes(5))) struct FREDRuleTests {
    static let fred = CPUFeatureSet([.fred])

    @Test func fredMSRsExistOnlyWithFRED() {
        for msr in ModelSpecificRegister.fred {
            #expect(!MSRRules.validate(msr: msr.index, value: 0, for: CPUFeatureSet([.shadowStack])).isValid, "\(msr)")
            #expect(MSRRules.validate(msr: msr.index, value: 0, for: Self.fred).isValid, "\(msr)")
        }
    }

    @Test func stackPointersAndEntryMustBeCanonical() {
        for msr in [ModelSpecificRegister.fredRSP0, .fredRSP3, .fredSSP1, .fredSSP3] {
            #expect(MSRRules.validate(msr: msr.index, value: 0xFFFF_8000_0000_1000, for: Self.fred).isValid)
            #expect(!MSRRules.validate(msr: msr.index, value: 0x8000_0000_0000, for: Self.fred).isValid)
        }
        #expect(MSRRules.validate(msr: 0x1D4, value: 0x1234_5678_9000 | 1, for: Self.fred).isValid)
        #expect(MSRRules.validate(msr: 0x1D4, value: 0x8000_0000_0000, for: Self.fred)
                == .invalid("IA32_FRED_CONFIG entry point 0x800000000000 is not a canonical address"))
        #expect(MSRRules.validate(msr: 0x1D0, value: UInt64.max, for: Self.fred).isValid)
    }

    @Test func configurationLayout() {
        let config = FREDConfiguration(entryPoint: 0x1234_5678_9ABC, currentStackLevel: 3)
        #expect(config.rawValue == 0x1234_5678_9003)
        #expect(config.entryPoint == 0x1234_5678_9000)
        #expect(config.ringZeroEntry == 0x1234_5678_9100)
        #expect(config.currentStackLevel == 3)
    }

    @Test func stackLevelsLayout() {
        var levels = FREDStackLevels()
        for vector in 0..<32 {
            levels.setLevel(UInt8(vector % 4), forVector: vector)
        }
        for vector in 0..<32 { #expect(levels.level(forVector: vector) == UInt8(vector % 4)) }
        #expect(FREDStackLevels(rawValue: 0b11 << 6).level(forVector: 3) == 3)
    }

    @Test func frameFields() throws {
        let ss: UInt64 = 0x18 | 0x20 << 32 | 4 << 48 | 1 << 58 | 2 << 60
        let frame = try #require(FREDFrame(qwords: [0, 0x10012, 0x8, 0x2, 0x1FF000, ss, 0, 0]))
        #expect(FREDFrame(qwords: [0, 0x10012, 0x8, 0x2, 0x1FF000, ss, 0]) == nil, "7 qwords are not a frame")
        #expect(FREDFrame(qwords: Array(repeating: 0, count: 9)) == nil, "nor are 9")
        #expect(frame.vector == 0x20)
        #expect(frame.eventType == .softwareInterrupt)
        #expect(frame.isNested)
        #expect(frame.instructionLength == 2)
        #expect(frame.rip == 0x10012)
    }

    @Test func otherMSRsHaveNoRules() {
        #expect(MSRRules.validate(msr: ModelSpecificRegister.efer.index, value: .max, for: CPUFeatureSet([])).isValid)
        #expect(MSRRules.validate(msr: 0xC000_0103, value: 5, for: CPUFeatureSet([])).isValid)
        #expect(!MSRRules.validate(msr: 0xDA0, value: 0, for: CPUFeatureSet([])).isValid)  // XSS needs XSAVES
        #expect(XSSBits.cetUser == 0x800 && XSSBits.cetSupervisor == 0x1000)
    }
}
