import Glibc
@testable import Lab
import Testing
import TextFormat

/// A guest booted with `acpi=off`, as Kata Containers boots every
/// Firecracker guest, on the lab's 6.1-microvm kernel (compiled from
/// Debian's 6.1 source with its drivers built in, the MP table parser and
/// `virtio_mmio.device=`, like Kata's kernel). Without ACPI the guest has
/// only Kestrel's MP table to find its CPUs and IOAPIC, and only the
/// `virtio_mmio.device=` entries Kestrel adds to the command line to find
/// its devices: two vCPUs must come online, and each of the five virtio
/// devices (block, net, vsock, entropy, balloon; from a config file) must
/// be bound to its driver and, for block, net and entropy, carry data. The
/// PIT must tick on IOAPIC input 2, where the MP table puts ISA IRQ 0, and a
/// sleep must end (with KVM's default GSI table it reached input 0 and the
/// guest, whose local APIC timer had failed verification, never woke). The
/// guest is told `lapic=notscdeadline` so that it needs the PIT; a second
/// guest without it, in the same L1, must run its timer in TSC-deadline mode,
/// which Kestrel now offers where KVM emulates it (the 6.1 L1's KVM does, but
/// does not list it in KVM_GET_SUPPORTED_CPUID).
extension LabIntegrationTests {
    @Test func anACPIOffGuestFindsItsCPUsInTheMPTableAndItsDevicesOnTheCommandLine() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labacpioff")
        let guest = #"""
            for i in $(seq 100); do [ -b /dev/vda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
            echo "uname $(uname -r)"
            echo "cmdline $(cat /proc/cmdline)"
            echo "mp-table $(dmesg | grep -c 'Intel MultiProcessor Specification v1.4')"
            echo "acpi-interpreter $(dmesg | grep -c 'ACPI: Interpreter disabled')"
            echo "mp-bios-bug $(dmesg | grep -c 'MP-BIOS bug')"
            echo "cpus-online $(cat /sys/devices/system/cpu/online)"
            echo drivers $(for d in /sys/bus/virtio/devices/*; do basename "$(readlink $d/driver)"; done | sort)
            echo "disk $(head -c 12 /dev/vda)"
            ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
            echo "ping $(ping -c 1 -W 10 172.16.0.1 >/dev/null 2>&1 && echo ok || echo failed)"
            echo "rng $(cat /sys/class/misc/hw_random/rng_current) $(head -c 64 /dev/hwrng | wc -c)"
            before=$(awk '$NF == "timer" { print $2 }' /proc/interrupts)
            centiseconds() { tr -d . < /proc/uptime | cut -d' ' -f1; }
            t0=$(centiseconds); sleep 2; t1=$(centiseconds)
            echo "slept-centiseconds $((t1 - t0))"
            echo "timer-line $(awk '$NF == "timer" { print $(NF-2), $(NF-1) }' /proc/interrupts) $before"
            echo "clockevent $(cat /sys/devices/system/clockevents/clockevent0/current_device)"
            echo guest-done
            """#
        let l1 = #"""
            set -u
            ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null
            ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up
            head -c 1048576 /dev/zero > /tmp/disk.img; printf acpi-off-disk | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            cat > /tmp/vm.json <<'JSON'
            {"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio",
                             "boot_args": "console=ttyS0 reboot=k panic=1 pci=off acpi=off lapic=notscdeadline"},
             "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
             "drives": [{"drive_id": "disk", "path_on_host": "/tmp/disk.img", "is_root_device": false, "is_read_only": true}],
             "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}],
             "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
             "entropy": {},
             "balloon": {"amount_mib": 0, "deflate_on_oom": false}}
            JSON
            kestrel run --no-api --config-file /tmp/vm.json > /tmp/l2.out 2>&1
            echo "l2-exit $?"
            kestrel initramfs --command 'echo "deadline-guest $(cat /sys/devices/system/clockevents/clockevent0/current_device) $(grep -c -w tsc_deadline_timer /proc/cpuinfo)"' -o /tmp/d.cpio >/dev/null
            kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/d.cpio --cmdline "console=ttyS0 reboot=k panic=1 pci=off acpi=off quiet" 2>&1 | grep '^deadline-guest'
            echo "== l2"; cat /tmp/l2.out; echo "== end"
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(l1.utf8), to: directory.path + "/l1.sh")
        let run = try Self.run(["lab", "run", "--kernel", "6.1", "--guest", "6.1-microvm",
                                "--add", directory.path + "/guest.sh:/lab/guest.sh", "--add", directory.path + "/l1.sh:/lab/l1.sh",
                                "--", "sh /lab/l1.sh"], timeout: 900)
        let output = ScriptOutput(run.output.replacing("\r\n", with: "\n"), from: "l2-exit")
        let report = "\(output.text.suffix(4000))\n\(run.errors.suffix(1500))"
        #expect(run.status == 0, "\(report)")
        #expect(output.number("l2-exit") == 0, "the guest's command exited 0: \(report)")
        #expect(output.value("uname")?.hasSuffix("-kestrel-microvm") == true, "\(report)")
        let cmdline = output.value("cmdline") ?? ""
        #expect(cmdline.hasPrefix("console=ttyS0 reboot=k panic=1 pci=off acpi=off lapic=notscdeadline virtio_mmio.device=4K@0x"), "\(cmdline)")
        #expect(cmdline.components(separatedBy: "virtio_mmio.device=").count - 1 == 5, "one entry for each device: \(cmdline)")
        #expect(output.number("mp-table") == 1, "the guest read the MP table: \(report)")
        #expect(output.number("acpi-interpreter") == 1, "ACPI was off: \(report)")
        #expect(output.number("mp-bios-bug") == 0, "\(report)")
        #expect(output.value("cpus-online") == "0-1", "\(report)")
        #expect(output.value("drivers") == "virtio_balloon virtio_blk virtio_net virtio_rng vmw_vsock_virtio_transport", "\(report)")
        #expect(output.value("disk") == "acpi-off-dis", "\(report)")
        #expect(output.value("ping") == "ok", "\(report)")
        #expect(output.value("rng")?.hasPrefix("virtio_rng.") == true && output.value("rng")?.hasSuffix(" 64") == true, "\(report)")
        // In hundredths of a second of the guest's uptime: whole seconds from `date +%s` read 3 when
        // the sleep straddles a second boundary plus the forks' time under nested TCG (CI saw it).
        let slept = output.number("slept-centiseconds")
        #expect(slept >= 200 && slept < 400, "a 2 s sleep ends after 2 to 4 s of the guest's time, not \(slept) cs: \(report)")
        // "IO-APIC 2-edge <count before the sleep>": the PIT's line is input 2, and it ticked.
        let timer = (output.value("timer-line") ?? "").split(separator: " ")
        #expect(timer.count == 3 && timer[0] == "IO-APIC" && timer[1] == "2-edge", "\(report)")
        #expect(timer.count == 3 && (Int(timer[2]) ?? 0) > 0, "the PIT's interrupts reached the guest: \(report)")
        #expect(output.value("deadline-guest") == "lapic-deadline 1", "\(report)")
        print("acpi=off guest: \(output.value("uname") ?? "?"), cpus \(output.value("cpus-online") ?? "?"), "
              + "drivers \(output.value("drivers") ?? "?"), timer \(output.value("timer-line") ?? "?"), clockevent \(output.value("clockevent") ?? "?"), "
              + "a 2 s sleep took \(slept) cs; "
              + "\(run.seconds.text(places: 1)) s")
    }
}
