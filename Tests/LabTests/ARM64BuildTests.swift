import FoundationEssentials
import Glibc
@testable import Lab
import Testing

/// The arm64 build's pure parts: the SDK bundle's manifests, the source
/// fingerprint that keys the cache, and the check of the binary it makes.
/// The build itself runs in the lab pass
/// (`anARM64KestrelCrossCompilesWithDebiansToolchainAndRuns`).
@Suite(.timeLimit(.minutes(1))) struct ARM64BuildTests {
    /// An ELF header and program header table: 64-bit little endian, of
    /// `type` for `machine`, with one PT_LOAD and, with `interpreter`, a PT_INTERP.
    static func elf(type: UInt16 = 2, machine: UInt16 = 183, interpreter: Bool = false) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64 + 56 * 2)
        func put(_ value: Int, at offset: Int, width: Int) {
            for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        bytes.replaceSubrange(0..<6, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1])
        put(Int(type), at: 16, width: 2)
        put(Int(machine), at: 18, width: 2)
        put(64, at: 32, width: 8)          // e_phoff
        put(56, at: 54, width: 2)          // e_phentsize
        put(2, at: 56, width: 2)           // e_phnum
        put(1, at: 64, width: 4)           // PT_LOAD
        put(interpreter ? 3 : 1, at: 64 + 56, width: 4)
        return bytes
    }

    @Test func onlyAStaticAArch64ExecutablePasses() {
        #expect(ARM64Build.isStaticARM64Executable(Self.elf()))
        #expect(!ARM64Build.isStaticARM64Executable(Self.elf(interpreter: true)), "a dynamic executable names its interpreter")
        #expect(!ARM64Build.isStaticARM64Executable(Self.elf(machine: 62)), "x86_64")
        #expect(!ARM64Build.isStaticARM64Executable(Self.elf(type: 1)), "a relocatable object")
        #expect(!ARM64Build.isStaticARM64Executable(Array(Self.elf().prefix(100))), "a table past the end")
        #expect(!ARM64Build.isStaticARM64Executable([]))
        var bigEndian = Self.elf()
        bigEndian[5] = 2
        #expect(!ARM64Build.isStaticARM64Executable(bigEndian))
    }

    struct Info: Decodable {
        struct Artifact: Decodable {
            struct Variant: Decodable { let path: String; let supportedTriples: [String] }
            let type: String
            let variants: [Variant]
        }
        let schemaVersion: String
        let artifacts: [String: Artifact]
    }

    struct SDK: Decodable {
        struct Target: Decodable {
            let sdkRootPath: String
            let swiftResourcesPath: String
            let swiftStaticResourcesPath: String
            let toolsetPaths: [String]
        }
        let schemaVersion: String
        let targetTriples: [String: Target]
    }

    struct Toolset: Decodable {
        struct Tool: Decodable { let extraCLIOptions: [String] }
        let swiftCompiler: Tool
        let cCompiler: Tool
    }

    @Test func theBundlesManifestsNameTheSDKTheTripleAndTheResources() throws {
        let files = Dictionary(uniqueKeysWithValues: ARM64Build.bundleFiles())
        #expect(Set(files.keys) == ["info.json", "aarch64/swift-sdk.json", "aarch64/toolset.json"])
        func decode<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
            try JSONDecoder().decode(type, from: Data(try #require(files[name]).utf8))
        }
        let info = try decode(Info.self, "info.json")
        let sdk = try #require(info.artifacts[ARM64Build.sdkName])
        #expect(sdk.type == "swiftSDK" && sdk.variants.map(\.path) == ["aarch64"])
        // Debian's toolchain calls its own triple x86_64-pc-linux-gnu: the bundle must list it.
        #expect(sdk.variants.first?.supportedTriples.contains("x86_64-pc-linux-gnu") == true)
        let target = try #require(try decode(SDK.self, "aarch64/swift-sdk.json").targetTriples[ARM64Build.triple])
        #expect(target.sdkRootPath == "sysroot" && target.swiftResourcesPath == "sysroot/usr/lib/swift")
        #expect(target.swiftStaticResourcesPath == "sysroot/usr/lib/swift_static" && target.toolsetPaths == ["toolset.json"])
        let toolset = try decode(Toolset.self, "aarch64/toolset.json")
        #expect(toolset.swiftCompiler.extraCLIOptions == ["-use-ld=lld"] && toolset.cCompiler.extraCLIOptions == ["-fuse-ld=lld"])
    }

    @Test func theFingerprintFollowsSourcesAndToolchainButNotTests() throws {
        let package = try TemporaryDirectory(prefix: "kestrel-arm64-fingerprint")
        try makeDirectories(package.path + "/Sources/A")
        try makeDirectories(package.path + "/Tests/ATests")
        try writeFileAtomically(Array("// swift-tools-version:6.0\n".utf8), to: package.path + "/Package.swift")
        try writeFileAtomically(Array("let a = 1\n".utf8), to: package.path + "/Sources/A/a.swift")
        try writeFileAtomically(Array("// test\n".utf8), to: package.path + "/Tests/ATests/t.swift")
        let first = try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.3-1\n")
        #expect(try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.3-1\n") == first)
        try writeFileAtomically(Array("// changed test\n".utf8), to: package.path + "/Tests/ATests/t.swift")
        #expect(try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.3-1\n") == first, "tests are not in the binary")
        #expect(try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.4-1\n") != first, "another toolchain")
        try writeFileAtomically(Array("let a = 2\n".utf8), to: package.path + "/Sources/A/a.swift")
        let changed = try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.3-1\n")
        #expect(changed != first)
        try writeFileAtomically(Array("let b = 1\n".utf8), to: package.path + "/Sources/A/b.swift")
        #expect(try ARM64Build.sourceFingerprint(package: package.path, toolchain: "6.2.3-1\n") != changed, "a new file")
        #expect(throws: LabError.self) { try ARM64Build.sourceFingerprint(package: package.path + "/Sources", toolchain: "") }
    }

    @Test func theToolchainsVersionComesFromDpkgAndItsSourceVersionDropsTheBinNMU() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-arm64-dpkg")
        let status = """
            Package: swiftlang-doc
            Status: install ok installed
            Version: 9.9

            Package: swiftlang
            Status: deinstall ok config-files
            Version: 6.0.3-2

            Package: swiftlang
            Architecture: amd64
            Status: install ok installed
            Version: 6.2.3-1+b1

            """
        try writeFileAtomically(Array(status.utf8), to: directory.path + "/status")
        #expect(ARM64Build.installedVersion(of: "swiftlang", dpkgStatus: directory.path + "/status") == "6.2.3-1+b1")
        #expect(ARM64Build.installedVersion(of: "swiftlang-dev", dpkgStatus: directory.path + "/status") == nil)
        #expect(ARM64Build.installedVersion(of: "swiftlang", dpkgStatus: directory.path + "/missing") == nil)
        #expect(ARM64Build.sourceVersion("6.2.3-1+b1") == "6.2.3-1")
        #expect(ARM64Build.sourceVersion("6.2.3-1+b12") == "6.2.3-1")
        #expect(ARM64Build.sourceVersion("6.2.3-1") == "6.2.3-1")
        #expect(ARM64Build.sourceVersion("1.0+bpo1") == "1.0+bpo1", "only a binNMU's digits")
        #expect(ARM64Build.sourceVersion("1.0+b") == "1.0+b")
    }

    @Test func theRootsGitReadsGitHubFromTheBoundPackageCopies() {
        let text = ARM64Build.gitConfiguration
        #expect(text.hasPrefix("[url \"\(DebianRoot.boundDirectory)/\"]\n"))
        for address in ["https://github.com/", "git@github.com:", "ssh://git@github.com/"] {
            #expect(text.contains("\tinsteadOf = \(address)\n"))
        }
    }
}
