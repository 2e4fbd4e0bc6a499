#!/usr/bin/env python3
"""How stable the lab's L1 is: boot it N times per configuration, run the
conformance suites in it (kestrel check, which runs ~70 L2 guests), and count
runs that did not come back with a status, and L1 consoles that show a kernel
Oops, BUG, WARNING or panic (`kestrel lab run -v` prints those lines).

Configurations: 1 vCPU and 2 vCPUs under single-threaded TCG (the lab's
default), and 2 vCPUs under multi-threaded TCG, which once oopsed a 7.2 L1
during kernel text patching.

Usage: scripts/lab-stability.py [--boots 10] [--kernel 7.2] [--configs single1,single2,multi2]
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
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=10)
    parser.add_argument("--kernel", default="7.2")
    parser.add_argument("--configs", default="single1,single2,multi2")
    options = parser.parse_args()
    kestrel = next(path for path in [os.path.join(ROOT, ".build", "release", "kestrel"), os.path.join(ROOT, ".build", "debug", "kestrel")]
                   if os.access(path, os.X_OK))
    for name in options.configs.split(","):
        failures, problems, seconds = 0, [], []
        for boot in range(options.boots):
            start = time.monotonic()
            result = subprocess.run([kestrel, "lab", "run", "--kernel", options.kernel, "-v", "--timeout", "600"] + CONFIGS[name]
                                    + ["--", "kestrel check --tap >/dev/null; echo check-exit=$?"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seconds.append(time.monotonic() - start)
            came_back = result.returncode == 0 and "check-exit=" in result.stdout
            failures += 0 if came_back else 1
            lines = [line for line in result.stderr.splitlines() if line.startswith("lab: L1 kernel:")]
            problems += lines
            status = "ok" if came_back and not lines else f"PROBLEM exit {result.returncode}: {lines[:2]}"
            print(f"{name} boot {boot + 1}: {seconds[-1]:.1f} s {status}", flush=True)
        print(f"== {name}: {options.boots} boots of {options.kernel} with kestrel check, {failures} without a status, "
              f"{len(problems)} kernel problem lines; median {sorted(seconds)[len(seconds) // 2]:.1f} s per boot", flush=True)


if __name__ == "__main__":
    main()
