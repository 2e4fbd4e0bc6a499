import FoundationEssentials
import Glibc
@testable import Lab
import Testing

/// The four virtio devices serving a Linux L2 guest, as an L1 script that
/// any lab host runs: virtio-blk (an ext4 image read and written, a read-only
/// second disk), virtio-net on a tap (ping, files both ways with busybox nc),
/// virtio-vsock (an echo each way with `kestrel vsock` on the Unix socket)
/// and virtio-rng. The guest is the lab's guest kernel (`--guest-kernel`)
/// with its modules.
struct FourDeviceScenario {
    /// Where the L1 finds the scenario's script; it prints `l2-exit N` and
    /// the lines `check` reads.
    static let l1Path = "/lab/four-devices.sh"

    let directory: TemporaryDirectory
    let dataSum: String

    /// The `kestrel lab run` arguments that add the scenario's files.
    var labArguments: [String] {
        ["--add", directory.path + "/guest.sh:/lab/guest.sh", "--add", directory.path + "/disk.img:/lab/disk.img",
         "--add", directory.path + "/ro.img:/lab/ro.img", "--add", directory.path + "/four-devices.sh:" + Self.l1Path]
    }

    /// Makes the disk images (an ext4 image holding 1 MiB of random data,
    /// and a 1 MiB read-only one) and the scripts.
    init() throws {
        directory = try TemporaryDirectory(prefix: "kestrel-labvirtio")
        let root = directory.path + "/root"
        try makeDirectories(root)
        _ = try HostProcess.output(["sh", "-c", "head -c 1048576 /dev/urandom > \(root)/data.bin"])
        let made = try HostProcess.output(["mkfs.ext4", "-q", "-d", root, directory.path + "/disk.img", "16M"])
        try #require(made.status == 0, "mkfs.ext4 -d (e2fsprogs) failed: \(made.output)")
        _ = try HostProcess.output(["sh", "-c", "head -c 1048576 /dev/zero > \(directory.path)/ro.img"])
        dataSum = try Self.sha256(root + "/data.bin")
        try writeFileAtomically(Array(Self.guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(Self.l1.utf8), to: directory.path + "/four-devices.sh")
    }

    static func sha256(_ path: String) throws -> String {
        try HostProcess.output(["sha256sum", path]).output.split(separator: " ").first.map(String.init) ?? ""
    }

    static let guest = #"""
        for i in $(seq 100); do [ -b /dev/vdb ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
        echo "serials $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial) ro=$(cat /sys/block/vdb/ro)"
        mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo "disk-sum $(sha256sum /mnt/data.bin)"
        echo written-by-guest > /mnt/written.txt && sync && umount /mnt && echo "disk-written"
        echo "rng $(cat /sys/class/misc/hw_random/rng_current) $(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
        ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
        echo "mac $(cat /sys/class/net/eth0/address) mtu $(cat /sys/class/net/eth0/mtu)"
        ping -c 3 -W 5 172.16.0.1 | grep -q '3 packets received' && echo ping-ok
        nc -w 10 172.16.0.1 7001 > /tmp/down.bin; echo "down-sum $(sha256sum /tmp/down.bin)"
        head -c 1048576 /dev/urandom > /tmp/up.bin; echo "up-sum $(sha256sum /tmp/up.bin)"
        nc -w 10 172.16.0.1 7002 < /tmp/up.bin
        timeout 120 kestrel vsock listen --port 52 --echo & echo_pid=$!
        echo guest-to-host | kestrel vsock connect --port 5000
        wait $echo_pid; echo "echo-server $?"
        """#

    static let l1 = #"""
        set -u
        ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null
        ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up
        head -c 1048576 /dev/urandom > /tmp/down.bin; echo "host-down-sum $(sha256sum /tmp/down.bin)"
        nc -l -p 7001 < /tmp/down.bin &
        # busybox nc ends the connection when its stdin ends, so the
        # receiving side reads from a pipe that stays open.
        sleep 600 | nc -l -p 7002 > /tmp/up.bin &
        kestrel vsock listen --uds /tmp/v.sock --port 5000 > /tmp/from-guest.txt 2>/dev/null </dev/null &
        cat > /tmp/vm.json <<'JSON'
        {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                         "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"},
         "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
         "drives": [{"drive_id": "data", "path_on_host": "/lab/disk.img", "is_root_device": false, "is_read_only": false,
                     "cache_type": "Writeback"}],
         "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1400}],
         "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
         "entropy": {}}
        JSON
        kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
        kestrel run --config /tmp/vm.json --drive /lab/ro.img,id=scratch,ro > /tmp/l2.out 2>&1 &
        vm=$!
        i=0
        until echo host-to-guest | kestrel vsock connect --uds /tmp/v.sock --port 52 > /tmp/echoed.txt 2>/dev/null; do
            i=$((i+1)); [ $i -gt 240 ] && { echo "vsock connect never succeeded"; break; }; sleep 1
        done
        wait $vm; echo "l2-exit $?"
        cat /tmp/l2.out
        echo "echoed $(cat /tmp/echoed.txt)"
        echo "from-guest $(cat /tmp/from-guest.txt)"
        echo "host-up-sum $(sha256sum /tmp/up.bin)"
        mkdir -p /mnt/img && mount -o loop,ro /lab/disk.img /mnt/img && echo "readback $(cat /mnt/img/written.txt)"
        umount /mnt/img

        """#

    /// Checks the L1's output (the lines the scenario printed may be among others).
    func check(_ output: String, sourceLocation: SourceLocation = #_sourceLocation) {
        func value(_ key: String) -> String? {
            output.split(separator: "\n").first { $0.hasPrefix(key + " ") }.map { String($0.dropFirst(key.count + 1)) }
        }
        #expect(value("l2-exit") == "0", "\(output)", sourceLocation: sourceLocation)
        #expect(value("serials") == "data scratch ro=1", "GET_ID and the read-only flag: \(output)", sourceLocation: sourceLocation)
        #expect(value("disk-sum")?.hasPrefix(dataSum) == true, "the guest read the host's file intact: \(output)", sourceLocation: sourceLocation)
        #expect(output.contains("\ndisk-written"), "\(output)", sourceLocation: sourceLocation)
        #expect(value("readback") == "written-by-guest", "the L1 reads the guest's file from the image after power-off: \(output)",
                sourceLocation: sourceLocation)
        let rng = value("rng") ?? ""
        #expect(rng.hasPrefix("virtio_rng.0 ") && rng.count == "virtio_rng.0 ".count + 64 && !rng.hasSuffix(String(repeating: "0", count: 64)),
                "\(output)", sourceLocation: sourceLocation)
        #expect(value("mac") == "06:00:ac:10:00:02 mtu 1400", "the MAC, and the MTU through VIRTIO_NET_F_MTU: \(output)", sourceLocation: sourceLocation)
        #expect(output.contains("\nping-ok"), "\(output)", sourceLocation: sourceLocation)
        let hostDown = value("host-down-sum")?.prefix(64), guestDown = value("down-sum")?.prefix(64)
        #expect(hostDown != nil && hostDown == guestDown, "host to guest over nc: \(output)", sourceLocation: sourceLocation)
        let guestUp = value("up-sum")?.prefix(64), hostUp = value("host-up-sum")?.prefix(64)
        #expect(guestUp != nil && guestUp == hostUp, "guest to host over nc: \(output)", sourceLocation: sourceLocation)
        #expect(value("echoed") == "host-to-guest", "host-initiated vsock echo: \(output)", sourceLocation: sourceLocation)
        #expect(value("from-guest") == "guest-to-host", "guest-initiated vsock connection: \(output)", sourceLocation: sourceLocation)
        #expect(value("echo-server") == "0", "\(output)", sourceLocation: sourceLocation)
    }
}
