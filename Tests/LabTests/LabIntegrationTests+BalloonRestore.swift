import Glibc
@testable import Lab
import Testing
import TextFormat

/// The balloon's statistics go on after a snapshot is restored in a new
/// Kestrel process. Linux's driver hands the device one statistics buffer
/// and waits for it back before it sends new figures; the snapshot does not
/// name the buffer the device held, so a restored device used to hold none,
/// and the guest's figures froze until it reset the device. The guest here
/// (the lab's 6.1-microvm kernel with `acpi=off`, its balloon driver built in) fills
/// tmpfs by 8 MiB a second, so its free memory keeps falling: after the
/// restore, two reads of `/balloon/statistics` three seconds apart must
/// both carry figures, and differ.
extension LabIntegrationTests {
    @Test func theBalloonsStatisticsGoOnAfterARestore() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labballoonrestore")
        let guest = #"""
            mkdir -p /mnt && mount -t tmpfs -o size=200m tmpfs /mnt
            echo filling
            for i in $(seq 150); do dd if=/dev/zero of=/mnt/f$i bs=1M count=8 2>/dev/null; sleep 1; done
            echo filled
            """#
        let l1 = #"""
            set -u
            kestrel initramfs --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            cat > /tmp/vm.json <<'JSON'
            {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                             "boot_args": "console=ttyS0 reboot=k panic=1 pci=off acpi=off quiet"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "balloon": {"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}}
            JSON
            c() { sock=$1; method=$2; path=$3; shift 3; echo "$method $path $(CURL -s -S --max-time 120 --unix-socket $sock -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }
            free() { CURL -s --max-time 10 --unix-socket $1 http://localhost/balloon/statistics | sed -n 's/.*"free_memory":\([0-9]*\).*/\1/p'; }
            kestrel run --api-sock /tmp/a.sock --config-file /tmp/vm.json > /tmp/a.out 2>/tmp/a.err &
            a=$!
            i=0; until grep -q '^filling' /tmp/a.out; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done
            sleep 4
            echo "before $(free /tmp/a.sock)"
            c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_path": "/tmp/vm.state", "mem_file_path": "/tmp/vm.mem"}'
            kill -9 $a; wait $a
            kestrel run --api-sock /tmp/b.sock > /tmp/b.out 2>/tmp/b.err &
            b=$!
            i=0; until [ -S /tmp/b.sock ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
            c /tmp/b.sock PUT /snapshot/load -d '{"snapshot_path": "/tmp/vm.state", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/vm.mem"}, "resume_vm": true}'
            sleep 4
            echo "after-1 $(free /tmp/b.sock)"
            sleep 3
            echo "after-2 $(free /tmp/b.sock)"
            c /tmp/b.sock GET /balloon/statistics
            kill -9 $b; wait $b
            echo "== b.err"; tail -5 /tmp/b.err
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: ["--kernel", "6.1", "--guest", "6.1-microvm"])
        let output = ScriptOutput(run.output, from: "before ")
        let report = "\(output.text.suffix(3000))\n\(run.errors.suffix(1500))"
        #expect(run.status == 0, "\(report)")
        #expect(output.value("PUT /snapshot/create") == "204" && output.value("PUT /snapshot/load") == "204", "\(report)")
        let before = output.number("before"), first = output.number("after-1"), second = output.number("after-2")
        #expect(before > 0, "statistics before the snapshot: \(report)")
        #expect(first > 0, "statistics after the restore: \(report)")
        #expect(second > 0 && second != first, "the guest's figures still change after the restore: \(report)")
        print("balloon statistics across a restore: free_memory \(before) before, \(first) and \(second) after; \(run.seconds.text(places: 1)) s")
    }
}
