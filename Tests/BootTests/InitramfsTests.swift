@testable import Boot
import Foundation
import Testing

@Suite(.timeLimit(.minutes(5))) struct InitramfsTests {
    /// Lists an archive with the system's `cpio -t`, an independent reader.
    func cpioList(_ archive: [UInt8]) throws -> [String] {
        let file = NSTemporaryDirectory() + "kestrel-\(UUID().uuidString).cpio"
        #expect(FileManager.default.createFile(atPath: file, contents: Data(archive)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "cpio -t --quiet < \(file)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @Test func newcHeaderLayout() throws {
        var archive = CPIOArchive()
        try archive.add("hello", .file(Array("hi\n".utf8)), mode: 0o644)
        let bytes = archive.finished()
        #expect(String(decoding: bytes[0..<6], as: UTF8.self) == "070701")
        #expect(String(decoding: bytes[14..<22], as: UTF8.self) == "000081A4")  // regular file, 0644
        #expect(String(decoding: bytes[54..<62], as: UTF8.self) == "00000003")  // file size
        #expect(String(decoding: bytes[94..<102], as: UTF8.self) == "00000006")  // name size with NUL
        #expect(String(decoding: bytes[110..<116], as: UTF8.self) == "hello\0")
        #expect(bytes.count % 4 == 0)
        #expect(try cpioList(bytes) == ["hello"])
        #expect(throws: CPIOError.self) { try archive.add("hello", .directory, mode: 0o755) }
        #expect(throws: CPIOError.self) { try archive.add("../escape", .directory, mode: 0o755) }
    }

    @Test func busyboxArchiveListsWithCpio() throws {
        guard FileManager.default.fileExists(atPath: "/bin/busybox") else {
            Issue.record("busybox-static is required (.ci/run installs it)")
            return
        }
        let archive = try InitramfsBuilder.busybox(binary: "/bin/busybox", command: "echo hi")
        #expect(try cpioList(archive) == ["bin", "dev", "proc", "sys", "tmp", "dev/console", "bin/busybox", "bin/sh", "init"])
        #expect(InitramfsBuilder.initScript(command: "false").contains("devmem 0xd0000000 8 $status"))
    }

    /// The command is echoed in single quotes, so echoing it runs none of it
    /// (it once expanded `$(seq 50)` in the echo).
    @Test func theEchoedCommandIsNotExpandedAndModulesLoadFirst() throws {
        let script = InitramfsBuilder.initScript(command: "echo 'a' $(seq 2)", modules: ["virtio", "virtio_blk"])
        #expect(script.contains(#"echo 'kestrel-init: running: echo '\''a'\'' $(seq 2)'"#))
        let load = try #require(script.firstRange(of: "for module in virtio virtio_blk; do"))
        let run = try #require(script.firstRange(of: "( echo 'a' $(seq 2) )"))
        #expect(load.lowerBound < run.lowerBound)
        let modules = [(name: "virtio", object: [UInt8](repeating: 1, count: 8))]
        let archive = try InitramfsBuilder.busybox(binary: "/bin/busybox", command: "true", modules: modules)
        #expect(try cpioList(archive).contains("lib/modules/kestrel/virtio.ko"))
    }

    /// The console drains between the status line and the exit device, so
    /// that the exit device does not cut off lines still in the UART
    /// driver's buffer (the lab tests show it on each host).
    @Test func theConsoleDrainsBeforeTheExitDeviceStopsTheVM() throws {
        let script = InitramfsBuilder.initScript(command: "true")
        let status = try #require(script.firstRange(of: #"echo "kestrel-init: exit status $status""#))
        let drain = try #require(script.firstRange(of: InitramfsBuilder.drainConsole))
        let exit = try #require(script.firstRange(of: "devmem 0xd0000000 8 $status"))
        #expect(status.upperBound < drain.lowerBound && drain.upperBound < exit.lowerBound)
        #expect(InitramfsBuilder.drainConsole.contains(#"stty -F /dev/console "$(/bin/busybox stty -F /dev/console -g 2>/dev/null)""#))
    }

    @Test func directoryArchive() throws {
        let root = NSTemporaryDirectory() + "kestrel-root-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: root + "/etc/motd", contents: Data("hi".utf8)))
        try FileManager.default.createSymbolicLink(atPath: root + "/link", withDestinationPath: "etc/motd")
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try cpioList(try InitramfsBuilder.fromDirectory(root)) == ["etc", "etc/motd", "link", "dev", "dev/console"])
        #expect(throws: CPIOError.self) { try InitramfsBuilder.fromDirectory(root + "/none") }
    }
}
