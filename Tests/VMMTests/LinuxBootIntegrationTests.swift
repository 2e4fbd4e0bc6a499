import Boot
import Foundation
import KVM
import Testing
@testable import VMM

/// Boots the Debian cloud kernel (apt: linux-image-cloud-amd64) with a
/// Kestrel-built busybox initramfs (apt: busybox-static) and checks what the
/// guest gets to on this host. `.ci/run` installs both packages.
@Suite(.timeLimit(.minutes(10))) struct LinuxBootIntegrationTests {
    static let kernel = (try? FileManager.default.contentsOfDirectory(atPath: "/boot"))?
        .filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") }.sorted().last.map { "/boot/" + $0 }
    static let busybox = "/bin/busybox"
    static var requirementsMet: Bool {
        kernel != nil && FileManager.default.fileExists(atPath: busybox) && KVMSystem.isAvailable()
    }

    final class Transcript: @unchecked Sendable {
        private let lock = NSLock()
        private var bytes: [UInt8] = []
        func append(_ byte: UInt8) { lock.withLock { bytes.append(byte) } }
        var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
    }

    @Test(.enabled(if: requirementsMet, "needs /dev/kvm, linux-image-cloud-amd64 and busybox-static"), .timeLimit(.minutes(10)))
    func debianCloudKernelBootsAsFarAsThisHostAllows() throws {
        let directory = NSTemporaryDirectory() + "kestrel-boot-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let initrd = directory + "/initramfs.cpio"
        let archive = try InitramfsBuilder.busybox(binary: Self.busybox, command: "echo kestrel-guest-says-hello")
        #expect(FileManager.default.createFile(atPath: initrd, contents: Data(archive)))

        let commandLine = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 kestrel.test=integration"
        let configuration = MachineConfiguration(kernelPath: Self.kernel!, initrdPath: initrd, commandLine: commandLine, memorySize: 256 << 20)
        let transcript = Transcript()
        let machine = try MachineBuilder(configuration: configuration).build { transcript.append($0) }
        #expect(machine.plan?.kind == .bzImageDecompressedOnHost(.lz4) || machine.plan?.kind == .bzImageDecompressedOnHost(.gzip)
                || machine.plan?.kind == .bzImageDecompressedOnHost(.zstd) || machine.plan?.kind == .bzImageDecompressedOnHost(.xz))
        // A guard against a host that makes no progress at all.
        let watchdog = DispatchWorkItem { machine.finish(.vcpuFailure(vcpu: -1, detail: "integration test time limit (400 s) reached")) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 400, execute: watchdog)
        let outcome = machine.run()
        watchdog.cancel()
        let text = transcript.text

        // What the guest always gets to on our hosts.
        #expect(text.contains("Linux version "), "no kernel banner; transcript starts: \(text.prefix(500))")
        #expect(text.contains("Command line: \(commandLine)"))
        for entry in machine.plan?.e820 ?? [] where entry.kind == .ram || entry.kind == .reserved {
            // Linux merges adjacent reserved ranges; every RAM range appears as given.
            if entry.kind == .ram { #expect(text.contains("BIOS-e820: \(entry)"), "missing e820 line for \(entry)") }
        }
        #expect(text.contains("BIOS-e820: [mem 0x000000000009fc00-"))

        switch outcome {
        case .guestExit(let status):
            // A host that carries the guest to userspace: the command ran and the init reported it.
            #expect(text.contains("kestrel-guest-says-hello"))
            #expect(text.contains("kestrel-init: exit status 0"))
            #expect(status == 0)
        case .internalError(_, let rip, let detail):
            // Our nested, software-backed host: an emulation failure, diagnosed with the instruction bytes.
            #expect(detail.contains("emulation failure"))
            #expect(detail.contains("instruction bytes ["))
            #expect(rip.map { $0 >= 0xFFFF_FFFF_8000_0000 } == true, "the failure should be in the kernel's text")
            print("integration: guest stopped as this host allows: \(outcome.diagnosis); last line: \(text.split(separator: "\n").last ?? "")")
        default:
            Issue.record("unexpected end of the run: \(outcome.diagnosis)\nlast output: \(text.suffix(800))")
        }
    }
}
