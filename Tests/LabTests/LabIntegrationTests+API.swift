import Glibc
@testable import Lab
import Testing
import TextFormat

/// Firecracker's API with a Linux guest in the lab, driven by curl inside
/// the L1 (the host's curl and the libraries ldd names, added to the L1's
/// initramfs): `kestrel run --api-sock` alone configures a 6.1 L2 with a
/// disk and vsock and starts it; the guest prints a tick every 100 ms. The
/// L1 pauses it (no tick while paused), takes a full snapshot, SIGKILLs the
/// VMM and loads the snapshot in a new `kestrel run --api-sock`. The ticks go
/// on from where they stopped, vsock echoes before and after, the guest
/// reads and writes its disk after the restore, and powers off.
extension LabIntegrationTests {
    /// `--add` arguments for `program` and every library `ldd` names, at their own paths.
    static func programWithLibraries(_ program: String) throws -> [String] {
        let listing = try HostProcess.output(["ldd", program])
        try #require(listing.status == 0, "ldd \(program): \(listing.output)")
        var paths = [program]
        for line in listing.output.split(separator: "\n") {
            // Lines start with a tab; the loader's line ("\t/lib64/ld-linux-x86-64.so.2 (0x...)") names it first.
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if let path = words.first(where: { $0.hasPrefix("/") }) { paths.append(String(path)) }
        }
        // The file itself goes where ldd names it: a symlink there
        // (/lib64/ld-linux-x86-64.so.2) would point at a path the L1 lacks.
        return try paths.flatMap { path in
            let file = try HostProcess.output(["readlink", "-f", path]).output.split(separator: "\n").first.map(String.init) ?? path
            return ["--add", "\(file):\(path)"]
        }
    }

    /// The tick numbers in `text` ("tick N" lines), in order.
    static func ticks(_ text: String) -> [Int] {
        text.split(separator: "\n").compactMap { line in line.hasPrefix("tick ") ? Int(line.dropFirst(5)) : nil }
    }

