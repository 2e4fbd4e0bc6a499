#!/usr/bin/env python3
"""virtio device speed: Kestrel against QEMU microvm, as L2 VMMs in one L1.

Both VMMs run inside the same lab L1 (Debian 6.1 cloud kernel, KVM on TCG's
emulated SVM), boot the same vmlinux and initramfs (the kernel's virtio
modules) with 256 MiB and 1 vCPU, and get the same 64 MiB raw image and the
same tap. QEMU is this machine's Debian qemu-system-x86 with `-M microvm`,
virtio-mmio devices and userspace back ends (vhost=off), added to the L1 as in
scripts/lab-bench.py. Runs alternate between the VMMs; medians and ratios
come from the same L1 boot.

Measured inside the guest, with /proc/uptime around each step:
- virtio-blk sequential read: dd of the whole image, 1 MiB blocks, O_DIRECT.
- virtio-blk 4 KiB reads at queue depth 1: dd bs=4k iflag=direct over 8 MiB
  (the image sits in the L1's page cache, so this is the per-request cost a
  random-read IOPS figure measures).
- TCP over virtio-net: 64 MiB from the guest to `nc -l` in the L1, then back.
vsock has no baseline: QEMU offers vsock only through vhost-vsock. Kestrel's
runs also attach virtio-vsock and virtio-rng and print the memory overhead
Kestrel measures itself at the end of the run (--verbose).

Needs: a release kestrel (swift build -c release --product kestrel),
qemu-system-x86 and the 6.1 lab kernel. Usage: scripts/virtio-bench.py [--runs 5]
"""
import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KESTREL = os.path.join(ROOT, ".build", "release", "kestrel")
spec = importlib.util.spec_from_file_location("lab_bench", os.path.join(ROOT, "scripts", "lab-bench.py"))
lab_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_bench)

GUEST = r"""
for i in $(seq 100); do [ -b /dev/vda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 1 -W 5 172.16.0.1 >/dev/null
t() { cut -d' ' -f1 /proc/uptime; }
a=$(t); dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null; b=$(t); echo "seqread $a $b 64"
a=$(t); dd if=/dev/vda of=/dev/null bs=4k count=2048 iflag=direct 2>/dev/null; b=$(t); echo "qd1 $a $b 2048"
a=$(t); dd if=/dev/zero bs=1M count=64 2>/dev/null | nc -w 5 172.16.0.1 7100; b=$(t); echo "tcpup $a $b 64"
a=$(t); nc -w 5 172.16.0.1 7101 > /dev/null; b=$(t); echo "tcpdown $a $b 64"
"""

L1 = r"""
set -u
ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null
ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up
kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=64 2>/dev/null
cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet'
for i in $(seq RUNS); do
  if [ $((i % 2)) = 1 ]; then order="kestrel qemu"; else order="qemu kestrel"; fi
  for vmm in $order; do
    (sleep 600 | nc -l -p 7100 > /dev/null &)
    (head -c 67108864 /dev/zero | nc -l -p 7101 &)
    case $vmm in
      kestrel) kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$cmdline" \
                 --drive /tmp/disk.img,id=bench,cache=writeback --net tap0 \
                 --vsock /tmp/v.sock --entropy --verbose > /tmp/out.txt 2>&1
               grep -o 'Kestrel overhead [0-9.]* MiB' /tmp/out.txt | sed 's/^/kestrel-memory /' ;;
      qemu) /usr/bin/qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host -m 256 -smp 1 -nodefaults \
              -no-user-config -display none -serial stdio -L /usr/share/qemu -kernel /lab/guest/vmlinux -initrd /tmp/i.cpio \
              -append "$cmdline" -no-reboot \
              -drive id=d0,file=/tmp/disk.img,format=raw,if=none,cache=writeback -device virtio-blk-device,drive=d0 \
              -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device virtio-net-device,netdev=n0 \
              > /tmp/out.txt 2>&1 ;;
    esac
    grep -E '^(seqread|qd1|tcpup|tcpdown) ' /tmp/out.txt | tr -d '\r' | sed "s/^/$vmm /"
    grep -q '^tcpdown ' /tmp/out.txt || { echo "$vmm run $i incomplete:"; tail -20 /tmp/out.txt; }
    killall nc sleep 2>/dev/null; sleep 1
  done
done
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kernel", default="6.1")
    options = parser.parse_args()
    if not os.path.exists(KESTREL):
        sys.exit("build the release kestrel first: swift build -c release --product kestrel")
    work = tempfile.mkdtemp(prefix="kestrel-virtio-bench-")
    with open(os.path.join(work, "guest.sh"), "w") as file:
        file.write(GUEST)
    with open(os.path.join(work, "l1.sh"), "w") as file:
        file.write(L1.replace("RUNS", str(options.runs)))
    arguments = [KESTREL, "lab", "run", "--kernel", options.kernel, "--guest-kernel", "--memory", "3072", "--timeout", "3000",
                 "--add", os.path.join(work, "guest.sh") + ":/lab/guest.sh", "--add", os.path.join(work, "l1.sh") + ":/lab/l1.sh"]
    for host, guest_path in lab_bench.qemu_bundle():
        arguments += ["--add", f"{host}:{guest_path}"]
    result = subprocess.run(arguments + ["--", "sh /lab/l1.sh"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"the lab run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    samples = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(kestrel|qemu) (seqread|qd1|tcpup|tcpdown) ([0-9.]+) ([0-9.]+) ([0-9]+)$", line.strip())
        if not match:
            if "incomplete" in line or line.startswith(" "):
                print(line)
            continue
        vmm, what, start, end, amount = match.groups()
        seconds = max(float(end) - float(start), 0.01)
        # MB/s for transfers (MiB counted), requests per second for qd1.
        samples.setdefault((vmm, what), []).append(float(amount) / seconds)
    memory = [float(m) for m in re.findall(r"kestrel-memory Kestrel overhead ([0-9.]+) MiB", result.stdout)]
    names = {"seqread": "virtio-blk sequential read (MiB/s)", "qd1": "virtio-blk 4 KiB reads at QD1 (IOPS)",
             "tcpup": "TCP guest to host over virtio-net (MiB/s)", "tcpdown": "TCP host to guest over virtio-net (MiB/s)"}
    print(f"{options.runs} runs each, interleaved, one L1 ({options.kernel}); medians, ratio = Kestrel / QEMU (goal >= 1.0)")
    for what, name in names.items():
        k, q = samples.get(("kestrel", what), []), samples.get(("qemu", what), [])
        if not k or not q:
            print(f"{name}: missing samples (kestrel {len(k)}, qemu {len(q)})")
            continue
        km, qm = statistics.median(k), statistics.median(q)
        print(f"{name}: kestrel {km:.1f}, qemu {qm:.1f}, ratio {km / qm:.2f}   "
              f"(kestrel {', '.join(f'{v:.1f}' for v in k)}; qemu {', '.join(f'{v:.1f}' for v in q)})")
    if memory:
        print(f"Kestrel's own overhead figure at the end of each run, with virtio-blk, -net, -vsock and -rng attached and used: "
              f"median {statistics.median(memory):.1f} MiB ({', '.join(f'{v:.1f}' for v in memory)}); goal < 5 MiB")


if __name__ == "__main__":
    main()
