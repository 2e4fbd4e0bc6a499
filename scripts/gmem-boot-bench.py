#!/usr/bin/env python3
"""Boot to userspace with guest RAM in guest_memfd against anonymous memory.

Inside one lab L1 (Debian 6.18 by default: guest_memfd MMAP|INIT_SHARED needs
6.18 or later), `kestrel run` boots Debian's 6.1 vmlinux as an L2 (the guest
of the earlier figures: under QEMU 7.2 as the L0, 6.18 and 7.2 guests panicked
in their FPU set-up, FINDINGS.md sections 10 and 11) (PVH, 256 MiB, 1 vCPU, an initramfs whose init prints one line), alternating
`--memory-backend anonymous` and `--memory-backend guest_memfd`. Each boot is
timed from exec to the init's first console line by scripts/lab/firstline.c,
built static here. Medians and the ratio come from the same L1.

A third variant is the control for the mechanism: anonymous memory with the
L1's transparent huge pages turned off for that boot, so that guest RAM is
mapped in 4 KiB pages, as guest_memfd's always is (6.18 has no huge pages for
guest_memfd). A fourth is guest_memfd with --prefault (KVM_PRE_FAULT_MEMORY
maps all of guest RAM before the guest starts). After the timed boots, one
more boot of each of the first three variants reads KVM's own counters of how
guest RAM is mapped (debugfs pages_4k and pages_2m), which shows the mechanism
in the same L1.

Goal (issue 13): guest_memfd / anonymous <= 1.05.

Needs: a release kestrel (swift build -c release --product kestrel), gcc and
the lab kernel. Usage: scripts/gmem-boot-bench.py [--runs 7] [--kernel 6.18] [--qemu 7.2]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KESTREL = os.path.join(ROOT, ".build", "release", "kestrel")
CMDLINE = "console=ttyS0 reboot=k panic=-1 nomodule i8042.noaux quiet"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--kernel", default="6.18", help="the L1 kernel")
    parser.add_argument("--guest", default="6.1", help="the lab kernel the L2 boots")
    parser.add_argument("--qemu", default="system", help="the L0: system (the lab's QEMU 10), 7.2 or a path (kestrel lab --qemu)")
    options = parser.parse_args()
    if options.runs < 1:
        sys.exit("--runs must be at least 1")
    if not os.access(KESTREL, os.X_OK):
        sys.exit("no release kestrel: run `swift build -c release --product kestrel` first")
    work = tempfile.mkdtemp(prefix="kestrel-gmem-bench-")
    timer = os.path.join(work, "firstline")
    subprocess.run(["gcc", "-static", "-O2", os.path.join(ROOT, "scripts", "lab", "firstline.c"), "-o", timer], check=True)
    script = os.path.join(work, "bench.sh")
    run = f"kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cpus 1 --cmdline '{CMDLINE}'"
    with open(script, "w") as file:
        file.write(f"""kestrel initramfs --command 'echo kestrel-bench-guest' -o /tmp/i.cpio >/dev/null
kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --memory-backend guest_memfd --cmdline '{CMDLINE}' 2>&1 | grep 'guest memory:'
thp=$(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled | tr -d '[]'); echo "transparent huge pages: $thp"
[ -n "$thp" ] || {{ echo "cannot read the transparent huge page mode"; exit 1; }}
for i in $(seq {options.runs}); do
  if [ $((i % 2)) = 1 ]; then order="anonymous guest_memfd anonymous-4k guest_memfd-prefault"; else order="guest_memfd-prefault anonymous-4k guest_memfd anonymous"; fi
  for variant in $order; do
    case $variant in
      anonymous-4k) backend="anonymous"; echo never > /sys/kernel/mm/transparent_hugepage/enabled ;;
      guest_memfd-prefault) backend="guest_memfd --prefault" ;;
      *) backend=$variant ;;
    esac
    echo "$variant $(/lab/firstline 'kestrel-init: running' 300 sh -c "{run} --memory-backend $backend")"
    echo $thp > /sys/kernel/mm/transparent_hugepage/enabled
  done
