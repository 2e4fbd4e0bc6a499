import Glibc
@testable import Lab
import Testing
import TextFormat

/// firecracker-python (PyPI 0.0.5, a client written for Firecracker, run
/// unchanged) drives Kestrel inside the L1 through a whole life: it boots a
/// Linux 6.1 L2 with a disk and vsock through the API alone, is refused a
/// snapshot while the guest runs, pauses it and takes a full snapshot; the
/// VMM is SIGKILLed; in a new `kestrel run --api-sock` the client loads the
/// snapshot and resumes it, and at the end shuts the guest down with
/// SendCtrlAltDel, which the guest's atkbd turns into a reboot and Kestrel's
/// i8042 into its exit.
///
/// The L1 has no Python: scripts/firecracker-python-files.py lists the files
/// the client needs (the interpreter, the modules it loads, their libraries),
/// and `--add-list` puts them into the L1 at their own paths.
extension LabIntegrationTests {
    /// The venv's interpreter and the repository's scripts directory.
    static func firecrackerPython() throws -> (python: String, scripts: String) {
        let home = String(cString: getenv("HOME"))
        let python = (getenv("XDG_CACHE_HOME").map { String(cString: $0) } ?? home + "/.cache") + "/kestrel/firecracker-python/bin/python"
        try #require(access(python, X_OK) == 0, "no firecracker-python venv at \(python): run scripts/prepare-host test")
        var scripts = #filePath
        for _ in 0..<3 { scripts = String(scripts[..<scripts.lastIndex(of: "/")!]) }
        return (python, scripts + "/scripts")
    }

