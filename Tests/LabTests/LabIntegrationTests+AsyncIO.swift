import Glibc
@testable import Lab
import Testing
import TextFormat

/// `io_engine: Async` with a Linux guest in the 6.1 lab, against `Sync` in
/// the same VM: two 32 MiB drives, one of each engine. The guest writes a
/// pattern to each through the page cache and flushes, reads both back with
/// O_DIRECT and compares checksums, then times 32 MiB of O_DIRECT reads on
/// each: one reader (one request at a time), then four readers at once (up
/// to four requests in flight, where a ring can overlap them). Each timing is
/// the median of three runs; the ratios are printed, not bounded: the L1 is
/// TCG, where the file's pages are in the L1's cache and the cost is
/// emulation, so this shows that Async is correct and what it costs here.
/// The same VM carries a custom CPU template (`cpu-config`) that clears
/// POPCNT, and the guest's /proc/cpuinfo must lack it (the flintlock
/// replay's guest, in the same lab without one, shows it: the control).
extension LabIntegrationTests {
    @Test func anAsyncDriveServesALinuxGuestAndIsMeasuredAgainstSync() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labasync")
        let guest = #"""
            for i in $(seq 100); do [ -b /dev/vdb ] && break; sleep 0.1; done
            \#(Self.nowFunction)
            median() { sort -n | sed -n 2p; }
            one() { s=$(now); dd if=/dev/$1 of=/dev/null bs=64k count=512 iflag=direct 2>/dev/null || echo dd-failed >&2; e=$(now); echo $(( e - s )); }
            four() {
                s=$(now)
                for part in 0 1 2 3; do dd if=/dev/$1 of=/dev/null bs=64k count=128 skip=$((part * 128)) iflag=direct 2>/dev/null & done
                wait; e=$(now); echo $(( e - s ))
            }
            echo "popcnt $(grep -c -w popcnt /proc/cpuinfo)"
            for disk in vda vdb; do
                echo "engine-$disk $(cat /sys/block/$disk/serial)"
                head -c 33554432 /dev/urandom > /tmp/pattern
                dd if=/tmp/pattern of=/dev/$disk bs=1M conv=fsync 2>/dev/null || echo "write-failed $disk"
                echo "sum-$disk $( [ "$(dd if=/dev/$disk bs=64k iflag=direct 2>/dev/null | md5sum | cut -c1-32)" = "$(md5sum < /tmp/pattern | cut -c1-32)" ] && echo same || echo different)"
                rm /tmp/pattern
            done
            for disk in vda vdb; do
                one $disk >/dev/null
                echo "one-$disk $( (one $disk; one $disk; one $disk) | median)"
                echo "four-$disk $( (four $disk; four $disk; four $disk) | median)"
            done
            echo timings-done
            poweroff -f
            """#
        let l1 = #"""
            set -u
            head -c 33554432 /dev/zero > /tmp/sync.img; head -c 33554432 /dev/zero > /tmp/async.img
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            cat > /tmp/vm.json <<'JSON'
            {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                             "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "cpu-config": {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                            "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"}]}]},
             "drives": [{"drive_id": "sync", "path_on_host": "/tmp/sync.img", "is_root_device": false, "is_read_only": false,
                         "cache_type": "Writeback", "io_engine": "Sync"},
                        {"drive_id": "async", "path_on_host": "/tmp/async.img", "is_root_device": false, "is_read_only": false,
                         "cache_type": "Writeback", "io_engine": "Async"}]}
            JSON
            kestrel run --api-sock /tmp/a.sock --config-file /tmp/vm.json > /tmp/l2.out 2>/tmp/l2.err &
            vm=$!
            \#(Self.curlFunction(socket: "/tmp/a.sock"))
            i=0; until [ -S /tmp/a.sock ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
            c GET /vm/config
            wait $vm; echo "l2-exit $?"
            echo "== l2"; cat /tmp/l2.out; tail -3 /tmp/l2.err
            echo "== end"
            """#
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: ["--kernel", "6.1", "--guest-kernel"])
        print("io_engine Async against Sync in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let script = ScriptOutput(run.output, from: "\nGET /vm/config")
        let output = script.text, value = script.value
        #expect(value("l2-exit") == "0", "\(output)")
        #expect(value("GET /vm/config")?.contains(#""io_engine":"Async""#) == true, "\(output)")
        #expect(value("engine-vda") == "sync" && value("engine-vdb") == "async", "\(output)")
        // The config file's cpu-config cleared POPCNT (leaf 1 ECX bit 23); flintlock's guest, in the same lab, has it.
        #expect(value("popcnt") == "0", "the custom CPU template reached the guest's CPUID: \(output)")
        #expect(value("sum-vda") == "same" && value("sum-vdb") == "same", "32 MiB written and read back through each engine: \(output)")
        // (The guest's script is echoed on the console first: only whole lines count.)
        #expect(!script.lines.contains("dd-failed") && !script.lines.contains { $0.hasPrefix("write-failed ") }, "\(output)")
        let timings = ["one-vda", "one-vdb", "four-vda", "four-vdb"].map { script.number($0) }
        #expect(timings.allSatisfy { $0 > 0 }, "\(output)")
        guard timings.allSatisfy({ $0 > 0 }) else { return }
        func rate(_ milliseconds: Int) -> String { (32_000.0 / Double(milliseconds)).text(places: 1) }
        print("""
            32 MiB of O_DIRECT reads, medians of 3 (MiB/s): Sync \(rate(timings[0])) one reader, \(rate(timings[2])) four readers; \
            Async \(rate(timings[1])) one reader, \(rate(timings[3])) four readers; \
            Async/Sync time ratio \((Double(timings[1]) / Double(timings[0])).text(places: 2)) (one), \
            \((Double(timings[3]) / Double(timings[2])).text(places: 2)) (four)
            """)
    }
}
