import FoundationEssentials
import Glibc
@testable import Lab
import Testing

/// The lab's Intel host: Debian trixie's Bochs 3.0 (VMX with CET, model
/// arrow_lake) running Debian's 7.2 kernel as the L1, with kvm_intel.
extension LabIntegrationTests {
    /// The CET, FRED and basics suites on kvm_intel. The four split-feature
    /// rows fail: KVM lets a guest set IA32_{S,U}_CET's SHSTK bit without
    /// SHSTK (and its IBT bit without IBT) and raises no #GP. FRED cannot be
    /// offered: no Debian Bochs emulates it, so its present rows skip.
    @Test func theBochsHostGivesTheCETFREDAndBasicsVerdictsOnKVMIntel() throws {
        let run = try Self.run(["lab", "check", "--host", "bochs", "--kernel", "7.2", "-f", "cet_msrs", "-f", "basics", "-f", "fred", "--json"],
                               timeout: 900)
        print("lab check on the Bochs host: \(run.seconds.text(places: 1)) s")
        let document = try CheckDocument.parse(run.output)
        #expect(document.metadata["lab.qemu"]?.hasPrefix("Bochs 3.0") == true, "\(document.metadata)")
        #expect(document.metadata["lab.cpu_model"] == "arrow_lake" && document.metadata["lab.accelerator"] == "bochs")
        func outcome(_ id: String) -> String? { document.results.first { $0.id == id }?.outcome }
        let splitRows = ["cet_msrs.IA32_S_CET.shstk.only_ibt", "cet_msrs.IA32_S_CET.ibt.only_shstk",
                         "cet_msrs.IA32_U_CET.shstk.only_ibt", "cet_msrs.IA32_U_CET.ibt.only_shstk"]
        for entry in document.results {
            switch entry.suite {
            case "cet_msrs":
                if splitRows.contains(entry.id) {
                    #expect(entry.outcome == "fail" && entry.detail?.contains("expected #GP(0), got no exception") == true, "\(entry)")
                } else {
                    #expect(entry.outcome == "pass", "\(entry)")
                }
            case "fred":
                if entry.id.hasPrefix("fred.present.") {
                    #expect(entry.outcome == "skip" && entry.detail?.contains("CPUID FRED is not in KVM_GET_SUPPORTED_CPUID") == true, "\(entry)")
                } else {
                    #expect(entry.outcome == "pass", "\(entry)")
                }
            default:
                #expect(entry.outcome == "pass", "\(entry)")
            }
        }
        #expect(document.results.filter { $0.suite == "cet_msrs" }.count == 28)
        #expect(outcome("basics.software_icebp") == "pass" && outcome("fred.absent.guest_cr4") == "pass")
        #expect(run.status == 1, "the four split-feature failures make the check fail: \(run.errors.suffix(2000))")
    }

    /// Kestrel's VMM on kvm_intel, in one L1: a 7.2 L2 reaches userspace
    /// with 2 vCPUs, prints 400 lines that all arrive before its status, and
    /// exits with it; another runs from guest_memfd memory; the four virtio
    /// devices serve a third (`FourDeviceScenario`, as on kvm_amd). The
    /// control, in a second L1: with kvm_intel's default APICv, which the lab
    /// turns off on Bochs, the same guest fails VM entry at once (reason 0x7:
    /// Bochs 3.0 refuses a posted-interrupt descriptor that is not 4 KiB-aligned).
    ///
    /// The L1's clock nearly stops while an L2 runs on Bochs, so its
    /// heartbeat is silent for as long as its L2s run; the lab allows Bochs
    /// L1s 600 s of silence (`LabMachine.frozenAfterSecondsUnderBochs`).
    @Test func kestrelRunTakesALinuxGuestToUserspaceOnKVMIntel() throws {
        let scenario = try FourDeviceScenario()
        let prologue = #"""
            cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux quiet'
            kestrel initramfs --command 'echo hello-from-L2; echo online=$(cat /sys/devices/system/cpu/online); seq 400 | sed "s/^/line /"; exit 42' \
                -o /tmp/s.cpio >/dev/null
            echo "== apicv $(cat /sys/module/kvm_intel/parameters/enable_apicv)"

            """#
        let guests = prologue + #"""
            kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/s.cpio --memory 256M --cpus 2 --cmdline "$cmdline" >/tmp/a.out 2>&1
            echo "== status $?"
            cat /tmp/a.out
            kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/s.cpio --memory 256M --memory-backend guest_memfd --cmdline "$cmdline" >/tmp/g.out 2>&1
            echo "== gmem $?"
            cat /tmp/g.out
            echo "== devices"
            sh \#(FourDeviceScenario.l1Path)
            """#
        let controlScript = prologue + #"""
            timeout 300 kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/s.cpio --memory 256M --cpus 2 --cmdline "$cmdline" >/tmp/c.out 2>&1
            echo "== control $?"
            cat /tmp/c.out
            """#
        var sections: [String: (String, String)] = [:]
        var apicv: [String: String] = [:]
        var devicesOutput = ""
        for (name, script, keepAPICv) in [("guests", guests, false), ("control", controlScript, true)] {
            let directory = try TemporaryDirectory(prefix: "kestrel-labbochs")
            try writeFileAtomically(Array(script.utf8), to: directory.path + "/l2.sh")
            let run = try Self.run(["lab", "run", "--host", "bochs", "--kernel", "7.2", "--guest-kernel", "--add", directory.path + "/l2.sh",
                                    "--timeout", "1500"] + (keepAPICv ? ["--keep-apicv"] : scenario.labArguments) + ["--", "sh /lab/l2.sh"],
                                   timeout: 1600)
            print("L2 boots on the Bochs host (\(name)): \(run.seconds.text(places: 1)) s\n\(run.output)")
            #expect(run.status == 0, "\(name): \(run.errors.suffix(3000))")
            for section in run.output.components(separatedBy: "== ").dropFirst() {
                let header = section.prefix { $0 != "\n" }.split(separator: " ")
                sections[String(header.first ?? "")] = (String(header.last ?? ""), String(section))
            }
            apicv[name] = sections["apicv"]?.0
            if name == "guests" { devicesOutput = sections["devices"]?.1 ?? "" }
        }
        #expect(apicv == ["guests": "N", "control": "Y"], "the lab loads kvm_intel with enable_apicv=0 on Bochs unless --keep-apicv")
        let status = try #require(sections["status"])
        let lines = status.1.split(separator: "\n").filter { $0.hasPrefix("line ") }
        #expect(status.0 == "42" && status.1.contains("\nhello-from-L2") && status.1.contains("online=0-1"), "\(status.1)")
        #expect(lines.count == 400 && lines.last == "line 400" && status.1.contains("kestrel-init: exit status 42"),
                "every line before the status: \(lines.count) of 400: \(status.1.suffix(2000))")
        #expect(status.1.contains("kestrel: guest exited with status 42 (exit device)"), "\(status.1)")
        let gmem = try #require(sections["gmem"])
        #expect(gmem.0 == "42" && gmem.1.contains("\nhello-from-L2"), "guest RAM from guest_memfd: \(gmem.1)")
        scenario.check("\n" + devicesOutput)
        let control = try #require(sections["control"])
        #expect(control.0 == "68" && control.1.contains("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x7"), "\(control.1)")
    }
}
