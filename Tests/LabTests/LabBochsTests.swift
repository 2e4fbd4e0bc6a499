import Glibc
@testable import Lab
import Testing

/// The Bochs host's pieces that need no Bochs: its configuration, the CD's
/// boot menu, the version it reports, and the chroot command it runs in.
@Suite(.timeLimit(.minutes(1))) struct LabBochsTests {
    /// Each serial port writes the file `LabMachine` reads for it, in the
    /// order of `LabSerialPorts` (COM1 the command's output, COM2 the
    /// console, COM3 its errors, COM4 the status lines).
    @Test func theConfigurationWiresTheSerialPortsAndTheModel() {
        let text = LabBochs.configuration(model: "tigerlake", cpus: 2, memoryMiB: 3072, directory: "/run/x")
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("cpu: model=tigerlake, count=2, reset_on_triple_fault=0"))
        #expect(lines.contains("megs: 3072"))
        #expect(lines.contains("ata0-master: type=cdrom, path=/run/x/boot.iso, status=inserted"))
        #expect(lines.filter { $0.hasPrefix("com") } == [
            "com1: enabled=1, mode=file, dev=/run/x/out",
            "com2: enabled=1, mode=file, dev=/run/x/console.log",
            "com3: enabled=1, mode=file, dev=/run/x/errors",
            "com4: enabled=1, mode=file, dev=/run/x/status",
        ])
        #expect(lines.contains("display_library: term"))
    }

    @Test func theBootMenuStartsTheKernelAtOnceWithTheCommandLine() {
        let menu = LabBochs.isolinuxConfiguration(commandLine: "console=ttyS1 nopku")
        #expect(menu.contains("TIMEOUT 0\n") && menu.contains("PROMPT 0\n"))
        #expect(menu.contains("  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND console=ttyS1 nopku\n"))
    }

    @Test func theVersionComesFromTheRootsPackageDatabase() {
        let status = """
            Package: bochs-term
            Version: 3.0+dfsg-1

            Package: bochs
            Status: install ok installed
            Version: 3.0+dfsg-1
            Architecture: amd64

            """
        #expect(LabBochs.version(fromDpkgStatus: status) == "3.0+dfsg-1")
        #expect(LabBochs.version(fromDpkgStatus: "Package: bochsbios\nVersion: 3.0\n") == nil)
    }

    /// A Bochs L1 gets `nopku` after the lab's own arguments and before the user's.
    @Test func aBochsL1GetsNopku() {
        let kernel = LabKernel(name: "7.2", release: "7.2.13", packages: [], directory: "/k", amdModules: [], intelModules: [])
        var machine = LabMachine(kernel: kernel, accelerator: .tcg)
        machine.kernelArguments = "mitigations=off"
        #expect(!machine.commandLine.contains("nopku"))
        machine.bochs = LabBochs(root: DebianRoot(suite: "trixie", path: "/r"))
        #expect(machine.commandLine.hasSuffix("8250.nr_uarts=4 nopku mitigations=off"))
    }

    /// kvm_intel gets `enable_apicv=0` under Bochs (unless kept), and /init
    /// passes each module its parameters; a parameter with shell
    /// metacharacters is refused.
    @Test func moduleParametersReachInsmodAndAreChecked() throws {
        let kernel = LabKernel(name: "7.2", release: "7.2.13", packages: [], directory: "/k", amdModules: ["kvm", "kvm_amd"],
                               intelModules: ["kvm", "kvm_intel"])
        var image = LabInitramfs(kernel: kernel, busybox: "/nonexistent", kestrel: "/nonexistent", command: .script("true"))
        #expect(!image.initScript().contains("case $module in"))
        image.moduleParameters = ["kvm_intel": "enable_apicv=0", "kvm": "tdp_mmu=1"]
        let script = image.initScript()
        #expect(script.contains(#"    case $module in kvm) parameters="tdp_mmu=1";; kvm_intel) parameters="enable_apicv=0";; esac"#))
        #expect(script.contains("    insmod /lib/modules/lab/$module.ko $parameters || echo"))
        image.moduleParameters = ["kvm_intel": "enable_apicv=0; reboot"]
        #expect(throws: LabError.self) { try image.build() }
    }

    /// The command runs in the root with the host directory bound inside it:
    /// run here with a root of "/" (no chroot needed to show the binding).
    @Test(.enabled(if: getuid() == 0, "binding a directory needs root (mount namespaces)"))
    func aCommandInTheRootSeesTheBoundDirectory() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-bind")
        try writeFileAtomically(Array("bound\n".utf8), to: directory.path + "/marker")
        let root = DebianRoot(suite: "host", path: "/")
        let output = try root.run(["cat", DebianRoot.boundDirectory + "/marker"], binding: directory.path, what: "reading through the binding")
        #expect(output == "bound\n")
        #expect(!fileExists(DebianRoot.boundDirectory + "/marker"), "the binding stays inside the command's mount namespace")
    }
}
