#!/usr/bin/env python3
"""Measure Kestrel's own memory overhead: the resident set of the `kestrel run`
process minus the guest RAM the guest has touched, for a 1 vCPU / 128 MiB guest.

From the guest's first console line to the end of the run, /proc/PID/smaps
is sampled from outside (so the
measurement adds no code to Kestrel's resident set). Guest RAM is the anonymous
read-write mapping of exactly the guest's memory size. Each run reports the peak
overhead seen while the guest ran, split into pages of the executable (file)
and private memory, and the figure Kestrel prints itself at the end of the run
(--verbose), which also includes the code that stops the run and measures.

  scripts/memory-overhead.py [--runs 3] [--kernel /boot/vmlinuz-...] [--memory-mib 128] [--fault-around-control]

With --fault-around-control every run is followed by one with `kestrel run
--fault-around`, which keeps the kernel's fault-around for the executable's
pages (Kestrel turns it off on Linux 6.7 and later), and both medians print.

Needs: a release build of kestrel (swift build -c release),
linux-image-cloud-amd64 and busybox-static (apt).
"""
import argparse, glob, os, re, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KESTREL = os.path.join(ROOT, ".build", "release", "kestrel")
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1"
OWN_FIGURE = re.compile(r"Kestrel overhead ([0-9.]+) MiB")


def sample(pid, guest_bytes):
    """(overhead, file-backed, private) in bytes from /proc/PID/smaps, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            text = smaps.read()
    except OSError:
        return None
    overhead = file_backed = private = 0
    is_guest = is_file = False
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            is_guest = path == "" and fields[1].startswith("rw") and end - start == guest_bytes
            is_file = path.startswith("/")
        elif fields[0] == "Rss:" and not is_guest:
            kib = int(fields[1]) * 1024
            overhead += kib
            if is_file:
                file_backed += kib
            else:
                private += kib
        elif fields[0] == "Anonymous:" and not is_guest and is_file:
            # copy-on-write pages of a file mapping are private memory
            kib = int(fields[1]) * 1024
            file_backed -= kib
            private += kib
    return overhead, file_backed, private


def measure(command, guest_bytes, timeout):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    guest_started = threading.Event()

    def watch_console():
        for line in process.stdout:
            if b"Linux version" in line:
                guest_started.set()
    watcher = threading.Thread(target=watch_console, daemon=True)
    watcher.start()
    stderr_lines = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    reader.start()
    peak = None
    deadline = time.monotonic() + timeout
    # Sample only once the guest prints: Kestrel has loaded the kernel and
    # released its start-up pages by then.
    guest_started.wait(timeout)
    while process.poll() is None and time.monotonic() < deadline:
        reading = sample(process.pid, guest_bytes)
        if reading and (peak is None or reading[0] > peak[0]):
            peak = reading
        time.sleep(0.25)
    if process.poll() is None:
        process.kill()
    process.wait()
    watcher.join(5)
    reader.join(5)
    stderr = b"".join(stderr_lines).decode(errors="replace")
    own = OWN_FIGURE.search(stderr)
    return peak, float(own.group(1)) if own else None, stderr.strip().splitlines()[-1:]


def mib(value):
    return f"{value / 1048576:.2f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    parser.add_argument("--kernel", default=kernels[-1] if kernels else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--fault-around-control", action="store_true",
                        help="also measure kestrel run --fault-around, interleaved with the normal runs")
    options = parser.parse_args()
    if not options.kernel:
        sys.exit("no kernel: apt-get install linux-image-cloud-amd64, or pass --kernel")
    if not os.access(KESTREL, os.X_OK):
        sys.exit(f"{KESTREL} is missing: run `swift build -c release` first")
    work = tempfile.mkdtemp(prefix="kestrel-memory-")
    initrd = os.path.join(work, "initramfs.cpio")
    subprocess.run([KESTREL, "initramfs", "--command", "echo kestrel-memory-guest", "-o", initrd], check=True, stdout=subprocess.DEVNULL)
    command = [KESTREL, "run", "--kernel", options.kernel, "--initrd", initrd, "--cpus", "1",
               "--memory", f"{options.memory_mib}M", "--cmdline", CMDLINE, "--verbose"]
    variants = [("", command)]
    if options.fault_around_control:
        variants.append((" (control: --fault-around)", command + ["--fault-around"]))
    peaks = {label: [] for label, _ in variants}
    own_figures = {label: [] for label, _ in variants}
    for run in range(1, options.runs + 1):
        for label, variant in variants:
            peak, own, last = measure(variant, options.memory_mib << 20, options.timeout)
            if peak is None:
                sys.exit(f"run {run}{label}: no sample taken; kestrel said: {last}")
            peaks[label].append(peak)
            if own is not None:
                own_figures[label].append(own)
            print(f"run {run}{label}: peak overhead while the guest ran {mib(peak[0])} "
                  f"(executable pages {mib(peak[1])}, private {mib(peak[2])}); "
                  f"Kestrel's own figure at the end {own if own is not None else '?'} MiB", flush=True)
    for label, _ in variants:
        runs = peaks[label]
        print(f"median peak overhead while the guest ran{label}: {mib(statistics.median(p[0] for p in runs))} "
              f"(executable pages {mib(statistics.median(p[1] for p in runs))}, private {mib(statistics.median(p[2] for p in runs))})"
              + ("" if label else "; goal < 5 MiB"))
        if own_figures[label]:
            print(f"median of Kestrel's own end-of-run figure{label}: {statistics.median(own_figures[label]):.1f} MiB")


if __name__ == "__main__":
    main()
