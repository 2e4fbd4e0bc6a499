#!/usr/bin/env python3
"""Balloon inflate and deflate: Kestrel against QEMU microvm, as L2 VMMs in one L1.

Both VMMs run inside the same lab L1 (this machine's Debian cloud kernel, KVM
on TCG's emulated SVM) and boot the same kernel and initramfs, which loads
the kernel's virtio_balloon module, with 512 MiB and 1 vCPU. Each guest has a
virtio-balloon device (virtio-mmio) and no deflate_on_oom; Kestrel's polls
statistics every second so that `actual_mib` can be read. Runs alternate
between the VMMs within the one L1 run.

For each boot, once the driver is loaded and the guest idle (it prints its
MemFree every 5 s, and the L1 stops the VMM when done), the L1 asks for
256 MiB (Kestrel: PATCH /balloon {"amount_mib": 256}; QEMU: the monitor's
`balloon 256`, which sets the guest's size) and times until the device
reports the driver holds all of it (Kestrel: GET /balloon/statistics
`actual_mib` 256; QEMU: `info balloon` actual=256), then the same for giving
it back. The L1's clock is /proc/uptime (10 ms), and each poll spawns a
process in the L1, so figures under about 100 ms are coarse.

The issue's goal is an inflate of 256 MiB in under 1 s. In this lab both VMMs
run an L2 on nested SVM under QEMU TCG, so the ratio is the figure to read:
it says whether Kestrel's device is the slow part.

Needs: a release kestrel (swift build -c release --product kestrel),
qemu-system-x86, curl and linux-image-cloud-amd64. Usage:
scripts/balloon-bench.py [--runs 3] [--raw FILE]
"""
import argparse
import importlib.util
import os
import re
import shutil
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
insmod /lab/virtio_balloon.ko && echo balloon-driver-loaded
free_mib() { awk '/MemFree/ { print int($2 / 1024) }' /proc/meminfo; }
sleep 5
echo "balloon-ready $(free_mib)"
while :; do sleep 5; echo "free $(free_mib)"; done
"""

L1 = r"""
set -u
now() { read up idle < /proc/uptime; echo $(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 )); }
kestrel initramfs --modules /lab/guest/modules --add /lab/virtio_balloon.ko:/lab/virtio_balloon.ko --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet'
cat > /tmp/vm.json <<JSON
{"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "$cmdline"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 512},
 "balloon": {"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}}
JSON
kactual() { CURL -s --unix-socket /tmp/b.sock http://localhost/balloon/statistics | sed -n 's/.*"actual_mib":\([0-9]*\).*/\1/p'; }
kset() { CURL -s --unix-socket /tmp/b.sock -X PATCH -d "{\"amount_mib\": $1}" http://localhost/balloon; }
# QEMU reports the guest's size (512 less the balloon); give it as the balloon's.
qactual() { echo "info balloon" > /tmp/mon.in; sleep 0.02; a=$(grep -o 'actual=[0-9]*' /tmp/mon.log | tail -1 | cut -d= -f2); [ -n "$a" ] && echo $((512 - a)); }
qset() { echo "balloon $((512 - $1))" > /tmp/mon.in; }
# Asks for $2 MiB and prints the ms until the VMM reports it.
timed() {
  vmm=$1 want=$2 t0=$(now)
  ${vmm}set $want
  until [ "$(${vmm}actual)" = "$want" ] || [ $(( $(now) - t0 )) -gt 180000 ] || ! kill -0 $vm 2>/dev/null; do sleep 0.02; done
  [ "$(${vmm}actual)" = "$want" ] && echo $(( $(now) - t0 )) || echo "timeout:actual=$(${vmm}actual)"
}
for i in $(seq RUNS); do
  if [ $((i % 2)) = 1 ]; then order="kestrel qemu"; else order="qemu kestrel"; fi
  for vmm in $order; do
    rm -f /tmp/out.txt /tmp/b.sock /tmp/mon.in /tmp/mon.out /tmp/mon.log; reader=
    case $vmm in
      kestrel) kestrel run --api-sock /tmp/b.sock --config-file /tmp/vm.json > /tmp/out.txt 2>&1 &
               vm=$!; short=k ;;
      qemu) mkfifo /tmp/mon.in /tmp/mon.out
            /usr/bin/qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host -m 512 -smp 1 -nodefaults \
              -no-user-config -display none -serial stdio -L /usr/share/qemu -bios /usr/share/qemu/qboot.rom -kernel /lab/guest/vmlinux \
              -initrd /tmp/i.cpio -append "$cmdline" -no-reboot -monitor pipe:/tmp/mon -device virtio-balloon-device \
              > /tmp/out.txt 2>&1 &
            vm=$!; short=q
            cat /tmp/mon.out >> /tmp/mon.log & reader=$! ;;
    esac
    t0=$(now)
    until grep -q '^balloon-ready' /tmp/out.txt 2>/dev/null || ! kill -0 $vm 2>/dev/null || [ $(( $(now) - t0 )) -gt 300000 ]; do sleep 0.5; done
    sleep 2
    echo "$vmm inflate-ms $(timed $short 256)"
    sleep 12
    echo "$vmm free-inflated $(grep '^free ' /tmp/out.txt | tail -1 | tr -d '\r' | cut -d' ' -f2)"
    echo "$vmm deflate-ms $(timed $short 0)"
    sleep 12
    echo "$vmm free-deflated $(grep '^free ' /tmp/out.txt | tail -1 | tr -d '\r' | cut -d' ' -f2)"
    grep '^balloon-ready ' /tmp/out.txt | tr -d '\r' | sed "s/^/$vmm /"
    grep -q '^balloon-driver-loaded' /tmp/out.txt || { echo "$vmm run $i incomplete:"; tail -20 /tmp/out.txt | sed 's/^/  /'; }
    kill $vm; wait $vm 2>/dev/null
    [ $vmm = qemu ] && kill $reader 2>/dev/null; sleep 1
  done
done
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--raw", help="write the L1 run's whole output to this file (default: one in a temporary directory)")
    options = parser.parse_args()
    if not os.path.exists(KESTREL):
        sys.exit("build the release kestrel first: swift build -c release --product kestrel")
    curl = shutil.which("curl") or sys.exit("curl is not installed (apt-get install curl)")
    image, release, module = lab_bench.cloud_kernel_with_balloon()
    work = tempfile.mkdtemp(prefix="kestrel-balloon-bench-")
    with open(os.path.join(work, "guest.sh"), "w") as file:
        file.write(GUEST)
    with open(os.path.join(work, "l1.sh"), "w") as file:
        file.write(L1.replace("RUNS", str(options.runs)).replace("CURL -s", curl + " -s"))
    arguments = [KESTREL, "lab", "run", "--kernel-image", image, "--modules", f"/lib/modules/{release}", "--guest-kernel",
                 "--boot-attempts", "1", "--memory", "3072", "--timeout", "3000",
                 "--add", f"{module}:/lab/virtio_balloon.ko",
                 "--add", os.path.join(work, "guest.sh") + ":/lab/guest.sh", "--add", os.path.join(work, "l1.sh") + ":/lab/l1.sh"]
    for host, guest_path in lab_bench.qemu_bundle() + lab_bench.with_libraries(curl):
        arguments += ["--add", f"{host}:{guest_path}"]
    # The L1's output goes to a file as it comes, so a long run can be watched (tail -f).
    raw = options.raw or os.path.join(work, "l1.out")
    print(f"the L1's output: {raw}", flush=True)
    with open(raw, "w") as output:
        result = subprocess.run(arguments + ["--", "sh /lab/l1.sh"], stdout=output, stderr=subprocess.STDOUT, text=True)
    with open(raw) as output:
        text = output.read()
    if result.returncode != 0:
        sys.exit(f"the lab run failed ({result.returncode}):\n{text[-3000:]}")
    samples, failures = {}, []
    for line in text.splitlines():
        match = re.match(r"(kestrel|qemu) (inflate|deflate)-ms (\S+)$", line.strip())
        if match:
            if match.group(3).isdigit():
                samples.setdefault((match.group(1), match.group(2)), []).append(int(match.group(3)))
            else:
                failures.append(line.strip())
        elif "incomplete" in line or line.startswith("  "):
            print(line)
    for line in failures:
        print(f"no figure: {line}")
    print(f"{options.runs} boots each, interleaved, one L1 ({release}, as L1 and L2); medians; "
          "ratio = QEMU's time over Kestrel's (above 1: Kestrel is faster)")
    for what in ["inflate", "deflate"]:
        k, q = samples.get(("kestrel", what), []), samples.get(("qemu", what), [])
        if not k or not q:
            print(f"{what} 256 MiB: missing samples (kestrel {len(k)}, qemu {len(q)})")
            continue
        km, qm = statistics.median(k), statistics.median(q)
        print(f"{what} 256 MiB: kestrel {km / 1000:.2f} s, qemu {qm / 1000:.2f} s, ratio {qm / km:.2f}   "
              f"(kestrel {', '.join(str(v) for v in k)} ms; qemu {', '.join(str(v) for v in q)} ms)")
    print("goal: inflate of 256 MiB in under 1 s")


if __name__ == "__main__":
    main()
