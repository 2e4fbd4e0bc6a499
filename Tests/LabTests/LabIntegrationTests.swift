import FoundationEssentials
import Glibc
@testable import Lab
import Testing
import TextFormat

/// The lab for real: `kestrel lab` boots Debian's cloud kernels under QEMU
/// (TCG with emulated SVM here), and Kestrel's VMM takes a Linux guest to
/// userspace inside them. These need qemu-system-x86, busybox-static, tmux and
/// the Debian archive (or kernels already in the lab cache); `.ci/run`
/// installs and fetches them. Nothing here is skipped: a missing piece fails
/// with what to install.
@Suite(.serialized, .timeLimit(.minutes(45))) struct LabIntegrationTests {
    /// The `kestrel` executable built beside this test bundle (override with KESTREL_LAB_KESTREL).
    static func kestrel() throws -> String {
        if let path = LabExecutable.builtBesideThisProcess() { return path }
        Issue.record("no kestrel executable beside the test bundle: run `swift build` first, or set KESTREL_LAB_KESTREL")
        throw LabError("kestrel not built")
    }

    struct Run {
        let status: Int32
        let output: String
        let errors: String
        let seconds: Double

        /// `kestrel lab run`'s notes on L1s it booted again (FINDINGS.md,
        /// section 6): the command ran again after the first boot's output,
        /// which `ScriptOutput` skips.
        var rebootNotes: [String] {
            errors.split(separator: "\n").filter { $0.hasPrefix("lab: the L1's") && $0.hasSuffix("booted it again") }.map(String.init)
        }
    }

    /// Runs kestrel with `arguments`, killing it after `timeout` seconds.
    static func run(_ arguments: [String], timeout: Double) throws -> Run {
        let directory = try TemporaryDirectory(prefix: "kestrel-labtest")
        let start = ContinuousClock.now
        let process = try HostProcess.start([try kestrel()] + arguments, stdout: .file(directory.path + "/out"), stderr: .file(directory.path + "/err"))
        var status: Int32?
        while status == nil {
            status = process.poll()
            if status == nil && LabMachine.seconds(ContinuousClock.now - start) > timeout {
                process.signal(SIGKILL)
                status = process.wait()
                Issue.record("kestrel \(arguments.joined(separator: " ")) did not finish in \(timeout) s")
            }
            usleep(50_000)
        }
        // Guest consoles end lines in "\r\n", which Swift compares as one Character.
        func text(_ name: String) -> String { ((try? readText(directory.path + "/" + name)) ?? "").replacing("\r\n", with: "\n") }
        return Run(status: status!, output: text("out"), errors: text("err"),
                   seconds: LabMachine.seconds(ContinuousClock.now - start))
    }

    @Test func aCommandsOutputErrorsAndExitStatusComeBack() throws {
        let run = try Self.run(["lab", "run", "--kernel", "7.2", "-v", "--", "uname -r; ls /dev/kvm; echo to-stderr >&2; exit 7"], timeout: 600)
        #expect(run.status == 7, "\(run.errors)")
        #expect(run.output.hasPrefix("7.2."), "\(run.output)")
        #expect(run.output.contains("/dev/kvm"))
        #expect(run.errors.contains("to-stderr"))
        #expect(run.errors.contains("tcg, CPU max, kvm_amd") || run.errors.contains(", kvm, CPU host, kvm_"), "\(run.errors)")
        print("lab run on 7.2: \(run.seconds.text(places: 2)) s; " + (run.errors.split(separator: "\n").first { $0.contains("ready in") } ?? ""))
    }

    /// An L1 that stops running its own processes (as single-CPU TCG L1s now
    /// and then do while a 2-vCPU L2 boots) is caught by its silent heartbeat,
    /// stopped and booted again, and the run says so. Played here by stopping
    /// the heartbeat process.
    @Test func aFrozenL1IsStoppedAndBootedAgain() throws {
        let run = try Self.run(["lab", "run", "--kernel", "6.1", "--boot-attempts", "2", "--",
                                "kill -STOP $(cat /run/heartbeat.pid); echo stopped-heartbeat; sleep 600"], timeout: 400)
        #expect(run.status == 125, "\(run.errors.suffix(2000))")
        // Each boot is classified as a freeze (retried), its console kept and named.
        #expect(run.errors.contains("lab: the L1's boot 1 while the command ran: the L1 stopped responding (no heartbeat for 60 s), "
                                    + "with no kernel message (FINDINGS.md section 6): no kernel message; console kept at "),
                "\(run.errors.suffix(2000))")
        #expect(run.errors.contains("; booted it again"), "\(run.errors.suffix(2000))")
        #expect(run.errors.contains("lab: the L1's boot 2 while the command ran: the L1 stopped responding"), "\(run.errors.suffix(2000))")
        #expect(run.output.components(separatedBy: "stopped-heartbeat").count - 1 == 2, "the command ran in both boots: \(run.output)")
        #expect(run.seconds < 300, "detected after 60 s of silence, not at the 600 s timeout: \(run.seconds) s")
    }

    /// A KVM oops is a failure that no retry may hide: a real L1 kernel logs
    /// an oops with a KVM frame (injected through /dev/kmsg, shaped like the
    /// kernel's own), and the run ends at once with 125, boots no second time
    /// although three boots are allowed, names the trace and keeps the whole
    /// console where it says.
    @Test func anInjectedKVMOopsIsAFailureThatIsNeverRetried() throws {
        let oops = [
            "<1>BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "<1>Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "<4>CPU: 0 PID: 231 Comm: k-vcpu0 Not tainted (injected by the lab test)",
            "<4>RIP: 0010:mt_find+0x8a/0x2a0",
            "<4>Call Trace:",
            "<4> kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]",
            "<4>---[ end trace 0000000000000000 ]---",
        ]
        let script = "echo injecting; " + oops.map { "echo '\($0)' > /dev/kmsg" }.joined(separator: "; ") + "; sleep 120; echo not-stopped"
        let run = try Self.run(["lab", "run", "--kernel", "6.1", "--boot-attempts", "3", "--", script], timeout: 300)
        #expect(run.status == 125, "\(run.errors.suffix(2000))")
        #expect(run.output.components(separatedBy: "injecting").count - 1 == 1, "one boot only: \(run.output)")
        #expect(!run.output.contains("not-stopped"))
        #expect(run.errors.contains("lab: the L1's boot 1 while the command ran: a kernel trace in KVM (a failure; not booted again): "),
                "\(run.errors.suffix(2000))")
        #expect(!run.errors.contains("booted it again"))
        #expect(run.errors.contains("(in KVM: kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm])"), "\(run.errors.suffix(2000))")
        let kept = try #require(run.errors.split(separator: "\n").lazy.compactMap { line -> String? in
            guard let range = line.firstRange(of: "console kept at ") else { return nil }
            return String(line[range.upperBound...].prefix { $0 != ";" && $0 != " " })
        }.first, "\(run.errors.suffix(2000))")
        #expect(try readText(kept).contains("kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]"), "the kept console at \(kept) holds the trace")
    }

    /// A user's own kernel: this machine's Debian cloud kernel and its modules tree.
    @Test func aUsersKernelAndModulesTreeBoot() throws {
        let images = directoryEntries("/boot").filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") }
        let image = try #require(images.last, "no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)")
        let release = String(image.dropFirst("vmlinuz-".count))
        let run = try Self.run(["lab", "run", "--kernel-image", "/boot/" + image, "--modules", "/lib/modules/" + release, "--",
                                "uname -r; lsmod"], timeout: 600)
        #expect(run.status == 0, "\(run.errors.suffix(2000))")
        #expect(run.output.hasPrefix(release + "\n"), "\(run.output)")
        #expect(run.output.contains("kvm_amd") || run.output.contains("kvm_intel"), "\(run.output)")
    }

    /// Linux userspace under `kestrel run`, inside an L1: console output, exit
    /// status through the exit device, power-off, 2 vCPUs online, reboot (65),
    /// a diagnosed panic (70) and SIGTERM (143), each from a real L2 boot.
    @Test func linuxGuestsReachUserspaceUnderKestrelRun() throws {
        let script = #"""
            cmdline='console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux quiet'
            l2() {
                name=$1; cpus=$2; shift 2
                kestrel initramfs --command "$*" -o /tmp/$name.cpio >/dev/null || { echo "== $name initramfs-failed"; return; }
                kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/$name.cpio --memory 256M --cpus $cpus --cmdline "$cmdline" >/tmp/$name.out 2>/tmp/$name.err
                echo "== $name $?"
                cat /tmp/$name.out /tmp/$name.err
            }
            l2 status 2 'echo hello-from-L2; echo online=$(cat /sys/devices/system/cpu/online); echo BYE; exit 42'
            l2 poweroff 1 'poweroff -f'
            l2 reboot 1 'reboot -f'
            l2 panic 1 'echo c > /proc/sysrq-trigger'
            kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/status.cpio --memory-backend guest_memfd >/tmp/gmem.out 2>&1
            echo "== gmemrefused $?"
            cat /tmp/gmem.out
            kestrel initramfs --command 'echo guest-waiting; sleep 600' -o /tmp/term.cpio >/dev/null
            kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/term.cpio --memory 256M --cmdline "$cmdline" >/tmp/term.out 2>/tmp/term.err &
            pid=$!
            i=0
            while ! grep -q guest-waiting /tmp/term.out && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done
            kill -TERM $pid
            wait $pid
            echo "== sigterm $?"
            cat /tmp/term.out /tmp/term.err
            """#
        let directory = try TemporaryDirectory(prefix: "kestrel-labtest")
        try writeFileAtomically(Array(script.utf8), to: directory.path + "/l2-tests.sh")
        let run = try Self.run(["lab", "run", "--kernel", "6.1", "--guest-kernel", "--add", directory.path + "/l2-tests.sh", "--", "sh /lab/l2-tests.sh"],
                               timeout: 1200)
        print("L2 boots in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let sections = Dictionary(run.output.components(separatedBy: "== ").dropFirst().map { section -> (String, (Int, String)) in
            let header = section.prefix { $0 != "\n" }.split(separator: " ")
            return (String(header.first ?? ""), (Int(header.last ?? "") ?? -1, String(section)))
        }, uniquingKeysWith: { first, _ in first })

        let status = try #require(sections["status"])
        #expect(status.0 == 42, "exit status through the exit device: \(status.1)")
        #expect(status.1.contains("\nhello-from-L2"), "the command's output on the console: \(status.1)")
        #expect(status.1.contains("online=0-1"), "both vCPUs online: \(status.1)")
        #expect(status.1.contains("BYE"))
        #expect(status.1.contains("kestrel: guest exited with status 42 (exit device)"))

        let poweroff = try #require(sections["poweroff"])
        #expect(poweroff.0 == 0 && poweroff.1.contains("kestrel: guest powered off"), "\(poweroff.1)")
        let reboot = try #require(sections["reboot"])
        #expect(reboot.0 == 65 && reboot.1.contains("kestrel: guest reset"), "\(reboot.1)")
        let panic = try #require(sections["panic"])
        #expect(panic.0 == 70 && panic.1.contains("kestrel: guest kernel panic: Kernel panic - not syncing: sysrq triggered crash"), "\(panic.1)")
        let refused = try #require(sections["gmemrefused"])
        #expect(refused.0 == 2 && refused.1.contains("memory backend guest_memfd: this host's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0"),
                "6.1 has no guest_memfd, and kestrel run says so before the guest starts: \(refused.1)")
        let sigterm = try #require(sections["sigterm"])
        #expect(sigterm.0 == 143 && sigterm.1.contains("guest-waiting") && sigterm.1.contains("stopped by signal 15 (SIGTERM)"), "\(sigterm.1)")
    }

    /// A terminal session: tmux types into `kestrel lab shell`, whose L1 shell
    /// starts `kestrel run` with an interactive L2 shell on its console.
    @Test func aTerminalSessionReachesTheGuestShell() throws {
        let session = try TmuxSession("\(try Self.kestrel()) lab shell --kernel 6.1 --guest-kernel; echo lab-shell-exit=$?; sleep 60")
        try session.waitFor("'exit' or Ctrl-D powers off", seconds: 300)
        try session.type("kestrel initramfs --command sh -o /tmp/shell.cpio && kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/shell.cpio "
                         + "--cmdline 'console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux quiet'")
        try session.waitFor("kestrel-init: running: sh", seconds: 300)
        usleep(2_000_000)
        try session.type("echo $((6*7))-answer")
        try session.waitFor("42-answer", seconds: 120)
        try session.type("exit")
        // Type only at the L1's prompt: until `kestrel run` has exited, its
        // console reader takes what is typed for the (stopped) guest.
        try session.waitFor("kestrel: guest exited with status 0", then: "/lab #", seconds: 120)
        try session.type("exit")
        try session.waitFor("lab-shell-exit=0", seconds: 120)
    }

    /// The same on the Bochs host: COM1 is the terminal tmux gives `kestrel
    /// lab shell`, and the terminal is handed back when the L1 powers off.
    @Test func aTerminalSessionReachesTheBochsL1Shell() throws {
        let session = try TmuxSession("\(try Self.kestrel()) lab shell --host bochs --kernel 7.2; echo lab-shell-exit=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon; sleep 60")
        try session.waitFor("'exit' or Ctrl-D powers off", seconds: 400)
        try session.type("echo $((6*7))-answer $(grep -m1 -o -w vmx /proc/cpuinfo)-flag $(cat /sys/module/kvm_intel/parameters/enable_apicv)-apicv")
        try session.waitFor("42-answer vmx-flag N-apicv", seconds: 120)
        try session.type("exit")
        // The shell's status, then the terminal in canonical mode again (Bochs had made it raw).
        try session.waitFor("lab-shell-exit=0", then: "\nicanon", seconds: 300)
    }

    /// The guest_memfd NUMA cases need two nodes: an L1 with two runs them.
    @Test func guestMemfdNUMACasesRunOnATwoNodeL1() throws {
        let run = try Self.run(["lab", "check", "--kernel", "7.2", "--numa-nodes", "2", "-f", "mbind", "-f", "numa_allocation"], timeout: 600)
        print(run.output)
        #expect(run.status == 0, "\(run.output)\n\(run.errors.suffix(2000))")
        #expect(run.output.contains("3 passed, 0 failed, 0 skipped"), "\(run.output)")
    }

    /// The four lab kernels, 7.2 with the fixes under upstream/, and this
    /// machine's /dev/kvm in one matrix.
    @Test func theMatrixCoversEveryKernelAndThisMachine() throws {
        try Self.buildPatchedKernel()
        let run = try Self.run(["lab", "check", "--kernels", "6.1,6.12,6.18,7.2,7.2-patched", "--json"], timeout: 2400)
        print(run.errors.split(separator: "\n").filter { $0.hasPrefix("lab:") }.joined(separator: "\n"))
        // Every host gives its verdicts: an L1 whose kernel died is a failure
        // here, whatever the kernel (the lab boots again only after deaths it
        // has classified as the emulator's, and names each kept console).
        #expect(run.status == 0, "\(run.output.prefix(3000))\n\(run.errors.suffix(2000))")
        let matrix = try JSONDecoder().decode(LabMatrix.self, from: Data(run.output.utf8))
        print(matrix.render())
        #expect(matrix.columns.map(\.title) == ["local", "6.1", "6.12", "6.18", "7.2", "7.2-patched"])
        for column in matrix.columns {
            #expect(column.document != nil, "no result for \(column.title): \(column.error ?? "")")
            #expect(column.title == "local" || column.host.contains("QEMU 10.0."), "the L0 is QEMU 10.0: \(column.host)")
        }
        // The guest_memfd access verdict depends on the host: it fails on our
        // machines' backend and passes on upstream KVM with guest_memfd MMAP.
        #expect(matrix.differs("guest_memfd.default.guest_access"))
        // The patched column: the emulator fix flips guest_cr4, and nothing else changes.
        let unpatched = try #require(matrix.columns.first { $0.title == "7.2" }), patched = try #require(matrix.columns.first { $0.title == "7.2-patched" })
        #expect(matrix.verdict("fred.absent.guest_cr4", in: unpatched) == "fail")
        #expect(matrix.verdict("fred.absent.guest_cr4", in: patched) == "pass")
        for id in matrix.testIDs where id != "fred.absent.guest_cr4" {
            #expect(matrix.verdict(id, in: unpatched) == matrix.verdict(id, in: patched),
                    "\(id): \(matrix.verdict(id, in: unpatched) ?? "-") on 7.2, \(matrix.verdict(id, in: patched) ?? "-") on 7.2-patched")
        }
        // The defects the suites gained in issue 39 fail where they are and pass where they are fixed.
        for (id, failing, passing) in [("guest_memfd.default.invalid_binding", ["6.18"], ["7.2"]),
                                       ("basics.pre_fault_during_slot_deletion", ["6.12"], ["6.18", "7.2"]),
                                       ("basics.guest_debug_dr7_gd", ["6.1", "6.12", "6.18"], ["7.2"])] {
            for title in failing {
                #expect(matrix.columns.first { $0.title == title }.flatMap { matrix.verdict(id, in: $0) } == "fail", "\(id) on \(title)")
            }
            for title in passing {
                #expect(matrix.columns.first { $0.title == title }.flatMap { matrix.verdict(id, in: $0) } == "pass", "\(id) on \(title)")
            }
        }
    }
}

/// The four virtio devices with a Linux L2 guest, in an L1 on upstream KVM
/// (6.1 under QEMU with SVM; `FourDeviceScenario` says what it checks).
extension LabIntegrationTests {
    @Test func theFourDevicesServeALinuxGuest() throws {
        let scenario = try FourDeviceScenario()
        let run = try LabIntegrationTests.run(["lab", "run", "--kernel", "6.1", "--guest-kernel"] + scenario.labArguments
                                              + ["--", "sh \(FourDeviceScenario.l1Path)"], timeout: 900)
        print("virtio devices in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        scenario.check(run.output)
    }
}
