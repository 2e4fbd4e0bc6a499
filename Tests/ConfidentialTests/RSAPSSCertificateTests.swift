import ConfidentialTools
import Foundation
import Testing

/// AMD's ASK and ARK carry RSASSA-PSS public keys, which the X509 module does
/// not parse; the summary then reads the TBSCertificate fields itself.
@Suite(.timeLimit(.minutes(5))) struct RSAPSSCertificateTests {
    /// A self-signed RSASSA-PSS certificate made with openssl for this test
    /// (CN=SEV-Test-ASK, O=Kestrel fixture, 3650 days from 2026-11-21).
    static let fixture: [UInt8] = Array(Data(base64Encoded: [
        "MIICpDCCAdmgAwIBAgIUFwbwsiBFll6XNi42dCr0IJVebo8wQQYJKoZIhvcNAQEKMDSgDzANBglghkgBZQMEAgEFAKEcMBoG",
        "CSqGSIb3DQEBCDANBglghkgBZQMEAgEFAKIDAgFeMDExFTATBgNVBAMMDFNFVi1UZXN0LUFTSzEYMBYGA1UECgwPS2VzdHJl",
        "bCBmaXh0dXJlMB4XDTI2MTEyMTEwNTUzOVoXDTM2MTExODEwNTUzOVowMTEVMBMGA1UEAwwMU0VWLVRlc3QtQVNLMRgwFgYD",
        "VQQKDA9LZXN0cmVsIGZpeHR1cmUwgZ0wCwYJKoZIhvcNAQEKA4GNADCBiQKBgQDIrf6HhpBQ45NMzmaHNL2MFAOhcJ9OYGBa",
        "2VbDj2QbjGfwjC+O+zV9hnFV0ang3S9gw8xOAC3NwGPNI+H26Wdd5X++0QLfFKlBzWeBE5FwSB68wGBa1jqvvNzjgmoDcpXd",
        "gvp8icFtfbvPpXJAleson97pMKTaU/fsLBtG1OfrvQIDAQABo1MwUTAdBgNVHQ4EFgQUynbsWWIA5yOyaHsXi42r9ULDXWAw",
        "HwYDVR0jBBgwFoAUynbsWWIA5yOyaHsXi42r9ULDXWAwDwYDVR0TAQH/BAUwAwEB/zBBBgkqhkiG9w0BAQowNKAPMA0GCWCG",
        "SAFlAwQCAQUAoRwwGgYJKoZIhvcNAQEIMA0GCWCGSAFlAwQCAQUAogMCAV4DgYEADuE2Q+yu/9cmm9obzxWFHRvECrRUl2MU",
        "qXHuw41pD/hyTzc+2vNRFtlvsvMTSwbqRoYfG0k35ANybmnEgu3Kbw5m2mAMZjWUkohvb4dDuikBMiblYATobgLliPuLIy2C",
        "4okawEuwwYfLuK6o4XPUjral9dVC91twmS6erLKNkLc=",
    ].joined())!)

    @Test func summaryReadsRSAPSSCertificates() throws {
        let summary = try CertificateSummary.inspect(Self.fixture).get()
        #expect(summary.subject == "O=Kestrel fixture,CN=SEV-Test-ASK")
        #expect(summary.issuer == summary.subject)
        #expect(summary.notValidAfter.timeIntervalSince(summary.notValidBefore) == 3650 * 24 * 3600)  // openssl -days 3650
        #expect(summary.notValidBefore > Date(timeIntervalSince1970: 1_790_000_000))
    }
}