done
# The mechanism, from KVM's own counters: how much of guest RAM its page
# tables map in 4 KiB and in 2 MiB pages (debugfs pages_4k, pages_2m), read
# until the guest ends, for one more boot of each variant.
mount -t debugfs none /sys/kernel/debug 2>/dev/null
for variant in anonymous guest_memfd anonymous-4k; do
  backend=$variant
  [ $variant = anonymous-4k ] && {{ backend=anonymous; echo never > /sys/kernel/mm/transparent_hugepage/enabled; }}
  {run} --memory-backend $backend >/dev/null 2>&1 &
  pid=$!
  # Keep the fullest sample: the VM's teardown empties the counters before
  # the process is gone, so the last sample can read 0 0.
  last="unreadable"; most=-1
  while kill -0 $pid 2>/dev/null; do
    for d in /sys/kernel/debug/kvm/$pid-*; do
      [ -r "$d/pages_2m" ] || continue
      small=$(cat $d/pages_4k); huge=$(cat $d/pages_2m)
      [ $((small + huge * 512)) -gt $most ] && {{ most=$((small + huge * 512)); last="$small $huge"; }}
    done
    sleep 0.2
  done
  echo $thp > /sys/kernel/mm/transparent_hugepage/enabled
  echo "pages $variant $last"
done
""")
    print(f"== a {options.guest} guest's boot to userspace in one {options.kernel} L1 (--qemu {options.qemu}), "
          f"{options.runs} runs per backend, interleaved", flush=True)
    # One boot (--boot-attempts 1): a second boot would run the script again and mix its samples in.
    result = subprocess.run([KESTREL, "lab", "run", "--kernel", options.kernel, "--qemu", options.qemu, "--boot-attempts", "1", "--guest", options.guest, "--timeout", "3000",
                             "--add", f"{timer}:/lab/firstline", "--add", f"{script}:/lab/bench.sh", "--", "sh /lab/bench.sh"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"the lab run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    times = {"anonymous": [], "guest_memfd": [], "anonymous-4k": [], "guest_memfd-prefault": []}
    for line in result.stdout.splitlines():
        if "guest memory:" in line or "transparent huge pages" in line:
            print(line.strip())
        parts = line.split()
        if len(parts) == 2 and parts[0] in times:
            if parts[1] == "timeout":
                sys.exit(f"{parts[0]}: the guest did not reach its init within 300 s:\n{result.stdout[-3000:]}")
            times[parts[0]].append(float(parts[1]))
    if not all(times.values()):
        sys.exit(f"missing samples: {times}\n{result.stdout[-3000:]}")
    anonymous, gmem = statistics.median(times["anonymous"]), statistics.median(times["guest_memfd"])
    for name, values in times.items():
        print(f"{name:21} median {statistics.median(values):.2f} s (runs: {', '.join(f'{v:.2f}' for v in values)})")
    small = statistics.median(times["anonymous-4k"])
    print(f"ratio guest_memfd / anonymous: {gmem / anonymous:.3f} (goal <= 1.05)")
    print(f"control: anonymous with 4 KiB pages / anonymous: {small / anonymous:.3f}; guest_memfd / anonymous with 4 KiB pages: {gmem / small:.3f}")
    prefaulted = statistics.median(times["guest_memfd-prefault"])
    print(f"guest_memfd with --prefault / anonymous: {prefaulted / anonymous:.3f}")
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "pages":
            if len(parts) == 4:
                print(f"KVM's mappings of guest RAM, {parts[1]}: {parts[2]} pages of 4 KiB, {parts[3]} of 2 MiB (debugfs pages_4k, pages_2m)")
            else:
                print(f"KVM's mappings of guest RAM, {parts[1]}: {' '.join(parts[2:])} (no debugfs pages_4k/pages_2m)")


if __name__ == "__main__":
    main()
