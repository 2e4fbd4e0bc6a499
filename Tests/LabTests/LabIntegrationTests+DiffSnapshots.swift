import Glibc
@testable import Lab
import Testing
import TextFormat

/// Diff snapshots with a Linux guest (issue 37, item 1). A 6.1 L2 with
/// `track_dirty_pages` writes known patterns in three phases, and waits on
/// vsock after each while the L1 pauses it and snapshots: a Full base, then
/// two Diffs. Phase 2 also reads its disk into the page cache, memory only
/// the virtio-blk device writes, which KVM's dirty log never sees. After the
/// last Diff the L1 takes a Full reference, kills the VMM, changes the disk
/// image, is refused a merge of a diff on the wrong base, of a corrupt diff
/// and of a truncated one (the base unchanged), merges base + diffs with
/// `kestrel snapshot merge`, and restores
/// the merge in a new VMM: the merge is byte for byte the reference (its
/// hash, from the file), and the guest goes on and finds its patterns and
/// its cached disk blocks as they were (their hashes, from inside the guest).
extension LabIntegrationTests {
    /// Once with each `dirty_log`: the bitmap (KVM_GET_DIRTY_LOG) and the
    /// dirty ring (harvested when a vCPU's ring fills and at each read).
    @Test(arguments: ["Bitmap", "Ring"]) func diffSnapshotsMergeIntoTheGuestsMemoryAndTheGuestGoesOn(_ dirtyLog: String) throws {
        let curl = try #require(HostProcess.find("curl"), "curl is not installed (scripts/prepare-host test installs it)")
        let directory = try TemporaryDirectory(prefix: "kestrel-labdiff")
        let guest = #"""
            for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
            # Held open: Linux drops a block device's page cache at its last close.
            exec 3< /dev/vda
            sum() { sha256sum $1 | cut -c1-16; }
            wait_go() { kestrel vsock listen --port $1 </dev/null >/dev/null; }
            head -c 8388608 /dev/urandom > /tmp/a
            echo "phase-1 a=$(sum /tmp/a)"
            wait_go 61
            head -c 8388608 /dev/urandom > /tmp/b
            dd if=/dev/zero of=/tmp/a bs=4096 count=256 conv=notrunc 2>/dev/null
            echo "phase-2 a=$(sum /tmp/a) b=$(sum /tmp/b) disk=$(sum /dev/vda)"
            wait_go 62
            head -c 4194304 /dev/urandom > /tmp/c
            echo "phase-3 a=$(sum /tmp/a) b=$(sum /tmp/b) c=$(sum /tmp/c)"
            wait_go 63
            echo "restored a=$(sum /tmp/a) b=$(sum /tmp/b) c=$(sum /tmp/c) disk=$(sum /dev/vda)"
            for i in 1 2 3; do echo "going-on $i"; sleep 0.2; done
            poweroff -f
            """#
        let host = #"""
            set -u
            head -c 4194304 /dev/urandom > /tmp/disk.img
            kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            c() { sock=$1; method=$2; path=$3; shift 3; echo "$method $path $(CURL -s -S --max-time 300 --unix-socket $sock -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }
            wait_for() { i=0; until [ -S $1 ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; }
            wait_line() { i=0; until grep -q "^$2" $1; do i=$((i+1)); [ $i -gt 1500 ] && break; sleep 0.2; done; }
            go() { i=0; until echo go | kestrel vsock connect --uds /tmp/v.sock --port $1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5; done; }
            snapshot() { c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'; c /tmp/a.sock PUT /snapshot/create -d "{\"snapshot_type\": \"$1\", \"snapshot_path\": \"/tmp/$2.state\", \"mem_file_path\": \"/tmp/$2.mem\"}"; }
            kestrel run --api-sock /tmp/a.sock --id diff-vm > /tmp/a.out 2>/tmp/a.err &
            a=$!
            wait_for /tmp/a.sock
            c /tmp/a.sock PUT /boot-source -d '{"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"}'
            c /tmp/a.sock PUT /machine-config -d '{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true, "dirty_log": "DIRTYLOG"}'
            c /tmp/a.sock GET /machine-config
            c /tmp/a.sock PUT /drives/data -d '{"drive_id": "data", "path_on_host": "/tmp/disk.img", "is_root_device": false, "is_read_only": false}'
            c /tmp/a.sock PUT /vsock -d '{"guest_cid": 3, "uds_path": "/tmp/v.sock"}'
            c /tmp/a.sock PUT /actions -d '{"action_type": "InstanceStart"}'
            wait_line /tmp/a.out phase-1
            snapshot Full base
            c /tmp/a.sock PATCH /vm -d '{"state": "Resumed"}'
            go 61
            wait_line /tmp/a.out phase-2
            snapshot Diff d1
            c /tmp/a.sock PATCH /vm -d '{"state": "Resumed"}'
            go 62
            wait_line /tmp/a.out phase-3
            # Memory introspection (Kestrel's /kestrel/ routes) at the same pause as d2 and the reference.
            c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'
            echo "regions $(CURL -s --unix-socket /tmp/a.sock http://localhost/kestrel/memory | grep -o '"backing":"[a-z ]*"\|"dirty_log":[a-z]*\|"total_bytes":[0-9]*' | tr '\n' ' ')"
            echo "dirty $(CURL -s --unix-socket /tmp/a.sock http://localhost/kestrel/memory/dirty | grep -o '"dirty_pages":[0-9]*\|"since":"[a-z]*"' | tr '\n' ' ')"
            snapshot Diff d2
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_type": "Full", "snapshot_path": "/tmp/ref.state", "mem_file_path": "/tmp/ref.mem"}'
            c /tmp/a.sock PUT /kestrel/memory/dump -d '{"mem_file_path": "/tmp/dump.mem"}'
            echo "hash dump $(sha256sum < /tmp/dump.mem | cut -c1-64)"
            # The L1's /tmp is a tmpfs of half its memory: what is no longer needed goes (a merge ran out of space
            # with all of it kept).
            rm -f /tmp/dump.mem
            grep "kestrel: snapshot:" /tmp/a.err
            kill -9 $a; wait $a; echo "a-exit $?"
            for f in base d1 d2 ref; do echo "file $f $(stat -c %s /tmp/$f.mem) $(du -k /tmp/$f.mem | cut -f1)"; done
            # The disk changes under the guest: only its page cache still has the old blocks.
            head -c 1048576 /dev/zero | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
            # Refused by name, each before a byte is written: a diff on the wrong
            # base, a corrupt diff (its holes filled by a plain copy), a truncated one.
            echo "hash base-before $(sha256sum < /tmp/base.mem | cut -c1-64)"
            cat /tmp/d1.mem > /tmp/filled.mem
            head -c 1048576 /tmp/d1.mem > /tmp/short.mem
            refuse() { name=$1; shift; message=$(kestrel snapshot merge "$@" -o /tmp/refused.mem 2>&1); echo "refused $name $? $(echo $message | head -c 300)"; }
            refuse wrong-base /tmp/base.state:/tmp/base.mem /tmp/d2.state:/tmp/d2.mem
            refuse corrupt /tmp/base.state:/tmp/base.mem /tmp/d1.state:/tmp/filled.mem /tmp/d2.state:/tmp/d2.mem
            refuse truncated /tmp/base.state:/tmp/base.mem /tmp/d1.state:/tmp/short.mem
            echo "hash base-after $(sha256sum < /tmp/base.mem | cut -c1-64) refused-output $(ls /tmp/refused.mem* 2>/dev/null | wc -l)"
            rm -f /tmp/filled.mem /tmp/short.mem
            kestrel snapshot merge /tmp/base.state:/tmp/base.mem /tmp/d1.state:/tmp/d1.mem /tmp/d2.state:/tmp/d2.mem -o /tmp/merged.mem; echo "merge-exit $?"
            echo "hash merged $(sha256sum < /tmp/merged.mem | cut -c1-64)"
            echo "hash ref $(sha256sum < /tmp/ref.mem | cut -c1-64)"
            echo "hash base-d1 $(kestrel snapshot merge /tmp/base.state:/tmp/base.mem /tmp/d1.state:/tmp/d1.mem -o /tmp/partial.mem >/dev/null; sha256sum < /tmp/partial.mem | cut -c1-64)"
            kestrel run --api-sock /tmp/b.sock --id diff-vm-restored > /tmp/b.out 2>/tmp/b.err &
            b=$!
            wait_for /tmp/b.sock
            c /tmp/b.sock PUT /snapshot/load -d '{"snapshot_path": "/tmp/d2.state", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/merged.mem"}, "resume_vm": true}'
            go 63
            # A load that failed leaves b waiting for ever: it is stopped after 3 minutes, not at the L1's timeout.
            ( sleep 180; kill -9 $b 2>/dev/null ) &
            watchdog=$!
            wait $b; echo "b-exit $?"
            kill $watchdog 2>/dev/null
            echo "== a"; grep -E "^phase-" /tmp/a.out
            echo "== b"; grep -E "^(restored|going-on)" /tmp/b.out
            echo "== b.err"; tail -5 /tmp/b.err
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(host.replacing("CURL -s", with: curl + " -s").replacing("DIRTYLOG", with: dirtyLog).utf8), to: directory.path + "/l1.sh")
        let run = try Self.run(
            ["lab", "run", "--kernel", "7.2", "--guest", "6.1", "--memory", "3072", "--timeout", "900", "--add", directory.path + "/guest.sh:/lab/guest.sh",
             "--add", directory.path + "/l1.sh:/lab/l1.sh"] + (try Self.programWithLibraries(curl)) + ["--", "sh /lab/l1.sh"], timeout: 1000)
        print("diff snapshots in the 7.2 lab, dirty_log \(dirtyLog): \(run.seconds.text(places: 1)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        if !run.rebootNotes.isEmpty { print(run.rebootNotes.joined(separator: "\n") + "\nreading the last boot's run") }
        let output = ScriptOutput(run.output, from: "PUT /boot-source")
        func line(_ prefix: String) -> String { output.lines.first { $0.hasPrefix(prefix) } ?? "(no \(prefix) line)" }
        func fields(_ prefix: String) -> [String: String] {
            Dictionary(line(prefix).split(separator: " ").dropFirst().compactMap { field -> (String, String)? in
                let parts = field.split(separator: "=", maxSplits: 1)
                return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
            }, uniquingKeysWith: { first, _ in first })
        }
        #expect(line("GET /machine-config").contains(#""track_dirty_pages":true"#)
                && line("GET /machine-config").contains(#""dirty_log":"Ring""#) == (dirtyLog == "Ring"), "\(output.text)")
        let creates = output.lines.filter { $0.hasPrefix("PUT /snapshot/create") }
        #expect(creates.count == 4 && creates.allSatisfy { $0.hasSuffix(" 204") }, "four snapshots taken: \(creates)")
        #expect(line("merge-exit") == "merge-exit 0", "\(output.text)")
        // Sizes: apparent size all of RAM; what the diffs hold, a fraction of it.
        let sizes = Dictionary(output.lines.filter { $0.hasPrefix("file ") }.compactMap { line -> (String, (Int, Int))? in
            let parts = line.split(separator: " ")
            guard parts.count == 4, let apparent = Int(parts[2]), let kib = Int(parts[3]) else { return nil }
            return (String(parts[1]), (apparent, kib))
        }, uniquingKeysWith: { first, _ in first })
        #expect(Set(sizes.values.map(\.0)) == [256 << 20], "every memory file is all of RAM: \(sizes)")
        if let d1 = sizes["d1"]?.1, let d2 = sizes["d2"]?.1, let reference = sizes["ref"]?.1 {
            #expect(d1 >= 8 * 1024 + 4 * 1024 && d1 < reference, "d1 holds b (8 MiB), the cached disk (4 MiB), and less than a Full: \(sizes)")
            #expect(d2 >= 4 * 1024 && d2 < d1, "d2 holds c (4 MiB) and less than d1: \(sizes)")
        } else {
            Issue.record("no file sizes: \(output.text)")
        }
        for (name, expected) in [("wrong-base", "wrong base: the diff /tmp/d2.state continues snapshot"), ("corrupt", "the diff /tmp/filled.mem is corrupt"),
                                 ("truncated", "the memory file /tmp/short.mem has 1048576 bytes")] {
            let refused = line("refused \(name) ")
            #expect(!refused.hasPrefix("refused \(name) 0 ") && refused.contains(expected), "\(name): \(refused)")
        }
        #expect(line("hash base-before").dropFirst(17) == line("hash base-after").dropFirst(16).prefix(64)
                && line("hash base-after").hasSuffix("refused-output 0"), "the refusals changed nothing: \(output.text)")
        // Introspection: the dirty report before d2 names exactly the pages d2 wrote; the dump is the reference Full.
        let dirtyPages = line("dirty ").split(separator: " ").first { $0.hasPrefix("\"dirty_pages\":") }.flatMap { Int($0.split(separator: ":")[1]) }
        #expect(line("regions").contains(#""backing":"anonymous""#) && line("regions").contains(#""dirty_log":true"#)
                && line("regions").contains(#""total_bytes":268435456"#), "\(line("regions"))")
        #expect(line("dirty ").contains(#""since":"snapshot""#) && (dirtyPages ?? 0) >= 1024, "c (4 MiB) at least: \(line("dirty "))")
        if let dirtyPages, let d2 = sizes["d2"]?.1 {
            // du counts KiB in whole blocks; the diff holds exactly the pages reported.
            #expect(d2 >= dirtyPages * 4 && d2 <= dirtyPages * 4 + 64, "d2 holds \(d2) KiB for \(dirtyPages) dirty pages")
            print("diff size against dirtied pages: \(d2) KiB for \(dirtyPages) pages of 4 KiB, \((Double(d2) / Double(dirtyPages * 4)).text(places: 3))x")
        }
        #expect(line("PUT /kestrel/memory/dump").hasSuffix(" 200") && line("hash dump").dropFirst(10) == line("hash ref").dropFirst(9),
                "the dump is byte for byte the Full snapshot of the same pause: \(line("hash dump")) / \(line("hash ref"))")
        let merged = line("hash merged"), reference = line("hash ref")
        #expect(merged.dropFirst(12) == reference.dropFirst(9) && reference.count == 9 + 64,
                "base + d1 + d2 is byte for byte the Full snapshot taken at d2: \(merged) / \(reference)")
        #expect(line("hash base-d1").dropFirst(13) != reference.dropFirst(9), "without d2 the merge differs (the control): \(output.text)")
        // From inside the guest.
        let phase2 = fields("phase-2"), phase3 = fields("phase-3"), restored = fields("restored")
        #expect(restored["a"] != nil && restored["a"] == phase3["a"] && restored["b"] == phase3["b"] && restored["c"] == phase3["c"],
                "the restored guest finds its patterns as at the last snapshot: \(output.text)")
        #expect(phase2["a"] != fields("phase-1")["a"], "phase 2 changed a (zeros over its first MiB)")
        #expect(restored["disk"] != nil && restored["disk"] == phase2["disk"],
                "the disk blocks the device wrote into the page cache came back, though the image changed: \(output.text)")
        #expect(output.lines.filter { $0.hasPrefix("going-on") }.count == 3 && line("b-exit") == "b-exit 0", "the guest went on: \(output.text)")
    }
}