    @Test func firecrackerPythonBootsSnapshotsRestoresAndShutsDownALinuxGuest() throws {
        let (python, scripts) = try Self.firecrackerPython()
        let directory = try TemporaryDirectory(prefix: "kestrel-labfcpy")
        let listing = try HostProcess.output([python, scripts + "/firecracker-python-files.py"])
        try #require(listing.status == 0, "firecracker-python-files.py: \(listing.errors)")
        try writeFileAtomically(Array(listing.output.utf8), to: directory.path + "/files.txt")
        let guest = #"""
            for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
            echo "keyboard $(grep -c 'AT Translated Set 2 keyboard' /proc/bus/input/devices)"
            ( while true; do kestrel vsock listen --port 52 --echo; done ) >/dev/null 2>&1 &
            i=0; while true; do
              echo "tick $i"; i=$((i+1)); sleep 0.1
              if [ $i -eq 100 ]; then echo 3 > /proc/sys/vm/drop_caches; echo "disk-read $(head -c 19 /dev/vda)"; fi
              if [ $((i % 50)) -eq 0 ]; then echo "keyboard-interrupts $(grep i8042 /proc/interrupts | tr -s ' ')"; fi
            done
            """#
        let host = #"""
            set -u
            PY=PYTHON
            head -c 1048576 /dev/zero > /tmp/disk.img
            printf kestrel-disk-marker | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            wait_for() { i=0; until [ -S $1 ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; }
            wait_line() { i=0; until grep -q "$2" $1; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done; }
            echo_over_vsock() {
              i=0; until echo $1 | kestrel vsock connect --uds /tmp/v.sock --port 52 > /tmp/echo-$1.txt 2>/dev/null && [ -s /tmp/echo-$1.txt ]; do
                i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5
              done
              echo "echo-$1 $(cat /tmp/echo-$1.txt)"
            }
            echo fcpy-run
            echo "python $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1)"
            kestrel run --api-sock /tmp/a.sock --id lab-fcpy > /tmp/a.out 2>/tmp/a.err &
            a=$!
            wait_for /tmp/a.sock
            mkfifo /tmp/to-a
            t0=$(cut -d' ' -f1 /proc/uptime)
            $PY /lab/firecracker-client.py /tmp/a.sock /lab/guest/vmlinux --initrd /tmp/i.cpio \
              --boot-args "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet" --mem-mib 256 \
              --drive data:/tmp/disk.img --vsock 3:/tmp/v.sock snapshot /tmp/vm.state /tmp/vm.mem < /tmp/to-a > /tmp/client-a 2>&1 &
            client=$!
            exec 3>/tmp/to-a
            wait_line /tmp/a.out "tick 10"
            echo_over_vsock before
            echo >&3; exec 3>&-
            wait $client; echo "client-a-exit $? $t0 $(cut -d' ' -f1 /proc/uptime)"
            before=$(grep -c tick /tmp/a.out); sleep 2; after=$(grep -c tick /tmp/a.out)
            echo "paused-ticks $before $after"
            kill -9 $a; wait $a; echo "a-exit $?"
            echo "files $(stat -c %s /tmp/vm.state) $(stat -c %s /tmp/vm.mem)"
            kestrel run --api-sock /tmp/b.sock --id lab-fcpy-restored > /tmp/b.out 2>/tmp/b.err &
            b=$!
            wait_for /tmp/b.sock
            mkfifo /tmp/to-b
            $PY /lab/firecracker-client.py /tmp/b.sock - load /tmp/vm.state /tmp/vm.mem --ctrl-alt-del < /tmp/to-b > /tmp/client-b 2>&1 &
            client=$!
            exec 3>/tmp/to-b
            echo_over_vsock after
            wait_line /tmp/b.out "disk-read"
            echo >&3; exec 3>&-
            wait $client; echo "client-b-exit $?"
            # Ctrl+Alt+Del ends the VMM; one that is still running a minute on is killed.
            i=0; while kill -0 $b 2>/dev/null && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.2; done
            kill -0 $b 2>/dev/null && { echo "b-still-running"; kill -9 $b; }
            wait $b; echo "b-exit $?"
            echo "== client-a"; cat /tmp/client-a
            echo "== client-b"; cat /tmp/client-b
            echo "== a"; cat /tmp/a.out
            echo "== b"; cat /tmp/b.out
            echo "== b.err"; tail -5 /tmp/b.err
            echo "== end"
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(host.replacing("PY=PYTHON", with: "PY=" + python).utf8), to: directory.path + "/l1.sh")
        // A 7.2 L1: on 6.18, KVM under QEMU's SVM stops the guest with DELIVERY_EV at a
        // virtio notify in some boots (FINDINGS section 8), which failed this test in CI.
        let run = try LabIntegrationTests.run(
            ["lab", "run", "--kernel", "7.2", "--guest", "6.1", "--add", directory.path + "/guest.sh:/lab/guest.sh",
             "--add", directory.path + "/l1.sh:/lab/l1.sh", "--add-list", directory.path + "/files.txt", "--", "sh /lab/l1.sh"], timeout: 900)
        print("firecracker-python in the 7.2 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        // An L1 that died (FINDINGS.md, section 6) is booted again and the
        // script run again: the last run's output is the one to read.
        let output = run.output.ranges(of: "fcpy-run\n").last.map { String(run.output[$0.lowerBound...]) } ?? run.output
        let lines = output.split(separator: "\n").map(String.init)
        func line(_ prefix: String) -> String { lines.first { $0.hasPrefix(prefix) } ?? "(no \(prefix) line)" }
        let sections = output.components(separatedBy: "\n== ")
        func section(_ name: String) -> String { sections.first { $0.hasPrefix(name + "\n") } ?? "" }
        func step(_ text: String, _ name: String) -> String {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.map { String($0.dropFirst(name.count + 1)) } ?? "(no \(name) step)"
        }
        #expect(line("python ").hasPrefix("python 3."), "the L1 runs the venv's Python: \(output)")
        let clientA = section("client-a"), clientB = section("client-b")
        for name in ["boot", "machine", "drive-data", "vsock", "start", "pause", "snapshot"] {
            #expect(step(clientA, name) == "ok", "\(name): \(clientA)")
        }
        #expect(step(clientA, "running-snapshot").hasPrefix("fault ") && step(clientA, "running-snapshot").contains("pause it first"), "\(clientA)")
        #expect(step(clientA, "paused").contains(#""state":"Paused""#), "\(clientA)")
        #expect(line("client-a-exit ").hasPrefix("client-a-exit 0 "), "\(output)")
        let paused = line("paused-ticks ").split(separator: " ")
        #expect(paused.count == 3 && paused[1] == paused[2], "no tick while paused: \(output)")
        #expect(line("a-exit ") == "a-exit 137", "the first VMM was SIGKILLed: \(output)")
        #expect(step(clientB, "fresh").contains(#""state":"Not started""#) && step(clientB, "load") == "ok", "\(clientB)")
        #expect(step(clientB, "restored").contains(#""state":"Running""#) && step(clientB, "restored").contains("lab-fcpy-restored"), "\(clientB)")
        #expect(step(clientB, "config").contains(#""mem_size_mib":256"#) && step(clientB, "config").contains("disk.img"), "\(clientB)")
        #expect(step(clientB, "ctrl-alt-del") == "ok", "\(clientB)")
        #expect(line("client-b-exit ") == "client-b-exit 0", "\(output)")
        #expect(line("echo-before ") == "echo-before before" && line("echo-after ") == "echo-after after", "vsock before and after: \(output)")
        #expect(line("keyboard ") == "keyboard 1", "the guest's atkbd found Kestrel's keyboard: \(output)")
        #expect(line("disk-read ") == "disk-read kestrel-disk-marker", "the restored guest reads its disk: \(output)")
        // SendCtrlAltDel: the guest kernel restarts through the i8042, and
        // Kestrel ends with the reset status (65), naming it.
        #expect(line("b-exit ") == "b-exit 65" && section("b.err").contains("i8042 reset"), "Ctrl+Alt+Del reset the guest: \(output)")
        let first = Self.ticks(section("a")), second = Self.ticks(section("b"))
        #expect(!first.isEmpty && first == Array(0..<first.count), "the ticks before the snapshot: \(first)")
        #expect(second.count >= 10 && second == Array((second.first ?? -1)...(second.last ?? -2)), "the restored ticks run on: \(second.prefix(5))…")
        if let last = first.last, let next = second.first {
            #expect(next == last + 1 || next == last + 2, "the count went on where it stopped: \(last) then \(next)")
        }
    }
}
