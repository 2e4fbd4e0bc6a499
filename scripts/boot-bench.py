#!/usr/bin/env python3
"""Boot the same kernel and initrd under Kestrel and under QEMU (-M microvm,
-enable-kvm), several times each, and print medians and ratios of the time to
the kernel's first console line ("Linux version") and to the end of the run.

The end of a run is the VMM's exit, or for QEMU, which pauses the VM on a KVM
internal error instead of exiting, the moment it reports that error.

  scripts/boot-bench.py [--runs 3] [--kernel /boot/vmlinuz-...] [--timeout 600]
                        [--only bzImage|vmlinux] [--first-line-only]

Needs: a release build of kestrel (swift build -c release), qemu-system-x86,
linux-image-cloud-amd64 and busybox-static (apt).
"""
import argparse, glob, os, re, select, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KESTREL = os.path.join(ROOT, ".build", "release", "kestrel")
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1"
QEMU_END = re.compile(rb"KVM internal error|emulation failure|Suberror")


def timed_run(command, timeout, stop_pattern=None, stop_at_first_line=False):
    """Runs command; returns (seconds to 'Linux version', seconds to the end, last lines)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    first = None
    end = None
    buffer = b""
    tail = []
    while True:
        remaining = timeout - (time.monotonic() - start)
        if remaining <= 0:
            break
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 1.0))
        if not ready:
            if process.poll() is not None:
                break
            continue
        chunk = os.read(process.stdout.fileno(), 65536)
        now = time.monotonic() - start
        if not chunk:
            process.wait()
            end = now
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            tail = (tail + [line.decode(errors="replace")])[-3:]
            if first is None and b"Linux version" in line:
                first = now
                if stop_at_first_line:
                    break
            if stop_pattern is not None and stop_pattern.search(line):
                end = now
                break
        if end is not None or (stop_at_first_line and first is not None):
            break
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return first, end, tail


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kernel", default=(sorted(glob.glob("/boot/vmlinuz-*cloud-amd64")) or [None])[-1])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--only", choices=["bzImage", "vmlinux"], help="one kernel format only")
    parser.add_argument("--first-line-only", action="store_true", help="stop each run at the first console line (more runs in less time)")
    options = parser.parse_args()
    if not options.kernel or not os.path.exists(options.kernel):
        sys.exit("no kernel: apt-get install linux-image-cloud-amd64, or pass --kernel")
    if not os.access(KESTREL, os.X_OK):
        sys.exit("no release kestrel: run `swift build -c release` first")
    work = tempfile.mkdtemp(prefix="kestrel-bench-")
    initrd = os.path.join(work, "initramfs.cpio")
    vmlinux = os.path.join(work, "vmlinux")
    subprocess.run([KESTREL, "initramfs", "--command", "echo kestrel-bench-guest", "-o", initrd], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([KESTREL, "vmlinux", options.kernel, "-o", vmlinux], check=True, stdout=subprocess.DEVNULL)

    def kestrel(kernel):
        return [KESTREL, "run", "--kernel", kernel, "--initrd", initrd, "--memory", "256M", "--cmdline", CMDLINE]

    def qemu(kernel):
        return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm",
                "-cpu", "host,-arch-capabilities", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config",
                "-display", "none", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE]

    formats = [("bzImage", options.kernel), ("vmlinux", vmlinux)]
    if options.only:
        formats = [f for f in formats if f[0] == options.only]
    print(f"kernel {options.kernel}, {options.runs} runs per VMM and format, runs interleaved")
    for name, kernel in formats:
        results = {"kestrel": [], "qemu": []}
        for run in range(options.runs):
            for vmm in (["kestrel", "qemu"] if run % 2 == 0 else ["qemu", "kestrel"]):
                command = kestrel(kernel) if vmm == "kestrel" else qemu(kernel)
                first, end, tail = timed_run(command, options.timeout, None if vmm == "kestrel" else QEMU_END, options.first_line_only)
                results[vmm].append((first, end))
                fmt = lambda v: "timeout" if v is None else f"{v:.2f} s"
                end_text = "not waited for" if options.first_line_only else fmt(end)
                print(f"  {name} {vmm:8s} run {run + 1}: first line {fmt(first)}, end {end_text}   last: {tail[-1][:100] if tail else ''}", flush=True)
        print(f"{name}:")
        medians = {}
        for vmm, values in results.items():
            firsts = [v[0] for v in values if v[0] is not None]
            ends = [v[1] for v in values if v[1] is not None]
            medians[vmm] = (statistics.median(firsts) if firsts else None, statistics.median(ends) if ends else None)
            spread = f" (range {min(firsts):.2f}-{max(firsts):.2f})" if firsts else ""
            print(f"  {vmm:8s} median first line {medians[vmm][0] if medians[vmm][0] is None else round(medians[vmm][0], 3)} s{spread}, "
                  f"median end {medians[vmm][1] if medians[vmm][1] is None else round(medians[vmm][1], 3)} s")
        (kf, ke), (qf, qe) = medians["kestrel"], medians["qemu"]
        if kf and qf:
            goal = "goal >= 5x" if name == "bzImage" else "goal >= 1x (never later)"
            print(f"  ratio QEMU/Kestrel, time to first console line: {qf / kf:.2f}x   ({goal})")
        if ke and qe:
            print(f"  ratio QEMU/Kestrel, time to end of run:         {qe / ke:.2f}x")


if __name__ == "__main__":
    main()
