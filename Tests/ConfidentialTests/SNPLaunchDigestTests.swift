import Confidential
import Crypto
import Foundation
import KestrelTesting
import Testing

/// The SNP launch digest: our SHA-384 against swift-crypto's, and the
/// PAGE_INFO chain against sev-snp-measure (PyPI), the tool verifiers use to
/// compute expected measurements.
@Suite(.timeLimit(.minutes(5))) struct SNPLaunchDigestTests {
    @Test(arguments: [0, 1, 111, 112, 127, 128, 129, 4096, 10_000])
    func sha384MatchesSwiftCrypto(length: Int) {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(SHA384.hash(bytes) == Array(Crypto.SHA384.hash(data: bytes)), "\(length) bytes")
    }

    @Test func knownAnswer() {
        // FIPS 180-4 example: SHA-384("abc").
        #expect(SNPLaunchDigest(seed: SHA384.hash(Array("abc".utf8))).hex
            == "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7")
    }

    /// A launch of every page type, digested here and by sev-snp-measure's GCTX.
    static let script = """
        import sys
        from sevsnpmeasure.gctx import GCTX
        g = GCTX()
        page = bytes((i * 7 + 3) % 256 for i in range(8192))
        g.update_normal_pages(0x100000, page)
        g.update_zero_pages(0x200000, 3 * 4096)
        g.update_unmeasured_pages(0x300000, 4096)
        g.update_secrets_page(0x400000)
        g.update_cpuid_page(0x401000)
        g.update_vmsa_page(bytes(range(256)) * 16)
        print(g.hex_ld())
        """

    @Test func matchesSevSnpMeasure() throws {
        var digest = SNPLaunchDigest()
        digest.updateNormal(at: 0x10_0000, data: (0..<8192).map { UInt8(($0 * 7 + 3) % 256) })
        digest.update(.zero, at: 0x20_0000, pages: 3)
        digest.update(.unmeasured, at: 0x30_0000, pages: 1)
        digest.update(.secrets, at: 0x40_0000)
        digest.update(.cpuid, at: 0x40_1000)
        digest.update(.vmsa, at: SNPLaunchDigest.vmsaGuestPhysicalAddress, contents: Array((0..<4096).map { UInt8($0 % 256) }))
        // scripts/prepare-host test installs sev-snp-measure (PyPI); without it this fails, naming it.
        let expected = try #require(sevSnpMeasure(Self.script), "python3 with sev-snp-measure (pip install sev-snp-measure==0.0.13) is needed")
        #expect(digest.hex == expected)
    }
}

/// The VMSA page against sev-snp-measure's model of what KVM builds for
/// QEMU's reset state (its VMSA.build_save_area): the same layout, field by
/// field, so the page a VMM's own initial state gives is measured right.
@Suite(.timeLimit(.minutes(5))) struct SNPVMSATests {
    /// QEMU's reset state, which sev-snp-measure models; Kestrel's own reset-state page.
    static func resetState(eip: UInt64, sevFeatures: UInt64, signature: UInt64) -> SNPVMSA {
        SNPVMSA.resetState(eip: eip, sevFeatures: sevFeatures, signature: signature)
    }

    @Test func theResetStatePageMatchesSevSnpMeasure() throws {
        let script = """
            from sevsnpmeasure.vmsa import VMSA
            print(bytes(VMSA.build_save_area(0xfffffff0, 0x1, 0x800f12)).hex())
            print(bytes(VMSA.build_save_area(0x80b004, 0x21, 0xa00f11)).hex())
            """
        let lines = try #require(sevSnpMeasure(script), "python3 with sev-snp-measure is needed").split(separator: "\n")
        try #require(lines.count == 2)
        let hex = { (bytes: [UInt8]) in bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
        #expect(hex(Self.resetState(eip: 0xFFFF_FFF0, sevFeatures: 0x1, signature: 0x80_0F12).bytes) == lines[0], "the BSP's page")
        #expect(hex(Self.resetState(eip: 0x80_B004, sevFeatures: 0x21, signature: 0xA0_0F11).bytes) == lines[1], "an AP's page")
    }

    /// A whole launch in miniature: payload pages, then one VMSA per vCPU.
    @Test func aLaunchDigestWithVMSAsMatchesSevSnpMeasure() throws {
        let script = """
            from sevsnpmeasure.gctx import GCTX
            from sevsnpmeasure.vmsa import VMSA
            g = GCTX()
            g.update_normal_pages(0x1000000, bytes((i * 13) % 251 for i in range(3 * 4096)))
            g.update_cpuid_page(0x7000)
            g.update_secrets_page(0x8000)
            for eip in (0xfffffff0, 0x80b004):
                g.update_vmsa_page(bytes(VMSA.build_save_area(eip, 0x1, 0x800f12)))
            print(g.hex_ld())
            """
        var digest = SNPLaunchDigest()
        digest.updateNormal(at: 0x100_0000, data: (0..<(3 * 4096)).map { UInt8(($0 * 13) % 251) })
        digest.update(.cpuid, at: 0x7000)
        digest.update(.secrets, at: 0x8000)
        for eip: UInt64 in [0xFFFF_FFF0, 0x80_B004] {
            digest.update(.vmsa, at: SNPLaunchDigest.vmsaGuestPhysicalAddress, contents: Self.resetState(eip: eip, sevFeatures: 0x1, signature: 0x80_0F12).bytes)
        }
        #expect(digest.hex == (try #require(sevSnpMeasure(script), "python3 with sev-snp-measure is needed")))
    }
}
