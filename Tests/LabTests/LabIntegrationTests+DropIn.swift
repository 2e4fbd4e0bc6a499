import Glibc
@testable import Lab
import Testing
import TextFormat
import WireFormats

/// Kestrel as a Firecracker drop-in, with a Linux guest in the lab: run
/// under the name `firecracker` with a config file that has `mmds-config`,
/// `logger` and `metrics` sections (the metrics to a FIFO, as Kata sets
/// them up), `--metadata` and `--boot-timer`. The L1 PATCHes the data store
/// through the API while the guest boots; the guest reads it over MMDS V2
/// (a token from PUT, then GETs with it, in the IMDS and JSON formats, and a
/// 20 KB value over several TCP segments), is refused without a token, and
/// writes the boot timer. The L1 asks for FlushMetrics; every metrics line
/// parses as JSON and counts the guest's MMDS traffic.
extension LabIntegrationTests {
    @Test func aFirecrackerConfiguredGuestReadsMMDSAndIsLoggedAndMeasured() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labdropin")
        let big = String(repeating: "0123456789", count: 2000)
        let metadata = #"{"latest": {"meta-data": {"instance-id": "i-lab", "big": "\#(big)"}}}"#
        let guest = #"""
            for i in $(seq 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
            ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
            ip route add 169.254.169.254 dev eth0
            devmem 0xc0000000 8 123
            # busybox nc ends the connection when its input ends: the input stays open a second.
            ask() { { printf "$1"; sleep 1; } | nc 169.254.169.254 80 > /tmp/answer; }
            get() { wget -q -O - --header "X-metadata-token: $TOKEN" "$@"; }
            ask 'PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n'
            TOKEN=$(tail -n 1 /tmp/answer)
            echo "token-status $(head -n 1 /tmp/answer | tr -d '\r')"
            echo "token-length ${#TOKEN}"
            echo "v2-id $(get http://169.254.169.254/latest/meta-data/instance-id)"
            echo "v2-patched $(get http://169.254.169.254//latest/meta-data/patched)"
            echo "v2-json-length $(get --header 'Accept: application/json' http://169.254.169.254/latest/meta-data | wc -c)"
            ask 'GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n'
            echo "no-token $(head -n 1 /tmp/answer | tr -d '\r')"
            echo "wget-listing $(get http://169.254.169.254/latest/meta-data/ | tr '\n' ' ')"
            echo "big-length $(get http://169.254.169.254/latest/meta-data/big | wc -c)"
            echo reads-done
            sleep 4
            poweroff -f
            """#
        let l1 = #"""
            set -u
            ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null
            ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up
            ln -s "$(command -v kestrel)" /tmp/firecracker
            echo "version $(/tmp/firecracker --version | head -n 1)"
            mkfifo /tmp/metrics.fifo
            cat /tmp/metrics.fifo > /tmp/metrics.out &
            cat > /tmp/vm.json <<'JSON'
            {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                             "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}],
             "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
             "logger": {"log_path": "/tmp/fc.log", "level": "Info", "show_level": true},
             "metrics": {"metrics_path": "/tmp/metrics.fifo"}}
            JSON
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            /tmp/firecracker --api-sock /tmp/fc.sock --config-file /tmp/vm.json --metadata /lab/metadata.json --boot-timer > /tmp/l2.out 2>&1 &
            vm=$!
            i=0; until [ -S /tmp/fc.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
            \#(Self.curlFunction(socket: "/tmp/fc.sock"))
            c PATCH /mmds -d '{"latest": {"meta-data": {"patched": "by-the-host"}}}'
            c GET /version
            i=0; until grep -q '^reads-done' /tmp/l2.out; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.2; done
            c PUT /actions -d '{"action_type": "FlushMetrics"}'
            wait $vm; echo "l2-exit $?"
            sleep 1
            echo "== l2"; cat /tmp/l2.out
            echo "== log"; cat /tmp/fc.log
            echo "== metrics"; cat /tmp/metrics.out
            echo "== end"
            """#
        try writeFileAtomically(Array(metadata.utf8), to: directory.path + "/metadata.json")
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: [
            "--kernel", "6.1", "--guest-kernel", "--add", directory.path + "/metadata.json:/lab/metadata.json",
        ])
        print("Firecracker drop-in in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let script = ScriptOutput(run.output, from: "\nversion ")
        let output = script.text, value = script.value, section = script.section
        #expect(value("version") == "Firecracker v1.16.0+kestrel.0.2.0", "\(output)")
        #expect(value("l2-exit") == "0", "\(output)")
        #expect(value("PATCH /mmds") == "204", "\(output)")
        #expect(value("GET /version") == #"{"firecracker_version":"1.16.0+kestrel.0.2.0"} 200"#, "\(output)")
        #expect(value("PUT /actions") == "204", "FlushMetrics: \(output)")
        #expect(value("token-status") == "HTTP/1.1 200 OK" && value("token-length") == "43", "\(output)")
        #expect(value("v2-id") == "i-lab" && value("v2-patched") == "by-the-host", "\(output)")
        #expect(value("v2-json-length").flatMap { Int($0) }.map { $0 > 20_000 } == true, "\(output)")
        #expect(value("no-token") == "HTTP/1.1 401 Unauthorized", "\(output)")
        #expect(value("wget-listing") == "big instance-id patched", "\(output)")
        #expect(value("big-length") == "20000", "a 20 KB value over several segments: \(output)")
        let log = section("log")
        #expect(log.contains { $0.contains(":INFO] Guest-boot-time = ") }, "the boot timer's line: \(log)")
        #expect(log.contains { $0.contains("[anonymous-instance:api:INFO] The API server received a PATCH request on \"/mmds\".") }, "\(log)")
        let metrics = section("metrics")
        let parsed = metrics.compactMap { try? JSONValue.parse(Array($0.utf8)).objectValue }
        #expect(metrics.count >= 2 && parsed.count == metrics.count, "every metrics line is JSON (FlushMetrics, and the last at exit): \(metrics)")
        func total(_ group: String, _ field: String) -> Int {
            parsed.compactMap { $0[group]?.objectValue?[field]?.wholeNumber }.reduce(0, +)
        }
        #expect(total("mmds", "connections_created") >= 7 && total("mmds", "rx_count") >= 7, "the guest's MMDS requests: \(metrics)")
        #expect(total("mmds", "rx_no_token") == 1 && total("mmds", "tokens_issued") == 1, "\(metrics)")
        #expect(total("net", "tx_mmds_frames") > 0 && total("net_eth0", "rx_mmds_frames") > 0, "\(metrics)")
        #expect(total("put_api_requests", "actions_count") == 1 && total("patch_api_requests", "mmds_count") == 1, "\(metrics)")
        // FlushMetrics came after the guest's reads: its line has them already.
        let flushed = parsed.first?["mmds"]?.objectValue
        #expect(flushed?["connections_created"]?.wholeNumber == 7 && flushed?["tokens_issued"]?.wholeNumber == 1, "\(metrics)")
        #expect((parsed.first?["kestrel"]?.objectValue?["uptime_ms"]?.wholeNumber ?? 0) > 0, "\(metrics)")
    }
}

/// A drive's rate limiter and `PATCH /drives/{id}` with a Linux guest in the
/// lab: the guest reads its disk with O_DIRECT under a 1 MiB/s bandwidth
/// bucket (2 MiB to reach the steady state, then 6 MiB timed), the L1
/// PATCHes the drive to another image with the limit removed, and the guest
/// sees the new image's bytes and size and reads it unthrottled.
extension LabIntegrationTests {
    @Test func aRateLimitedDriveIsThrottledAndAPatchedDriveIsSeen() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labpatch")
        let guest = #"""
            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
            echo "size-before $(cat /sys/block/vda/size)"
            first() { dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 12; }
            # busybox date has no %N: /proc/uptime's hundredths, as milliseconds.
            \#(Self.nowFunction)
            timed() { s=$(now); dd if=/dev/vda of=/dev/null bs=64k count=96 skip=$1 iflag=direct 2>/dev/null || echo dd-failed; e=$(now); echo $(( e - s )); }
            echo "first-read $(first)"
            dd if=/dev/vda of=/dev/null bs=64k count=32 iflag=direct 2>/dev/null
            echo "limited-ms $(timed 32)"
            echo limited-done
            i=0; until [ "$(first)" = second-image ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
            echo "patched-read $(first)"
            echo "size-after $(cat /sys/block/vda/size)"
            echo "unlimited-ms $(timed 32)"
            poweroff -f
            """#
        let l1 = #"""
            set -u
            head -c 9437184 /dev/zero > /tmp/first.img; printf first-image | dd of=/tmp/first.img conv=notrunc 2>/dev/null
            head -c 16777216 /dev/zero > /tmp/second.img; printf second-image | dd of=/tmp/second.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            cat > /tmp/vm.json <<'JSON'
            {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                             "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
             "drives": [{"drive_id": "data", "path_on_host": "/tmp/first.img", "is_root_device": false, "is_read_only": false,
                         "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}]}
            JSON
            kestrel run --api-sock /tmp/d.sock --config-file /tmp/vm.json > /tmp/l2.out 2>/tmp/l2.err &
            vm=$!
            \#(Self.curlFunction(socket: "/tmp/d.sock"))
            i=0; until grep -q '^limited-done' /tmp/l2.out; do i=$((i+1)); [ $i -gt 1500 ] && break; sleep 0.2; done
            c PATCH /drives/data -d '{"drive_id": "data", "path_on_host": "/tmp/second.img", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 1000}}}'
            c GET /vm/config
            wait $vm; echo "l2-exit $?"
            echo "== l2"; cat /tmp/l2.out; tail -3 /tmp/l2.err
            echo "== end"
            """#
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: ["--kernel", "6.1", "--guest-kernel"])
        print("rate limiter and PATCH in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let script = ScriptOutput(run.output, from: "\nPATCH /drives/data")
        let output = script.text, value = script.value
        #expect(value("l2-exit") == "0", "\(output)")
        #expect(value("PATCH /drives/data") == "204", "\(output)")
        #expect(value("GET /vm/config")?.contains(#""path_on_host":"/tmp/second.img""#) == true, "\(output)")
        #expect(value("size-before") == "18432" && value("first-read") == "first-image", "\(output)")
        // 6 MiB at 1 MiB/s: 6 s, within 10%.
        let limited = value("limited-ms").flatMap { Int($0) } ?? 0
        print("6 MiB under a 1 MiB/s bucket: \(limited) ms, \((6000.0 / Double(max(limited, 1))).text(places: 3)) MiB/s")
        #expect((5455...6667).contains(limited), "6 MiB at 1 MiB/s took \(limited) ms: \(output)")
        #expect(value("patched-read") == "second-image" && value("size-after") == "32768", "the guest sees the new image and its size: \(output)")
        let unlimited = value("unlimited-ms").flatMap { Int($0) } ?? .max
        print("the same 6 MiB with the limit PATCHed away: \(unlimited) ms")
        #expect(unlimited < limited / 2, "the PATCH removed the limit: \(unlimited) ms against \(limited) ms")
    }
}
