import KVM
import Testing
@testable import X86

@Suite(.timeLimit(.minutes(5))) struct CPUFeatureTests {
    let table = CPUIDTable(entries: [
        CPUIDEntry(function: 7, index: 0, flags: CPUIDEntry.significantIndexFlag, ecx: 1 << 7, edx: 1 << 20),
        CPUIDEntry(function: 7, index: 1, flags: CPUIDEntry.significantIndexFlag, eax: 1 << 18),
    ])

    @Test func bitsAreReadFromTheRightLeafAndRegister() {
        #expect(CPUFeature.shadowStack.isPresent(in: table))
        #expect(CPUFeature.indirectBranchTracking.isPresent(in: table))
        #expect(!CPUFeature.fred.isPresent(in: table))
        #expect(CPUFeature.lkgs.isPresent(in: table))
        #expect(!CPUFeature.shadowStack.isPresent(in: CPUIDTable(entries: [])))
    }

    @Test func settingAndClearingBits() {
        let cleared = CPUFeature.shadowStack.setting(false, in: table)
        #expect(!CPUFeature.shadowStack.isPresent(in: cleared))
        #expect(CPUFeature.indirectBranchTracking.isPresent(in: cleared))
        let withFRED = CPUFeature.fred.setting(true, in: table)
        #expect(CPUFeature.fred.isPresent(in: withFRED))
        #expect(CPUFeature.lkgs.isPresent(in: withFRED))
    }

    @Test func msrCatalogue() {
        #expect(ModelSpecificRegister.cet.map(\.index) == [0x6A0, 0x6A2, 0x6A4, 0x6A5, 0x6A6, 0x6A7, 0x6A8])
        #expect(ModelSpecificRegister.fred.map(\.index) == Array(0x1CC...0x1D4))
        #expect(ModelSpecificRegister.pl0SSP.requiresAnyOf == [.shadowStack])
        #expect(ControlBits.cr4FRED == 1 << 32)
        #expect(ControlBits.cr4CET == 1 << 23)
    }

    @Test func supportedXSSBitsComeFromLeafDSubleaf1() {
        let table = CPUIDTable(entries: [
            CPUIDEntry(function: 0xD, index: 1, flags: CPUIDEntry.significantIndexFlag, ecx: 0x1800, edx: 0x1),
        ])
        let supported = XSSBits.supported(in: table)
        #expect(supported & XSSBits.cetUser != 0)
        #expect(supported & XSSBits.cetSupervisor != 0)
        #expect(supported >> 32 == 1)
        #expect(XSSBits.supported(in: CPUIDTable(entries: [])) == 0)
    }
}
