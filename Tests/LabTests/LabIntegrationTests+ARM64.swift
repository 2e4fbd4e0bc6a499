import Glibc
@testable import Lab
import Testing
import TextFormat

/// Issue 38, item 1: an arm64 Kestrel, cross-compiled here with Debian's Swift
/// toolchain only (`kestrel lab build-arm64`, which `scripts/build-arm64`
/// runs). The binary must be a static AArch64 executable, and under
/// qemu-user it must do real work the way the host's build does: its version,
/// and a vmlinux extracted from the 7.2 lab kernel's bzImage (which runs the
/// C decompressors it links) byte for byte the host's.
extension LabIntegrationTests {
    /// The repository: three levels above this file.
    static var packageDirectory: String {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }

    @Test func anARM64KestrelCrossCompilesWithDebiansToolchainAndRuns() throws {
        let qemu = try #require(HostProcess.find("qemu-aarch64-static"),
                                "qemu-aarch64-static is not installed (scripts/prepare-host test installs qemu-user-static)")
        let run = try Self.run(["lab", "build-arm64", "--package-path", Self.packageDirectory], timeout: 2400)
        try #require(run.status == 0, "\(run.errors.suffix(3000))")
        let path = String(run.output.split(separator: "\n").last ?? "")
        print("arm64 kestrel: \(run.seconds.text(places: 1)) s; \(run.errors.split(separator: "\n").last ?? "")")
        #expect(ARM64Build.isStaticARM64Executable(try readBytes(path)), "\(path)")

        let host = try Self.kestrel()
        let hostVersion = try HostProcess.output([host, "--version"])
        let armVersion = try HostProcess.output([qemu, path, "--version"])
        #expect(armVersion.status == 0 && !armVersion.output.isEmpty && armVersion.output == hostVersion.output,
                "arm64: \(armVersion.output) \(armVersion.errors); host: \(hostVersion.output)")

        // The lab's 7.2 kernel: its bzImage's payload, through both builds.
        let kernel = try KernelFetcher(cache: LabCache(), progress: { _ in }).kernel("7.2")
        let directory = try TemporaryDirectory(prefix: "kestrel-arm64-vmlinux")
        let fromHost = try HostProcess.output([host, "vmlinux", kernel.directory + "/vmlinuz", "--output", directory.path + "/host"])
        let fromARM = try HostProcess.output([qemu, path, "vmlinux", kernel.directory + "/vmlinuz", "--output", directory.path + "/arm64"])
        try #require(fromHost.status == 0, "\(fromHost.errors)")
        #expect(fromARM.status == 0, "\(fromARM.output) \(fromARM.errors)")
        let expected = try readBytes(directory.path + "/host")
        #expect(expected.count > 1 << 20 && (try? readBytes(directory.path + "/arm64")) == expected,
                "the arm64 build's vmlinux (\(fileSize(directory.path + "/arm64")) bytes) is the host's (\(expected.count) bytes)")
    }
}
