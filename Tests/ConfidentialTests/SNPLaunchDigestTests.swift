import Confidential
import Crypto
import Foundation
import Testing

/// The SNP launch digest: our SHA-384 against swift-crypto's, and the
/// PAGE_INFO chain against sev-snp-measure (PyPI), the tool verifiers use to
/// compute expected measurements.
@Suite struct SNPLaunchDigestTests {
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

    static var oracle: String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = Pipe()
        guard (try? process.run()) != nil else { return nil }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func matchesSevSnpMeasure() throws {
        var digest = SNPLaunchDigest()
        digest.updateNormal(at: 0x10_0000, data: (0..<8192).map { UInt8(($0 * 7 + 3) % 256) })
        digest.update(.zero, at: 0x20_0000, pages: 3)
        digest.update(.unmeasured, at: 0x30_0000, pages: 1)
        digest.update(.secrets, at: 0x40_0000)
        digest.update(.cpuid, at: 0x40_1000)
        digest.update(.vmsa, at: SNPLaunchDigest.vmsaGuestPhysicalAddress, contents: Array((0..<4096).map { UInt8($0 % 256) }))
        // scripts/prepare-host test installs sev-snp-measure (PyPI); without it this fails, naming it.
        let expected = try #require(Self.oracle, "python3 with sev-snp-measure (pip install sev-snp-measure==0.0.13) is needed")
        #expect(digest.hex == expected)
    }
}
