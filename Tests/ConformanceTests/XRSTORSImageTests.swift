import KVM
import Testing
@testable import Conformance

/// The compacted images `cet_msrs.xrstors_compacted_offsets` hands the
/// guest: component offsets from CPUID leaf 0xD, and the header and values
/// at those offsets.
struct XRSTORSImageTests {
    static func cpuid(cetUserAligned: Bool = false) -> CPUIDTable {
        CPUIDTable(entries: [
            CPUIDEntry(function: 0xD, index: 2, flags: CPUIDEntry.significantIndexFlag, eax: 256, ebx: 576),
            CPUIDEntry(function: 0xD, index: 9, flags: CPUIDEntry.significantIndexFlag, eax: 8, ebx: 2688),
            CPUIDEntry(function: 0xD, index: 11, flags: CPUIDEntry.significantIndexFlag, eax: 16, ecx: (cetUserAligned ? 0x2 : 0) | 0x1),
        ])
    }

    static func quadword(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    @Test func componentsFollowTheLegacyAreaAndHeaderInOrderAlignedWhereCPUIDSays() throws {
        #expect(try XRSTORSCompactedOffsetTest.offsets(of: [11], cpuid: Self.cpuid()) == [11: 576])
        #expect(try XRSTORSCompactedOffsetTest.offsets(of: [11, 2], cpuid: Self.cpuid()) == [2: 576, 11: 832])
        // PKRU (8 bytes) before CET_U: 584, or 640 when CET_U asks for 64-byte alignment.
        #expect(try XRSTORSCompactedOffsetTest.offsets(of: [9, 11], cpuid: Self.cpuid()) == [9: 576, 11: 584])
        #expect(try XRSTORSCompactedOffsetTest.offsets(of: [9, 11], cpuid: Self.cpuid(cetUserAligned: true)) == [9: 576, 11: 640])
        #expect(throws: TestFailure.self) { try XRSTORSCompactedOffsetTest.offsets(of: [5], cpuid: Self.cpuid()) }
    }

    @Test func theImageWithAnAVXGapHoldsBothValuesAndACompactedHeader() throws {
        let gap = XRSTORSCompactedOffsetTest.cases[1]
        let image = try XRSTORSCompactedOffsetTest.image(for: gap, cpuid: Self.cpuid())
        #expect(image.count == 4096)
        #expect(Self.quadword(image, at: 24) & 0xFFFF_FFFF == 0x1F80, "MXCSR")
        #expect(Self.quadword(image, at: 512) == 0x804, "XSTATE_BV: AVX and CET_U")
        #expect(Self.quadword(image, at: 520) == 0x8000_0000_0000_0804, "XCOMP_BV: compacted, AVX and CET_U")
        #expect((528..<576).allSatisfy { image[$0] == 0 }, "the rest of the header is zero")
        #expect(Self.quadword(image, at: 576) == XRSTORSCompactedOffsetTest.gapValue)
        #expect(Self.quadword(image, at: 832) == XRSTORSCompactedOffsetTest.cetValue)
        #expect(Self.quadword(image, at: 840) == 0, "PL3_SSP")
        #expect(XRSTORSCompactedOffsetTest.mask(gap.requested) == 0x800)
        let alone = try XRSTORSCompactedOffsetTest.image(for: XRSTORSCompactedOffsetTest.cases[0], cpuid: Self.cpuid())
        #expect(Self.quadword(alone, at: 520) == 0x8000_0000_0000_0800 && Self.quadword(alone, at: 576) == XRSTORSCompactedOffsetTest.cetValue)
    }
}
