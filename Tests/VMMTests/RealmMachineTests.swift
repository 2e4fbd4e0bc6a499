import Boot
import Confidential
import Glibc
import KVM
import Testing
@testable import VMM

/// `kestrel run --confidential realm`: the plan from a machine configuration
/// with a crafted arm64 Image, its refusals, and the host refusal.
@Suite(.timeLimit(.minutes(5))) struct RealmMachineTests {
    final class Files {
        let directory: String
        let kernel: String
        let initrd: String

        init() throws {
            var template = Array("/tmp/kestrel-realm-XXXXXX".utf8CString)
            try #require(mkdtemp(&template) != nil)
            directory = String(cString: template)
            kernel = directory + "/Image"
            initrd = directory + "/initrd"
            var header = [UInt8](repeating: 0, count: 0x30_0000)
            for (offset, byte) in [(16, 0x00), (17, 0x00), (18, 0x40), (56, 0x41), (57, 0x52), (58, 0x4D), (59, 0x64), (24, 0x0A)] {
                header[offset] = UInt8(byte)  // image_size 0x400000, flags 0xa, magic "ARM\x64"
            }
            try write(header, to: kernel)
            try write([UInt8](repeating: 7, count: 5000), to: initrd)
        }

        deinit {
            unlink(kernel)
            unlink(initrd)
            rmdir(directory)
        }

        func write(_ bytes: [UInt8], to path: String) throws {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            try #require(fd >= 0)
            defer { close(fd) }
            try #require(bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count)
        }

        func configuration() -> MachineConfiguration {
            var configuration = MachineConfiguration(kernelPath: kernel, initrdPath: initrd, commandLine: "console=ttyAMA0", vcpuCount: 2,
                                                     memorySize: 256 << 20, cpuTemplate: CPUTemplate.defaultName)
            configuration.confidential = .realm
            configuration.entropy = true
            return configuration
        }
    }

    @Test func planFromAConfiguration() throws {
        let files = try Files()
        let plan = try RealmMachine.plan(files.configuration(), ipaBits: 48)
        let payloads = plan.regions.filter { !$0.name.contains("not populated") }
        #expect(payloads.map(\.name) == ["guest RAM: kernel Image", "guest RAM: initrd",
                                        "guest RAM: device tree (Kestrel does not build arm64 device trees yet)"])
        #expect(payloads[0].protected == 0x4020_0000..<0x4050_0000)  // 2 MiB above RAM's base, the whole file
        #expect(payloads[1].protected == 0x4060_0000..<0x4060_2000)  // after image_size, 2 MiB-aligned; 5000 bytes is 2 pages
        #expect(payloads[0].unprotectedAlias.lowerBound == 1 << 47 | 0x4020_0000)
        #expect(plan.devices.map(\.name) == ["PL011 console", "virtio-rng"])
        #expect(plan.configuration.entry == 0x4020_0000 && plan.configuration.entryArgument == 0x4FE0_0000)
        #expect(plan.render().contains("KVM_VM_TYPE_ARM_IPA_SIZE(48) = 0x40000030"))
    }

    @Test func refusals() throws {
        let files = try Files()
        do {
            _ = try RealmMachine.plan(files.configuration(), privateMemory: .hostMemory)
            Issue.record("anonymous private memory was planned")
        } catch let violation as RealmRuleViolation {
            #expect(violation.rule == "realm.private-memory-is-guest-memfd")
        }
        var x86 = files.configuration()
        x86.kernelPath = files.initrd
        do {
            _ = try RealmMachine.plan(x86)
            Issue.record("a non-arm64 kernel was planned")
        } catch let error as ConfigurationError {
            #expect("\(error)".contains("must be an arm64 Image") && "\(error)".contains("ARM\\x64"))
        }
        #expect(throws: ConfigurationError.self) { _ = try RealmMachine.plan(files.configuration(), ipaBits: 60) }
        #expect(RealmMachine.refusal(architecture: "x86_64", kvm: nil).contains("this host is x86_64"))
        #expect(RealmMachine.refusal(architecture: "aarch64", kvm: nil).contains("does not offer KVM_CAP_ARM_RMI"))
    }

    /// The machine builder checks the plan, then refuses the host.
    @Test(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"))
    func theBuilderRefusesBeforeAnyVMExists() throws {
        let files = try Files()
        #if arch(x86_64)
        do {
            _ = try MachineBuilder(configuration: files.configuration()).build(console: { _ in })
            Issue.record("a realm was built on x86")
        } catch {
            #expect("\(error)".contains("--confidential realm: realms need an arm64 host"), "\(error)")
        }
        #endif
    }
}
