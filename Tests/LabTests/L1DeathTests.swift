import Glibc
@testable import Lab
import Testing

/// How the lab classifies a failed L1 boot before it retries, and that the
/// retry loop keeps every crash console and never boots again past a trace
/// in KVM. The consoles are shaped like Linux 6.x oops output.
@Suite(.timeLimit(.minutes(5))) struct L1DeathTests {
    /// A NULL dereference under KVM's vCPU ioctl, in a Kestrel vCPU thread.
    static let kvmOops = """
        [   45.123456] BUG: kernel NULL pointer dereference, address: 0000000000000008
        [   45.123789] #PF: supervisor read access in kernel mode
        [   45.124200] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI
        [   45.124300] CPU: 0 UID: 0 PID: 231 Comm: k-vcpu0 Not tainted 6.12.95+deb12-cloud-amd64 #1  Debian 6.12.95-1~bpo12+1
        [   45.124500] RIP: 0010:mt_find+0x8a/0x2a0
        [   45.125000] Call Trace:
        [   45.125100]  <TASK>
        [   45.125200]  ? __die+0x23/0x70
        [   45.125300]  kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]
        [   45.125400]  __x64_sys_ioctl+0x97/0xd0
        [   45.125700]  </TASK>
        [   45.125800] Modules linked in: vhost_vsock vhost tun loop kvm_amd kvm irqbypass
        [   45.126000] ---[ end trace 0000000000000000 ]---
        [   45.126100] Kernel panic - not syncing: Fatal exception

        """

    /// The #GP at text_poke_early's IRETQ that QEMU 7.2's TCG caused while 6.12 L1s booted.
    static let bootCorruption = """
        [    0.412000] Oops: general protection fault, probably for non-canonical address 0xdead000000000000: 0000 [#1] PREEMPT SMP NOPTI
        [    0.412100] CPU: 0 UID: 0 PID: 0 Comm: swapper/0 Not tainted 6.12.95+deb12-cloud-amd64 #1
        [    0.412200] RIP: 0010:text_poke_early+0x7c/0xa0
        [    0.412300] ---[ end trace 0000000000000000 ]---
        [    0.412400] Kernel panic - not syncing: Attempted to kill the idle task!

        """

    @Test func aTraceInKVMIsAFailureThatIsNeverRetried() throws {
        let death = try #require(L1Death.classify(console: Self.kvmOops, statusReported: false, froze: false, whileCommandRan: true, boot: 1))
        #expect(death.kind == .kvmTrace && !death.kind.retried)
        #expect(death.firstLine == "[   45.123456] BUG: kernel NULL pointer dereference, address: 0000000000000008 (in KVM: kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm])",
                "\(death.firstLine)")
        #expect(death.trace.first?.contains("BUG: kernel NULL pointer dereference") == true)
        #expect(death.trace.last?.contains("---[ end trace") == true)
        #expect(death.trace.contains { $0.contains("kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]") })
    }

    @Test func aTraceInKVMFailsEvenWhenTheCommandReportedAStatus() throws {
        let warning = "[   12.000000] WARNING: CPU: 0 PID: 88 at arch/x86/kvm/svm/svm.c:4123 svm_check_emulate_instruction+0x1a/0x90 [kvm_amd]\n"
        let death = try #require(L1Death.classify(console: warning, statusReported: true, froze: false, whileCommandRan: true, boot: 1))
        #expect(death.kind == .kvmTrace)
        #expect(L1Death.classify(console: "[ 1.0] WARNING: CPU: 0 PID: 1 at arch/x86/kvm/x86.c:100 foo\n", statusReported: true,
                                 froze: false, whileCommandRan: true, boot: 1)?.kind == .kvmTrace)
    }

    @Test func theModuleListAloneIsNoKVMFrame() {
        #expect(!L1Death.isKVMFrame("[ 1.0] Modules linked in: kvm_amd kvm irqbypass"))
        #expect(!L1Death.isKVMFrame("[ 1.0] kvm: [kvm] loaded"))
        #expect(L1Death.isKVMFrame("[ 1.0]  svm_vcpu_run+0x1b/0x4c0 [kvm_amd]"))
        #expect(L1Death.isKVMFrame("[ 1.0] RIP: 0010:vmx_vcpu_run+0x10/0x30 [kvm_intel]"))
        #expect(L1Death.classify(console: "[ 1.0] Modules linked in: kvm_amd kvm\n", statusReported: true, froze: false,
                                 whileCommandRan: true, boot: 1) == nil)
    }

    @Test func aTraceInAKestrelProcessIsAFailure() throws {
        let console = Self.bootCorruption.replacing("Comm: swapper/0", with: "Comm: kestrel")
        let death = try #require(L1Death.classify(console: console, statusReported: false, froze: false, whileCommandRan: true, boot: 2))
        #expect(death.kind == .kestrelTrace && !death.kind.retried)
        #expect(death.firstLine.hasSuffix("(task kestrel)"))
    }

    /// The task is read from each trace: a harmless WARNING in swapper first
    /// does not hide a later Oops in a Kestrel process.
    @Test func eachTracesOwnTaskDecides() throws {
        let console = """
            [    1.000000] WARNING: CPU: 0 PID: 0 at kernel/time/clocksource.c:1 clocksource_watchdog+0x1/0x2
            [    1.000100] CPU: 0 UID: 0 PID: 0 Comm: swapper/0 Not tainted 6.12.95+deb12-cloud-amd64 #1
            [    9.000000] Oops: general protection fault, probably for non-canonical address 0x1: 0000 [#1] PREEMPT SMP NOPTI
            [    9.000100] CPU: 0 UID: 0 PID: 200 Comm: kestrel Not tainted 6.12.95+deb12-cloud-amd64 #1
            [    9.000200] RIP: 0010:memcpy+0x4/0x20

            """
        let death = try #require(L1Death.classify(console: console, statusReported: true, froze: false, whileCommandRan: true, boot: 1))
        #expect(death.kind == .kestrelTrace)
        #expect(death.firstLine.hasPrefix("[    9.000000] Oops: general protection fault") && death.firstLine.hasSuffix("(task kestrel)"),
                "\(death.firstLine)")
        // A WARNING alone while booting, with no status, is no known death: not retried.
        let warning = try #require(L1Death.classify(console: "[ 1.0] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n", statusReported: false,
                                                    froze: false, whileCommandRan: false, boot: 1))
        #expect(warning.kind == .unclassified)
    }

    @Test func onlyTheEmulatorsKnownDeathsAreRetried() throws {
        let boot = try #require(L1Death.classify(console: Self.bootCorruption, statusReported: false, froze: false, whileCommandRan: false, boot: 1))
        #expect(boot.kind == .bootCorruption && boot.kind.retried)
        let frozen = try #require(L1Death.classify(console: "[ 1.0] Run /init as init process\n", statusReported: false, froze: true,
                                                   whileCommandRan: true, boot: 1))
        #expect(frozen.kind == .frozen && frozen.kind.retried && frozen.firstLine == "no kernel message")
        // The summary names the machine's silence limit once the lab has set it (60 s under QEMU, 1200 s under Bochs).
        var stopped = frozen
        stopped.silentSeconds = LabMachine.frozenAfterSecondsUnderQEMU
        #expect(stopped.summary.contains("stopped responding (no heartbeat for 60 s), with no kernel message (FINDINGS.md section 6)"))
        #expect(frozen.summary.contains("no heartbeat for the lab's limit"))
        // Under Bochs the L1's clock crawls while it is busy: a silence is a freeze or a busy L1, and the summary says both.
        stopped.silentSeconds = LabMachine.frozenAfterSecondsUnderBochs
        stopped.clockCrawlsWhenBusy = true
        #expect(stopped.summary.contains("heartbeat was silent for 1200 s, with no kernel message: the L1 froze, or its CPU was busy"))
        #expect(!stopped.summary.contains("section 6"))
        // The same boot trace once the command ran, and an end with no message at all, match no class.
        let later = try #require(L1Death.classify(console: Self.bootCorruption, statusReported: false, froze: false, whileCommandRan: true, boot: 1))
        #expect(later.kind == .unclassified && !later.kind.retried)
        let silent = try #require(L1Death.classify(console: "", statusReported: false, froze: false, whileCommandRan: false, boot: 1))
        #expect(silent.kind == .unclassified)
        #expect(L1Death.classify(console: "[ 1.0] Run /init as init process\n", statusReported: true, froze: false,
                                 whileCommandRan: true, boot: 1) == nil)
    }

    /// The retry loop itself, with a fake L0: a script that takes QEMU's
    /// arguments, counts its boots and writes the console and status lines
    /// a scenario gives each boot.
    struct FakeL0 {
        let directory: TemporaryDirectory
        let machine: LabMachine
        let initramfs: LabInitramfs

        init(boots: [(console: String, status: String)], attempts: Int = 3) throws {
            directory = try TemporaryDirectory(prefix: "kestrel-fake-l0")
            let dir = directory.path
            for (index, boot) in boots.enumerated() {
                try writeFileAtomically(Array(boot.console.utf8), to: "\(dir)/boot\(index + 1).console")
                try writeFileAtomically(Array(boot.status.utf8), to: "\(dir)/boot\(index + 1).status")
            }
            let script = """
                #!/bin/sh
                [ "$1" = --version ] && { echo "QEMU emulator version 0.0.0 (fake L0)"; exit 0; }
                for a in "$@"; do
                    case "$a" in
                    *id=console,path=*) console=${a#*path=} ;;
                    *id=status,path=*) status=${a#*path=} ;;
                    esac
                done
                n=$(( $(cat \(dir)/boots 2>/dev/null || echo 0) + 1 ))
                echo $n > \(dir)/boots
                cat \(dir)/boot$n.console > "$console" 2>/dev/null
                cat \(dir)/boot$n.status > "$status" 2>/dev/null
                exit 0

                """
            try writeFileAtomically(Array(script.utf8), to: "\(dir)/qemu", mode: 0o755)
            let kernel = LabKernel(name: "fake", release: "0.0-fake", packages: [], directory: dir, amdModules: [], intelModules: [])
            var machine = LabMachine(kernel: kernel, accelerator: .tcg)
            machine.qemu = LabQEMU(binary: "\(dir)/qemu")
            machine.bootAttempts = attempts
            machine.crashDirectory = "\(dir)/crashes"
            self.machine = machine
            initramfs = LabInitramfs(kernel: kernel, busybox: "/bin/busybox", kestrel: "/bin/true", command: .script("true"))
        }

        var bootsRun: Int { Int((try? readText(directory.path + "/boots"))?.split(separator: "\n").first ?? "") ?? 0 }
        func run() throws -> LabRunResult { try machine.run(initramfs, stdout: .null, stderr: nil) }
    }

    @Test(.enabled(if: fileExists("/bin/busybox"), "needs busybox-static"))
    func aKVMOopsEndsTheRunAtOnceAndItsConsoleIsKept() throws {
        let fake = try FakeL0(boots: [(Self.kvmOops, "ready 1.0 kvm_amd\n"), ("", "ready 1.0 kvm_amd\nstatus 0\n")])
        let result = try fake.run()
        #expect(fake.bootsRun == 1, "a KVM trace must not be booted again")
        #expect(result.status == nil && result.boots == 1)
        let death = try #require(result.failingDeath)
        #expect(death.kind == .kvmTrace && death.whileCommandRan)
        let kept = try #require(death.keptConsole)
        #expect(kept.hasPrefix(fake.directory.path + "/crashes/") && kept.hasSuffix("-fake-\(getpid())-boot1.console.log"))
        #expect(try readText(kept).contains("kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]"))
        #expect(result.failureDiagnosis?.contains("console kept at \(kept)") == true)
        #expect(result.failureDiagnosis?.contains("kvm_vcpu_ioctl+0x2d5/0x6d0 [kvm]") == true, "the trace is in the diagnosis")
    }

    @Test(.enabled(if: fileExists("/bin/busybox"), "needs busybox-static"))
    func aBootCorruptionIsBootedAgainAndStillReported() throws {
        let fake = try FakeL0(boots: [(Self.bootCorruption, ""), ("[ 1.0] Run /init as init process\n", "ready 1.0 kvm_amd\nstatus 0\n")])
        let result = try fake.run()
        #expect(fake.bootsRun == 2)
        #expect(result.status == 0 && result.boots == 2 && result.failingDeath == nil && result.failureDiagnosis == nil)
        let death = try #require(result.deaths.first)
        #expect(result.deaths.count == 1 && death.kind == .bootCorruption && death.boot == 1)
        #expect(try readText(try #require(death.keptConsole)).contains("text_poke_early"))
    }

    @Test(.enabled(if: fileExists("/bin/busybox"), "needs busybox-static"))
    func aKVMWarningFailsARunThatReportedAStatus() throws {
        let warning = "[   12.0] WARNING: CPU: 0 PID: 88 at arch/x86/kvm/svm/svm.c:4123 svm_check_emulate_instruction+0x1a/0x90 [kvm_amd]\n"
        let fake = try FakeL0(boots: [(warning, "ready 1.0 kvm_amd\nstatus 0\n")])
        let result = try fake.run()
        #expect(result.status == 0 && fake.bootsRun == 1)
        #expect(result.failingDeath?.kind == .kvmTrace)
        #expect(result.failureDiagnosis?.contains("a kernel trace in KVM") == true)
    }

    @Test(.enabled(if: fileExists("/bin/busybox"), "needs busybox-static"))
    func anUnclassifiedDeathIsNotBootedAgain() throws {
        let fake = try FakeL0(boots: [("", "ready 1.0 kvm_amd\n"), ("", "ready 1.0 kvm_amd\nstatus 0\n")])
        let result = try fake.run()
        #expect(fake.bootsRun == 1 && result.status == nil)
        #expect(result.failingDeath?.kind == .unclassified)
    }
}
