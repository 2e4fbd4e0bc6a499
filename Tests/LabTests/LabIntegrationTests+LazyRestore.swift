import Glibc
@testable import Lab
import Testing
import TextFormat

/// Lazy restore with a Linux guest (issue 37, item 2). A 6.1 L2 of 512 MiB
/// fills 96 MiB of tmpfs with random bytes, hashes them, and waits on
/// vsock; the 6.12 L1 pauses it, snapshots it and kills the VMM. The one
/// snapshot is then loaded five times, each in a new VMM: File with
/// `paging` Mapped, Eager, OnDemand and Prefault, and Uffd served by
/// scripts/uffd-handler.py (the handler written from Firecracker's
/// documentation, run by the host's Python put into the L1). Each time the
/// guest answers on vsock (its first useful work), hashes its 96 MiB again
/// (every page touched) and finds them as they were. The L1 times both from
/// the load request, and for Prefault the end of the background copy, which
/// runs at nice 19 and so mostly in the time the guest leaves.
extension LabIntegrationTests {
    @Test func lazyRestoresServeALinuxGuestFromEveryMemoryBackend() throws {
        let curl = try #require(HostProcess.find("curl"), "curl is not installed (scripts/prepare-host test installs it)")
        let directory = try TemporaryDirectory(prefix: "kestrel-lablazy")
        var script = #filePath
        for _ in 0..<3 { script = String(script[..<script.lastIndex(of: "/")!]) }
        let listing = try HostProcess.output(["python3", script + "/scripts/uffd-handler.py", "--list-files"])
        try #require(listing.status == 0, "uffd-handler.py --list-files: \(listing.errors)")
        try writeFileAtomically(Array(listing.output.utf8), to: directory.path + "/files.txt")
        let python = try #require(listing.output.split(separator: "\n").first { $0.contains("/bin/python") }.map { String($0.split(separator: ":").last!) },
                                  "no interpreter in the list")
        let guest = #"""
            sum() { sha256sum $1 | cut -c1-16; }
            head -c 100663296 /dev/urandom > /tmp/a
            echo "ready a=$(sum /tmp/a)"
            kestrel vsock listen --port 61 </dev/null >/dev/null
            echo "restored a=$(sum /tmp/a)"
            kestrel vsock listen --port 62 </dev/null >/dev/null
            poweroff -f
            """#
        let host = #"""
            set -u
            kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            c() { sock=$1; method=$2; path=$3; shift 3; echo "$method $path $(CURL -s -S --max-time 300 --unix-socket $sock -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }
            wait_for() { i=0; until [ -S $1 ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; }
            wait_line() { i=0; until grep -q "^$2" $1; do i=$((i+1)); [ $i -gt 3000 ] && break; sleep 0.1; done; }
            go() { i=0; until echo go | kestrel vsock connect --uds /tmp/v.sock --port $1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done; }
            # busybox date has no %N: /proc/uptime's hundredths of a second.
            now() { cut -d' ' -f1 /proc/uptime; }
            ms() { awk -v a=$1 -v b=$(now) 'BEGIN { printf "%d", (b - a) * 1000 }'; }
            kestrel run --api-sock /tmp/a.sock --id lazy-vm > /tmp/a.out 2>/tmp/a.err &
            a=$!
            wait_for /tmp/a.sock
            c /tmp/a.sock PUT /boot-source -d '{"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"}'
            c /tmp/a.sock PUT /machine-config -d '{"vcpu_count": 1, "mem_size_mib": 512}'
            c /tmp/a.sock PUT /vsock -d '{"guest_cid": 3, "uds_path": "/tmp/v.sock"}'
            c /tmp/a.sock PUT /actions -d '{"action_type": "InstanceStart"}'
            wait_line /tmp/a.out ready
            c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_path": "/tmp/vm.state", "mem_file_path": "/tmp/vm.mem"}'
            kill -9 $a; wait $a
            echo "memory-file $(stat -c %s /tmp/vm.mem) $(du -k /tmp/vm.mem | cut -f1)"
            grep "^ready" /tmp/a.out
            for mode in Mapped Eager OnDemand Prefault Uffd; do
                rm -f /tmp/v.sock /tmp/b.sock
                if [ $mode = Uffd ]; then
                    PYTHON /lab/uffd-handler.py /tmp/uffd.sock /tmp/vm.mem 2>/tmp/handler.err &
                    h=$!
                    wait_for /tmp/uffd.sock
                    backend='{"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}'
                else
                    backend="{\"backend_type\": \"File\", \"backend_path\": \"/tmp/vm.mem\", \"paging\": \"$mode\"}"
                fi
                kestrel run --api-sock /tmp/b.sock --id lazy-$mode > /tmp/b.out 2>/tmp/b.err &
                b=$!
                wait_for /tmp/b.sock
                t0=$(now)
                c /tmp/b.sock PUT /snapshot/load -d "{\"snapshot_path\": \"/tmp/vm.state\", \"mem_backend\": $backend, \"resume_vm\": true}"
                loaded=$(ms $t0)
                go 61
                answered=$(ms $t0)
                wait_line /tmp/b.out restored
                hashed=$(ms $t0)
                # The prefault runs at nice 19: in this one-CPU L1 it
                # finishes mostly once the guest idles, which it does now.
                if [ $mode = Prefault ]; then wait_line /tmp/b.err "kestrel: restore pager: all"; echo "prefault-done $(ms $t0)"; fi
                go 62
                wait $b; status=$?
                echo "mode $mode load=$loaded answer=$answered hash=$hashed exit=$status $(grep '^restored' /tmp/b.out)"
                grep -E "pager|error|refused" /tmp/b.err | head -3
                if [ $mode = Uffd ]; then wait $h; echo "handler-exit $?"; tail -1 /tmp/handler.err; fi
            done
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(host.replacing("CURL -s", with: curl + " -s").replacing("PYTHON /lab", with: python + " /lab").utf8),
                                to: directory.path + "/l1.sh")
        let run = try Self.run(
            ["lab", "run", "--kernel", "6.12", "--guest", "6.1", "--memory", "3072", "--timeout", "900",
             "--add", directory.path + "/guest.sh:/lab/guest.sh", "--add", directory.path + "/l1.sh:/lab/l1.sh",
             "--add-list", directory.path + "/files.txt"] + (try Self.programWithLibraries(curl)) + ["--", "sh /lab/l1.sh"], timeout: 1000)
        print("lazy restores in the 6.12 lab: \(run.seconds.text(places: 1)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        if !run.rebootNotes.isEmpty { print(run.rebootNotes.joined(separator: "\n") + "\nreading the last boot's run") }
        let output = ScriptOutput(run.output, from: "PUT /boot-source")
        let ready = output.lines.first { $0.hasPrefix("ready a=") }.map { String($0.dropFirst(6)) }
        #expect(ready != nil && output.lines.contains { $0.hasPrefix("PUT /snapshot/create") && $0.hasSuffix(" 204") }, "\(output.text)")
        for mode in ["Mapped", "Eager", "OnDemand", "Prefault", "Uffd"] {
            let line = output.lines.first { $0.hasPrefix("mode \(mode) ") } ?? "(no line for \(mode))"
            #expect(line.contains(" exit=0 ") && ready.map { line.hasSuffix("restored " + $0) } == true,
                    "\(mode): the restored guest answered, found its 96 MiB as they were and powered off: \(line)\n\(output.text)")
        }
        var figures: [String] = []
        for mode in ["Mapped", "Eager", "OnDemand", "Prefault", "Uffd"] {
            let fields = (output.lines.first { $0.hasPrefix("mode \(mode) ") } ?? "").split(separator: " ")
            let value = { (name: String) in fields.first { $0.hasPrefix(name + "=") }.flatMap { Int($0.dropFirst(name.count + 1)) } }
            if let load = value("load"), let answer = value("answer"), let hash = value("hash") {
                figures.append("\(mode): load \(load) ms, vsock answer \(answer) ms, 96 MiB hashed \(hash) ms")
            } else {
                Issue.record("\(mode): no timings: \(fields)")
            }
        }
        print("from the load request (the L1's /proc/uptime, 10 ms steps):\n" + figures.joined(separator: "\n"))
        #expect(output.lines.contains { $0.contains("restore pager: all") }, "the prefault finished and let go: \(output.text)")
        print(output.lines.filter { $0.hasPrefix("prefault-done") || $0.contains("restore pager: all") }.joined(separator: "\n"))
        #expect(output.lines.contains("handler-exit 0") && output.lines.contains { $0.contains("uffd-handler: done:") && !$0.contains("done: 0 pages") },
                "the handler served pages and ended: \(output.text)")
    }
}