    /// On the Bochs host (`7.2@bochs`) the guest is the 7.2 kernel itself,
    /// which turns on kernel IBT there: the snapshot goes through kvm_intel's
    /// save/restore lists, CET's MSRs among them, and the guest must run on
    /// after the restore (the test does not read S_CET itself).
    @Test(arguments: [("6.1", "anonymous"), ("7.2", "guest_memfd"), ("7.2@bochs", "anonymous")])
    func curlBootsPausesSnapshotsAndRestoresALinuxGuest(l1: String, backend: String) throws {
        let curl = try #require(HostProcess.find("curl"), "curl is not installed (scripts/prepare-host test installs it)")
        let directory = try TemporaryDirectory(prefix: "kestrel-labapi")
        let guest = #"""
            for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
            echo "serial $(cat /sys/block/vda/serial)"
            ( while true; do kestrel vsock listen --port 52 --echo; done ) >/dev/null 2>&1 &
            i=0; while [ $i -lt 150 ]; do
              echo "tick $i"; i=$((i+1)); sleep 0.1
              if [ $i -eq 120 ]; then
                echo 3 > /proc/sys/vm/drop_caches
                echo "disk-read $(head -c 19 /dev/vda)"
                printf after-restore | dd of=/dev/vda bs=4096 seek=1 conv=fsync 2>/dev/null && echo disk-written
              fi
            done
            poweroff -f
            """#
        let machine = backend == "anonymous" ? "" : #", "memory_backend": "\#(backend)""#
        let host = #"""
            set -u
            head -c 1048576 /dev/zero > /tmp/disk.img
            printf kestrel-disk-marker | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            c() { sock=$1; method=$2; path=$3; shift 3; echo "$method $path $(CURL -s -S --max-time 120 --unix-socket $sock -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }
            wait_for() { i=0; until [ -S $1 ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; }
            echo_over_vsock() {
              i=0; until echo $1 | kestrel vsock connect --uds /tmp/v.sock --port 52 > /tmp/echo-$1.txt 2>/dev/null && [ -s /tmp/echo-$1.txt ]; do
                i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5
              done
              echo "echo-$1 $(cat /tmp/echo-$1.txt)"
            }
            kestrel run --api-sock /tmp/a.sock --id lab-vm > /tmp/a.out 2>/tmp/a.err &
            a=$!
            wait_for /tmp/a.sock
            c /tmp/a.sock GET /
            c /tmp/a.sock PUT /boot-source -d '{"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"}'
            c /tmp/a.sock PUT /machine-config -d '{"vcpu_count": 1, "mem_size_mib": 256MACHINE}'
            c /tmp/a.sock PUT /drives/data -d '{"drive_id": "data", "path_on_host": "/tmp/disk.img", "is_root_device": false, "is_read_only": false}'
            c /tmp/a.sock PUT /vsock -d '{"guest_cid": 3, "uds_path": "/tmp/v.sock"}'
            c /tmp/a.sock PUT /actions -d '{"action_type": "InstanceStart"}'
            i=0; until grep -q "tick 10" /tmp/a.out; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done
            echo_over_vsock before
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_path": "/tmp/vm.state", "mem_file_path": "/tmp/vm.mem"}'
            c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'
            c /tmp/a.sock GET /
            before=$(grep -c tick /tmp/a.out); sleep 2; after=$(grep -c tick /tmp/a.out)
            echo "paused-ticks $before $after"
            c /tmp/a.sock PUT /machine-config -d '{"vcpu_count": 2, "mem_size_mib": 256}'
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_type": "Full", "snapshot_path": "/tmp/vm.state", "mem_file_path": "/tmp/vm.mem"}'
            grep "kestrel: snapshot:" /tmp/a.err
            kill -9 $a; wait $a; echo "a-exit $?"
            echo "files $(stat -c %s /tmp/vm.state) $(stat -c %s /tmp/vm.mem) $(du -k /tmp/vm.mem | cut -f1)"
            kestrel run --api-sock /tmp/b.sock --id lab-vm-restored > /tmp/b.out 2>/tmp/b.err &
            b=$!
            wait_for /tmp/b.sock
            c /tmp/b.sock PUT /snapshot/load -d '{"snapshot_path": "/tmp/vm.state", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/vm.mem"}, "resume_vm": true}'
            c /tmp/b.sock GET /
            echo "mapped $(grep -c /tmp/vm.mem /proc/$b/maps)"
            echo_over_vsock after
            wait $b; echo "b-exit $?"
            echo "a-last $(grep tick /tmp/a.out | tail -1)"
            echo "== a"; cat /tmp/a.out
            echo "== b"; cat /tmp/b.out
            echo "== b.err"; tail -5 /tmp/b.err
            echo "image $(dd if=/tmp/disk.img bs=1 skip=4096 count=13 2>/dev/null)"
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        // The L1's PATH is /bin:/lab/bin, so curl is called by the path it was added at.
        let script = host.replacing("CURL -s", with: curl + " -s").replacing("256MACHINE", with: "256" + machine)
        try writeFileAtomically(Array(script.utf8), to: directory.path + "/l1.sh")
        let labHost = l1.hasSuffix("@bochs") ? ["--host", "bochs", "--kernel", String(l1.dropLast(6)), "--guest-kernel", "--timeout", "1500"]
            : ["--kernel", l1, "--guest", "6.1"]
        let run = try LabIntegrationTests.run(
            ["lab", "run"] + labHost + ["--add", directory.path + "/guest.sh:/lab/guest.sh",
             "--add", directory.path + "/l1.sh:/lab/l1.sh"] + (try Self.programWithLibraries(curl)) + ["--", "sh /lab/l1.sh"], timeout: 1600)
        print("the API and a snapshot in the \(l1) lab (\(backend)): \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        // An L1 that died (FINDINGS.md, section 6) is booted again and the
        // script run again: the last run's output is the one to read.
        let marker = #"GET / {"app_name":"Kestrel","id":"lab-vm","state":"Not started""#
        let output = run.output.ranges(of: marker).last.map { String(run.output[$0.lowerBound...]) } ?? run.output
        if output.count < run.output.count { print("the L1 was booted again; reading its last run") }
        let lines = output.split(separator: "\n").map(String.init)
        func line(_ prefix: String) -> String { lines.first { $0.hasPrefix(prefix) } ?? "(no \(prefix) line)" }
        func matching(_ prefix: String) -> [String] { lines.filter { $0.hasPrefix(prefix) } }
        #expect(line("GET / ").contains(#""state":"Not started""#) && line("GET / ").hasSuffix(" 200"), "\(output)")
        for step in ["PUT /boot-source", "PUT /drives/data", "PUT /vsock", "PUT /actions", "PATCH /vm", "PUT /snapshot/load"] {
            #expect(line(step + " ").hasSuffix(" 204"), "\(step): \(output)")
        }
        let creates = matching("PUT /snapshot/create ")
        #expect(creates.count == 2 && creates[0].hasSuffix(" 400") && creates[0].contains("pause it first") && creates[1].hasSuffix(" 204"),
                "a snapshot is refused while running and taken while paused: \(output)")
        #expect(matching("GET / ").contains { $0.contains(#""state":"Paused""#) }, "\(output)")
        #expect(matching("GET / ").contains { $0.contains(#""id":"lab-vm-restored""#) && $0.contains(#""state":"Running""#) }, "\(output)")
        let paused = line("paused-ticks ").split(separator: " ")
        #expect(paused.count == 3 && paused[1] == paused[2] && Int(paused[1]) ?? 0 >= 11, "no tick while paused: \(output)")
        let late = matching("PUT /machine-config ")
        #expect(late.count == 2 && late[1].hasSuffix(" 400") && late[1].contains("not supported after starting"), "\(output)")
        #expect(line("a-exit ") == "a-exit 137", "the first VMM was SIGKILLed: \(output)")
        #expect(line("mapped ") != "mapped 0" || backend != "anonymous", "the restored RAM is a mapping of the memory file: \(output)")
        #expect(line("echo-before ") == "echo-before before" && line("echo-after ") == "echo-after after", "vsock before and after the restore: \(output)")
        #expect(line("b-exit ") == "b-exit 0", "the restored guest powered off: \(output)")
        // The count: 0... in the first VMM's output, then on in the second's
        // from the next tick (a line cut by the kill may be missing: its
        // start was in the first VMM's line buffer).
        let sections = output.components(separatedBy: "\n== ")
        let first = Self.ticks(sections.first { $0.hasPrefix("a\n") } ?? ""), second = Self.ticks(sections.first { $0.hasPrefix("b\n") } ?? "")
        #expect(!first.isEmpty && first == Array(0..<first.count), "the ticks before the snapshot: \(first)")
        #expect(second.last == 149 && second == Array((second.first ?? -1)...149), "the restored ticks run on to the end: \(second)")
        if let last = first.last, let next = second.first {
            #expect(next == last + 1 || next == last + 2, "the count went on where it stopped: \(last) then \(next)")
        }
        #expect(line("disk-read ") == "disk-read kestrel-disk-marker", "the restored guest reads its disk: \(output)")
        #expect(lines.contains("disk-written") && line("image ") == "image after-restore", "and writes it: \(output)")
        #expect(line("serial ") == "serial data", "\(output)")
    }
}
