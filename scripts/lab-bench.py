#!/usr/bin/env python3
"""Lab timings, with medians and ratios measured in the same run.

1. L1 ready: host seconds from QEMU's start until the L1 has loaded KVM and is
   about to run the command (`kestrel lab run -v -- true`, "ready in").
2. `kestrel lab check` wall time per kernel, and the whole matrix
   (`kestrel lab check --kernels ...` with this machine's /dev/kvm).
3. Boot to userspace, Kestrel against QEMU microvm, as L2 VMMs inside the same
   L1: same vmlinux (PVH), initramfs, 256 MiB and 1 vCPU, timed from exec to the
   init's first console line ("kestrel-init: running") by a small static C
   timer (scripts/lab/firstline.c), runs interleaved. QEMU runs in the L1 from
   this machine's Debian qemu-system-x86: the binary, the libraries ldd names
   and the microvm firmware are added to the L1.

Goals (issue 10): L1 ready <= 10 s, matrix <= 3 min, Kestrel <= 0.5x QEMU.

Needs: a release kestrel (swift build -c release --product kestrel), gcc,
qemu-system-x86, and the lab kernels (kestrel lab kernels --fetch all).
Usage: scripts/lab-bench.py [--runs 5] [--l1 6.1] [--guest 6.1] [--skip-ready] [--skip-matrix]
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KESTREL = os.path.join(ROOT, ".build", "release", "kestrel")
KERNELS = ["6.1", "6.12", "6.18", "7.2"]
CMDLINE = "console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux quiet"


def run(arguments, **kwargs):
    return subprocess.run(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def timed(arguments):
    start = time.monotonic()
    result = run(arguments)
    return time.monotonic() - start, result


def median_text(values):
    return f"median {statistics.median(values):.2f} s (runs: {', '.join(f'{v:.2f}' for v in values)})"


def l1_ready(kernel, runs):
    values = []
    for _ in range(runs):
        _, result = timed([KESTREL, "lab", "run", "--kernel", kernel, "-v", "--", "true"])
        match = re.search(r"ready in ([0-9.]+) s", result.stderr)
        if result.returncode != 0 or not match:
            sys.exit(f"lab run on {kernel} failed:\n{result.stderr[-2000:]}")
        values.append(float(match.group(1)))
    return values


# QEMU's microvm firmware for the L2 runs: qboot, the minimal firmware microvm
# was made with. QEMU 10.0.2's default for microvm, Debian seabios 1.16.3's
# bios-microvm.bin, printed nothing in 120 s in a 6.1 L1 where qboot boots
# the guest at once; QEMU 7.2's default boots.
MICROVM_FIRMWARE = "-bios /usr/share/qemu/qboot.rom"


def with_libraries(binary):
    """(host path, guest path) pairs for `binary` and the libraries ldd names, to add to an L1."""
    pairs = [(binary, binary)]
    for line in run(["ldd", binary]).stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 and parts[2].startswith("/") else (parts[0] if parts and parts[0].startswith("/") else None)
        if path:
            pairs.append((os.path.realpath(path), path))
    return pairs


def cloud_kernel_with_balloon():
    """(image, release, virtio_balloon.ko) of this machine's newest Debian cloud
    kernel, for an L1 and L2 whose guest loads the balloon driver (the lab's
    kernels keep only the four devices' drivers). Exits when one is missing."""
    images = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not images:
        sys.exit("no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)")
    release = os.path.basename(images[-1])[len("vmlinuz-"):]
    module = f"/lib/modules/{release}/kernel/drivers/virtio/virtio_balloon.ko"
    if not os.path.exists(module):
        sys.exit(f"{release} has no virtio_balloon module")
    return images[-1], release, module


def qemu_bundle():
    """(host path, guest path) pairs that let qemu-system-x86_64 run in the L1."""
    pairs = with_libraries("/usr/bin/qemu-system-x86_64")
    # QEMU 7.2 keeps microvm's firmware in /usr/share/qemu; 10.0 finds
    # bios-microvm.bin in seabios's directory, on its firmware path.
    for directory in ["/usr/share/qemu", "/usr/share/seabios"]:
        for name in ["bios-microvm.bin", "qboot.rom", "pvh.bin", "linuxboot_dma.bin"]:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                pairs.append((os.path.realpath(path), path))
    return pairs


def l2_boots(l1, guest, runs):
    work = tempfile.mkdtemp(prefix="kestrel-lab-bench-")
    timer = os.path.join(work, "firstline")
    subprocess.run(["gcc", "-static", "-O2", os.path.join(ROOT, "scripts", "lab", "firstline.c"), "-o", timer], check=True)
    vmlinux = run([KESTREL, "lab", "run", "--kernel", guest, "--guest-kernel", "--", "true"])
    if vmlinux.returncode != 0:
        sys.exit(f"cannot prepare the {guest} vmlinux:\n{vmlinux.stderr[-2000:]}")
    cache = os.environ.get("KESTREL_LAB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kestrel", "lab")
    release = open(os.path.join(cache, "named", guest)).read().strip()
    guest_vmlinux = os.path.join(cache, "kernels", release, "vmlinux")
    script = os.path.join(work, "bench.sh")
    # microvm with its RTC (QEMU's default, and its faster boot: without an RTC
    # QEMU's FADT does not say so and Linux probes the missing CMOS for ~5 s),
    # and without it as scripts/boot-bench.py runs it.
    qemu = ("/usr/bin/qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=RTC -accel kvm -cpu host -m 256 -smp 1 -nodefaults "
            f"-no-user-config -display none -serial stdio -L /usr/share/qemu {MICROVM_FIRMWARE} "
            f"-kernel /lab/vmlinux -initrd /tmp/i.cpio -append '{CMDLINE}'")
    kestrel = f"kestrel run --kernel /lab/vmlinux --initrd /tmp/i.cpio --memory 256M --cpus 1 --cmdline '{CMDLINE}'"
    with open(script, "w") as f:
        f.write(f"""kestrel initramfs --command 'echo kestrel-bench-guest' -o /tmp/i.cpio >/dev/null
/usr/bin/qemu-system-x86_64 --version | head -1
for i in $(seq {runs}); do
  if [ $((i % 2)) = 1 ]; then order="kestrel qemu qemu-nortc"; else order="qemu-nortc qemu kestrel"; fi
  for vmm in $order; do
    case $vmm in
      kestrel) t=$(/lab/firstline 'kestrel-init: running' 300 sh -c "{kestrel}") ;;
      qemu) t=$(/lab/firstline 'kestrel-init: running' 300 sh -c "{qemu.replace('RTC', 'on')}") ;;
      qemu-nortc) t=$(/lab/firstline 'kestrel-init: running' 300 sh -c "{qemu.replace('RTC', 'off')}") ;;
    esac
    echo "$vmm $t"
  done
done
""")
    # One boot (--boot-attempts 1): a second boot would run the script again and mix its samples in.
    arguments = [KESTREL, "lab", "run", "--kernel", l1, "--boot-attempts", "1", "--memory", "3072", "--timeout", "3600",
                 "--add", f"{timer}:/lab/firstline", "--add", f"{guest_vmlinux}:/lab/vmlinux", "--add", f"{script}:/lab/bench.sh"]
    for host, guest_path in qemu_bundle():
        arguments += ["--add", f"{host}:{guest_path}"]
    result = run(arguments + ["--", "sh /lab/bench.sh"])
    if result.returncode != 0:
        sys.exit(f"the L2 boot bench failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    times = {"kestrel": [], "qemu": [], "qemu-nortc": []}
    version = ""
    for line in result.stdout.splitlines():
        parts = line.split()
        if line.startswith("QEMU"):
            version = line.strip()
        elif len(parts) == 2 and parts[0] in times:
            if parts[1] == "timeout":
                sys.exit(f"{parts[0]} did not reach the guest's init within 300 s:\n{result.stdout}")
            times[parts[0]].append(float(parts[1]))
    return times, version


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--l1", default="6.1", help="L1 kernel for the L2 boot comparison")
    parser.add_argument("--guest", default="6.1", help="L2 kernel (its vmlinux)")
    parser.add_argument("--skip-matrix", action="store_true")
    parser.add_argument("--skip-ready", action="store_true")
    options = parser.parse_args()
    if not os.access(KESTREL, os.X_OK):
        sys.exit("no release kestrel: run `swift build -c release --product kestrel` first")

    if not options.skip_ready:
        print(f"== L1 ready (host seconds from QEMU start to the command), {options.runs} runs")
        for kernel in ["6.1", "7.2"]:
            print(f"{kernel}: {median_text(l1_ready(kernel, options.runs))}")

    if not options.skip_matrix:
        print("== kestrel lab check per kernel (wall time, one L1 at a time)")
        for kernel in KERNELS:
            seconds, result = timed([KESTREL, "lab", "check", "--kernel", kernel, "--json"])
            totals = re.search(r'"failed" : (\d+),\s*"passed" : (\d+),\s*"seconds" : [0-9.]+,\s*"skipped" : (\d+)', result.stdout)
            if totals:
                print(f"{kernel}: {seconds:.1f} s ({totals.group(2)} passed, {totals.group(1)} failed, {totals.group(3)} skipped)")
            else:
                print(f"{kernel}: {seconds:.1f} s, NO RESULT (exit {result.returncode}):\n{result.stderr[-1500:]}")
        seconds, result = timed([KESTREL, "lab", "check", "--kernels", ",".join(KERNELS)])
        print(f"== matrix of {len(KERNELS)} kernels and this machine: {seconds:.1f} s (goal 180 s), exit {result.returncode}")
        if result.returncode != 0:
            print(result.stdout[:1500] + result.stderr[-1500:])

    print(f"== boot to userspace inside one {options.l1} L1: Kestrel against QEMU microvm, {options.runs} runs each, interleaved")
    times, version = l2_boots(options.l1, options.guest, options.runs)
    k, q, n = (statistics.median(times[name]) for name in ["kestrel", "qemu", "qemu-nortc"])
    print(f"guest kernel {options.guest} (vmlinux, PVH), 256 MiB, 1 vCPU; QEMU in the L1: {version}")
    print(f"kestrel:                 {median_text(times['kestrel'])}")
    print(f"qemu microvm, rtc=on:    {median_text(times['qemu'])}")
    print(f"qemu microvm, rtc=off:   {median_text(times['qemu-nortc'])}")
    print(f"ratio kestrel/qemu (rtc=on, QEMU's faster): {k / q:.2f}; against rtc=off: {k / n:.2f} (goal <= 0.5)")

if __name__ == "__main__":
    main()
