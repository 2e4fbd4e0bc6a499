import FoundationEssentials
import Glibc
@testable import Lab
import Testing

/// No console line is lost before the exit status. A guest's write to the
/// serial console returns once its bytes are in the UART driver's buffer, and
/// the exit device stops the VM at once; the initramfs's /init now drains the
/// console first (`InitramfsBuilder.drainConsole`).
extension LabIntegrationTests {
    /// L1 shell lines that boot the lab's guest kernel with 1 vCPU `runs`
    /// times under `kestrel run`, with a command that prints 400 numbered
    /// lines and exits 5, and print for each run
    /// `drain-run TAG STATUS LINES INIT-LINES`. With `control`, the command
    /// writes the exit device itself (status 7), past /init's drain.
    static func consoleDrainScript(tag: String, runs: Int, control: Bool = false) -> String {
        let end = control ? "devmem 0xd0000000 8 7" : "exit 5"
        return #"""
            kestrel initramfs --command 'seq 400 | sed "s/^/line /"; \#(end)' -o /tmp/drain-\#(tag).cpio >/dev/null
            for i in $(seq \#(runs)); do
                kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/drain-\#(tag).cpio --memory 256M --cpus 1 \
                    --cmdline 'console=ttyS0 reboot=k panic=-1 i8042.noaux quiet' >/tmp/drain.out 2>&1
                status=$?
                echo "drain-run \#(tag)$i $status $(grep -c '^line ' /tmp/drain.out) $(grep -c 'kestrel-init: exit status 5' /tmp/drain.out)"
                [ $status = \#(control ? 7 : 5) ] || grep '^kestrel' /tmp/drain.out | tail -5
            done

            """#
    }

    /// The script's first line of output, once per boot of the L1.
    static let consoleDrainStart = "drain-start"

    /// The `drain-run` lines of `output` whose tag starts with `tag`: (status, lines, init lines).
    static func consoleDrainRuns(_ output: String, tag: String) -> [(status: Int, lines: Int, initLines: Int)] {
        output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 5, fields[0] == "drain-run", fields[1].hasPrefix(tag),
                  let status = Int(fields[2]), let lines = Int(fields[3]), let initLines = Int(fields[4]) else { return nil }
            return (status, lines, initLines)
        }
    }

    /// Runs `script` (its first line `drain-start`) in a 6.12 L1 and returns
    /// its output from the last boot's `drain-start` on.
    func runDrainScript(_ script: String, in directory: TemporaryDirectory, name: String) throws -> String {
        try writeFileAtomically(Array(("echo \(Self.consoleDrainStart)\n" + script).utf8), to: directory.path + "/" + name)
        let run = try Self.run(["lab", "run", "--kernel", "6.12", "--guest-kernel", "--add", directory.path + "/" + name, "--", "sh /lab/" + name],
                               timeout: 900)
        print("console drain (\(name)) in the 6.12 lab: \(run.seconds.text(places: 1)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        if !run.rebootNotes.isEmpty { print(run.rebootNotes.joined(separator: "\n") + "\nreading the last boot's run") }
        return ScriptOutput(run.output, from: Self.consoleDrainStart + "\n").text
    }

    /// Three guests on kvm_amd (6.12 under QEMU) each print 400 lines and
    /// exit through /init: every line and the status line arrive. The
    /// control, three guests that write the exit device straight after the
    /// lines, is printed, not asserted: it loses lines only now and then (on
    /// 2026-12-07 its guests delivered 17 and 202 of 400 in one L1, and 400,
    /// 400 and 15 in another). Each set runs in an L1 of its own.
    ///
    /// The guests have one vCPU: 2-vCPU guests in a one-CPU L1 meet the
    /// lab's L0 not delivering the L1's timer interrupt while one vCPU spins
    /// on a lock the other holds (FINDINGS.md section 6), which froze this
    /// test's L1s in CI. Draining does not depend on the vCPU count; the
    /// Bochs host's test checks all 400 lines from a 2-vCPU guest. The L1 is
    /// 6.12: on 7.2 one guest's exit-device write ended in KVM's internal
    /// error (status 67) once, which is FINDINGS.md section 8's SVM defect
    /// (KVM 6.14 and later) by its kind, and not what this test is about.
    @Test func noConsoleLineIsLostBeforeTheExitStatus() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labdrain")
        let drainedOutput = try runDrainScript(Self.consoleDrainScript(tag: "drained", runs: 3), in: directory, name: "drained.sh")
        let drained = Self.consoleDrainRuns(drainedOutput, tag: "drained")
        #expect(drained.count == 3, "\(drainedOutput)")
        for result in drained {
            #expect(result.status == 5 && result.lines == 400 && result.initLines == 1, "every line, then the status line: \(drainedOutput)")
        }
        let controlOutput = try runDrainScript(Self.consoleDrainScript(tag: "control", runs: 3, control: true), in: directory, name: "control.sh")
        let control = Self.consoleDrainRuns(controlOutput, tag: "control")
        #expect(control.count == 3 && control.allSatisfy { $0.status == 7 }, "\(controlOutput)")
        print("console drain: the control's guests delivered \(control.map { String($0.lines) }.joined(separator: ", ")) of 400 lines")
    }
}
