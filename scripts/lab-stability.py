#!/usr/bin/env python3
"""How stable the lab's L1 is: boot it N times per configuration, run the
conformance suites in it (kestrel check, which runs ~100 L2 guests), and count
runs that did not come back with a status, and L1 consoles that show a kernel
Oops, BUG, WARNING or panic.

Each L1 gets one boot (--boot-attempts 1): a death is counted, never retried,
and the lab keeps its console under the lab cache's crashes/ (the path is
printed). Configurations:

  single1  1 vCPU, single-threaded TCG (the lab's default)
  single2  2 vCPUs, single-threaded TCG
  multi2   2 vCPUs, multi-threaded TCG, which once oopsed 7.2 L1s
  pair     two single1 L1s at once, on our 2 cores
  l2smp    1 vCPU, and instead of kestrel check six boots of a 2-vCPU 6.1 L2
           Linux guest under kestrel run with its console at full volume,
           where single-CPU L1s were seen to freeze (FINDINGS.md section 6)

--qemu picks the L0 (system: QEMU 10.0; 7.2: Debian 12's), and --load N runs N
busy loops beside the L1s for the whole measurement, so that two L0s can be
compared under the same load.

Usage: scripts/lab-stability.py [--boots 10] [--kernel 7.2] [--configs single1,multi2,pair] [--qemu 7.2] [--load 1]
Needs a built kestrel (release preferred) and the lab kernel in the cache.
"""
import argparse
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "single1": ["--cpus", "1"],
    "single2": ["--cpus", "2"],
    "multi2": ["--cpus", "2", "--multi-threaded-tcg"],
    "pair": ["--cpus", "1"],
    "l2smp": ["--cpus", "1", "--guest", "6.1"],
}

CHECK = "kestrel check --tap >/dev/null; echo check-exit=$?"
L2_BOOTS = ("kestrel initramfs --command 'echo l2-up; cat /proc/cpuinfo | grep -c processor' -o /tmp/i.cpio >/dev/null; "
            "for i in 1 2 3 4 5 6; do kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cpus 2 "
            "--cmdline 'console=ttyS0 reboot=k panic=-1 i8042.noaux' > /tmp/l2.out 2>&1 || echo \"l2 boot $i exit $?\"; done; "
            "echo check-exit=0")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=10)
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--configs", default="single1,single2,multi2")
    parser.add_argument("--qemu", default="system", help="the L0: system (QEMU 10.0) or 7.2")
    parser.add_argument("--load", type=int, default=0, help="busy loops to run beside the L1s")
    options = parser.parse_args()
    unknown = [name for name in options.configs.split(",") if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    kestrel = next(path for path in [os.path.join(ROOT, ".build", "release", "kestrel"), os.path.join(ROOT, ".build", "debug", "kestrel")]
                   if os.access(path, os.X_OK))
    load = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(options.load)]
    try:
        for name in options.configs.split(","):
            measure(kestrel, name, options)
    finally:
        for process in load:
            process.kill()


def measure(kestrel, name, options):
    failures, problems, seconds, kept = 0, [], [], []
    l1s = 2 if name == "pair" else 1
    for boot in range(options.boots):
        start = time.monotonic()
        command = [kestrel, "lab", "run", "--kernel", options.kernel, "--qemu", options.qemu, "-v", "--timeout", "600",
                   "--boot-attempts", "1"] + CONFIGS[name] + ["--", L2_BOOTS if name == "l2smp" else CHECK]
        runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(l1s)]
        results = [(run.communicate(), run.returncode) for run in runs]
        seconds.append(time.monotonic() - start)
        statuses = []
        for (stdout, stderr), code in results:
            came_back = code == 0 and "check-exit=" in stdout and "l2 boot" not in stdout
            failures += 0 if came_back else 1
            lines = [line for line in stderr.splitlines() if line.startswith("lab: L1 kernel:")]
            problems += lines
            kept += [line.split("console kept at ")[1].split(";")[0] for line in stderr.splitlines() if "console kept at " in line]
            frozen = [line for line in stderr.splitlines() if "stopped responding" in line]
            statuses.append("ok" if came_back and not lines else f"PROBLEM exit {code}: {(lines + frozen)[:2]} "
                            + " ".join(line for line in stdout.splitlines() if line.startswith("l2 boot")))
        print(f"{name} boot {boot + 1}: {seconds[-1]:.1f} s " + "; ".join(statuses), flush=True)
    print(f"== {name} under --qemu {options.qemu}, load {options.load}: {options.boots * l1s} L1 boots of {options.kernel} with "
          f"kestrel check, {failures} without a status, {len(problems)} kernel problem lines; "
          f"median {sorted(seconds)[len(seconds) // 2]:.1f} s per boot", flush=True)
    for path in sorted(set(kept)):
        print(f"   console kept at {path}", flush=True)


if __name__ == "__main__":
    main()
