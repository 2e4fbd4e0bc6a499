import Glibc
@testable import Lab
import Testing
import TextFormat

/// The kernel patches under upstream/, proven in the lab: their selftests
/// fail on Debian's 7.2 and pass on `7.2-patched`, whose KVM modules are
/// rebuilt from the same source with the fixes applied.
extension LabIntegrationTests {
    /// The repository's upstream/ directory.
    static var upstreamDirectory: String {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) }
        return path + "/upstream"
    }

    /// Patch `number` (1: the fix, 2: its selftest) of every series, in series order.
    static func upstreamPatches(_ number: Int) throws -> [String] {
        let digits = String(number)
        let prefix = String(repeating: "0", count: max(0, 4 - digits.count)) + digits
        let series = directoryEntries(upstreamDirectory).filter { isDirectory(upstreamDirectory + "/" + $0) }.sorted()
        let patches = series.compactMap { name in
            directoryEntries(upstreamDirectory + "/" + name).filter { $0.hasPrefix(prefix + "-") && $0.hasSuffix(".patch") }.sorted().first
                .map { upstreamDirectory + "/" + name + "/" + $0 }
        }
        try #require(patches.count == series.count && !patches.isEmpty, "each series under \(upstreamDirectory) has a \(prefix)-*.patch")
        return patches
    }

    /// Records and builds `7.2-patched` (cached after the first build).
    static func buildPatchedKernel() throws {
        let arguments = ["lab", "kernels", "--build", "7.2-patched", "--from", "7.2"] + (try upstreamPatches(1)).flatMap { ["--patch", $0] }
        let build = try run(arguments, timeout: 1800)
        try #require(build.status == 0, "\(build.errors.suffix(3000))")
    }

    @Test func theUpstreamPatchesAreProvenByTheirSelftests() throws {
        try Self.buildPatchedKernel()
        let built = try Self.run(["lab", "selftests", "--from", "7.2"] + (try Self.upstreamPatches(2)).flatMap { ["--patch", $0] }
                                 + ["--program", "x86/emulated_mov_cr_test", "--program", "set_memory_region_test"], timeout: 1800)
        try #require(built.status == 0, "\(built.errors.suffix(3000))")
        let paths = Dictionary(uniqueKeysWithValues: built.output.split(separator: "\n").compactMap { line -> (String, String)? in
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingPrefix(while: { $0 == " " }) }
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        })
        let cr = try #require(paths["x86/emulated_mov_cr_test"], "\(built.output)")
        let vectoring = try #require(paths["set_memory_region_test"], "\(built.output)")
        let script = """
            echo "fep $(cat /sys/module/kvm/parameters/force_emulation_prefix)"
            # The selftests print "==== Test Assertion Failure ====": the sections here start with "@@ ".
            ./emulated_mov_cr_test > /tmp/cr 2>&1; echo "@@ cr $?"; cat /tmp/cr
            ./set_memory_region_test 1 > /tmp/vectoring 2>&1; echo "@@ vectoring $?"; cat /tmp/vectoring
            """
        for kernel in ["7.2", "7.2-patched"] {
            let run = try Self.run(["lab", "run", "--kernel", kernel, "--add", "\(cr):/lab/emulated_mov_cr_test",
                                    "--add", "\(vectoring):/lab/set_memory_region_test", "--", script], timeout: 900)
            print("the upstream selftests on \(kernel):\n\(run.output.suffix(3000))")
            #expect(run.status == 0, "\(run.errors.suffix(3000))")
            #expect(run.output.hasPrefix("fep 1\n"), "the L1 loads kvm with force_emulation_prefix set: \(run.output.prefix(200))")
            let sections = Dictionary(run.output.components(separatedBy: "@@ ").dropFirst().map { section -> (String, (Int, String)) in
                let header = section.prefix { $0 != "\n" }.split(separator: " ")
                return (String(header.first ?? ""), (Int(header.last ?? "") ?? -1, String(section)))
            }, uniquingKeysWith: { first, _ in first })
            let crResult = try #require(sections["cr"]), vectoringResult = try #require(sections["vectoring"])
            if kernel == "7.2" {
                #expect(crResult.0 != 0 && crResult.1.contains("MOV to CR0 with bit 32 set: expected #GP, got vector 0"),
                        "without the fix the emulator drops bits 63:32: \(crResult.1)")
                #expect(vectoringResult.0 != 0 && vectoringResult.1.contains("Testing MMIO during interrupt vectoring error handling")
                        && vectoringResult.1.contains("Unexpected suberror = 1"),
                        "without the fix SVM misses the interrupt being delivered: \(vectoringResult.1)")
            } else {
                #expect(crResult.0 == 0, "\(crResult.1)")
                #expect(vectoringResult.0 == 0 && vectoringResult.1.contains("Testing MMIO during interrupt vectoring error handling"),
                        "\(vectoringResult.1)")
            }
        }
    }
}
