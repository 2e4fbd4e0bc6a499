#!/usr/bin/env python3
"""Count FINDINGS.md section 8's DELIVERY_EV signature over many L2 Linux boots.

Inside one lab L1, `kestrel run` boots a Debian kernel (6.1 unless --guest
says otherwise) as an L2 guest (256 MiB, 1 vCPU, a virtio-blk disk the guest
reads whole) N times. Each boot either reaches the guest's last line or ends
with an error. Boots that end with KVM_INTERNAL_ERROR_DELIVERY_EV on an NPF
at a virtio-mmio QueueNotify register (the section's exact signature) are
counted apart from those that end with DELIVERY_EV on an NPF at any other
MMIO address (the same stale-EXITINTINFO shape: address, exit code 0x400, an
NPF error code, address, 0), and from any other failure; every boot's status
is listed.

Run it for an unpatched kernel and for the same kernel with the SVM fix
(upstream/svm-exitintinfo-valid), under each L0:

    scripts/delivery-ev-count.py --kernel 7.2 --qemu 7.2 --boots 17
    scripts/delivery-ev-count.py --kernel 7.2-patched --qemu 7.2 --boots 17

A 6.18 guest booted with noxsave (`--guest 6.18 --extra noxsave`) meets the
stale bits on a 7.2 L1 under QEMU 7.2, at the exit device's register.

Needs a built kestrel (release preferred) and the lab kernels; the patched
kernel is recorded with `kestrel lab kernels --build` (see upstream/README.md).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNATURE = re.compile(r"KVM_INTERNAL_ERROR_DELIVERY_EV\), data \[(0xd000[0-9a-f]050), 0x400, 0x10000000e, \1, 0x0\]")
# The same shape at any MMIO address of Kestrel's (virtio-mmio windows and the
# exit device live at 0xd0000000 and up), with any NPF error code.
STALE_SHAPE = re.compile(r"KVM_INTERNAL_ERROR_DELIVERY_EV\), data \[(0xd[0-9a-f]{7}), 0x400, (0x1000000[0-9a-f]{2}), \1, 0x0\]")

GUEST = """echo guest-userspace
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
echo "guest-sum $(sha256sum /dev/vda | cut -c1-16)"
"""

L1 = """set -u
head -c 4194304 /dev/urandom > /tmp/disk.img
kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet EXTRA'
for boot in $(seq BOOTS); do
  kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$cmdline" \\
    --drive /tmp/disk.img,ro > /tmp/boot.out 2>&1
  status=$?
  echo "== boot $boot exit $status"
  grep -E 'guest-sum|kestrel: (KVM|guest|vCPU)|INTERNAL_ERROR' /tmp/boot.out | head -5
done
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="7.2", help="the L1 lab kernel (e.g. 7.2, 7.2-patched, 6.18)")
    parser.add_argument("--qemu", default="system", help="the L0: system (QEMU 10.0) or 7.2")
    parser.add_argument("--boots", type=int, default=17)
    parser.add_argument("--guest", default="6.1", help="the L2 lab kernel (default 6.1)")
    parser.add_argument("--extra", default="", help="words added to the L2's command line (e.g. noxsave)")
    options = parser.parse_args()
    kestrel = next((path for path in [os.path.join(ROOT, ".build", "release", "kestrel"), os.path.join(ROOT, ".build", "debug", "kestrel")]
                    if os.access(path, os.X_OK)), None)
    if kestrel is None:
        sys.exit("no built kestrel: run swift build -c release first")
    with tempfile.TemporaryDirectory(prefix="kestrel-delivery-ev") as work:
        for name, text in [("guest.sh", GUEST), ("l1.sh", L1.replace("BOOTS", str(options.boots)).replace(" EXTRA", (" " + options.extra) if options.extra else ""))]:
            with open(os.path.join(work, name), "w") as file:
                file.write(text)
        timeout = 600 + 120 * options.boots
        result = subprocess.run([kestrel, "lab", "run", "--kernel", options.kernel, "--qemu", options.qemu, "--guest", options.guest,
                                 "--timeout", str(timeout), "--boot-attempts", "1", "-v",
                                 "--add", os.path.join(work, "guest.sh") + ":/lab/guest.sh",
                                 "--add", os.path.join(work, "l1.sh") + ":/lab/l1.sh", "--", "sh /lab/l1.sh"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Each boot is counted once: ended with the signature (whether or not
    # the guest reached userspace first), clean (userspace reached, exit 0),
    # or any other ending.
    boots = re.split(r"^== boot ", result.stdout, flags=re.M)[1:]
    signature = [b for b in boots if SIGNATURE.search(b)]
    shape = [b for b in boots if b not in signature and STALE_SHAPE.search(b)]
    clean = [b for b in boots if b not in signature and b not in shape and "guest-sum" in b and re.match(r"[0-9]+ exit 0\n", b)]
    other = [b for b in boots if b not in signature and b not in shape and b not in clean]
    l0 = next((line for line in result.stderr.splitlines() if " under QEMU " in line), "")
    extra = f" (command line + {options.extra})" if options.extra else ""
    print(f"L1 {options.kernel}, L0 --qemu {options.qemu}: {len(boots)} boots of a {options.guest} L2{extra} with a virtio-blk disk")
    if l0:
        print(l0.strip())
    print(f"  reached userspace, read the disk and exited 0: {len(clean)}")
    print(f"  ended with DELIVERY_EV at a virtio-mmio QueueNotify (FINDINGS section 8): {len(signature)}")
    print(f"  ended with DELIVERY_EV at another MMIO address, same shape: {len(shape)}")
    for boot in shape:
        match = STALE_SHAPE.search(boot)
        print(f"    boot {boot.split()[0]}: address {match.group(1)}, NPF error code {match.group(2)}")
    print(f"  other endings: {len(other)}")
    for boot in other:
        print("    boot " + " | ".join(boot.strip().splitlines()[:4]))
    if result.returncode != 0:
        print(f"kestrel lab run exited with {result.returncode}:\n{result.stderr[-3000:]}")
        sys.exit(1)
    if len(boots) != options.boots:
        sys.exit(f"only {len(boots)} of {options.boots} boots reported")


if __name__ == "__main__":
    main()
