#!/usr/bin/env python3
"""virtio device speed and memory: Kestrel against QEMU microvm, as L2 VMMs in one L1.

Both VMMs run inside the same lab L1 (Debian 6.1 cloud kernel, KVM on TCG's
emulated SVM), boot the same vmlinux and initramfs (the kernel's virtio
modules, busybox and the static kestrel) with 256 MiB and 1 vCPU, and get the
same 64 MiB raw image and the same tap. QEMU is this machine's Debian
qemu-system-x86 with `-M microvm`, virtio-mmio devices and userspace back ends
(vhost=off) and qboot as its firmware (scripts/lab-bench.py says why), added
to the L1 as in scripts/lab-bench.py. Boots alternate
between the VMMs within the one L1 run; medians and ratios come from it.

Measured inside the guest, with /proc/uptime around each step:
- virtio-blk sequential read: dd of the whole image, 1 MiB blocks, O_DIRECT.
- virtio-blk 4 KiB reads at queue depth 1: dd bs=4k iflag=direct over 8 MiB
  (the image sits in the L1's page cache, so this is the per-request cost a
  random-read IOPS figure measures).
- TCP over virtio-net: 4 MiB from the guest to `nc -l` in the L1, then 16 MiB
  back (nested TCG moves guest-sent data slowly for both VMMs).
Measured in the L1:
- vsock round trips: `kestrel vsock ping` (64-byte messages, 300 timed)
  against `kestrel vsock listen --echo` in the guest. QEMU has no userspace
  vsock, so its figure is vhost-vsock (the L1 kernel's back end, reached over
  AF_VSOCK), a harder baseline than the userspace one the other rows use.
- Kestrel's memory overhead: /proc/PID/smaps sampled every 0.5 s from the
  moment Kestrel says it released its start-up pages (before the guest's first
  instruction) to the end of the run, minus the guest RAM mapping: the peak
  while the guest boots and drives all four devices (virtio-rng is attached
  and read too). This is scripts/memory-overhead.py's measure, taken where the
  guest reaches userspace. With --fault-around-control each run also boots
  Kestrel with --fault-around (the kernel's fault-around kept for its code),
  for that figure's control; use an L1 of 6.7 or later (--kernel 6.18 or 7.2),
  where Kestrel can turn fault-around off.
- With --all-devices, the memory figure with everything on: Kestrel alone,
  from a config file with the four devices, a balloon (statistics every
  second, free page hinting and reporting), MMDS (V1 on eth0, with a
  --metadata data store), --metrics-path and the API socket. The L1 and L2
  are then this machine's cloud kernel, whose virtio_balloon module the guest
  loads, or with --balloon-module the --kernel lab kernel and that module
  (use 7.2: from 6.7 on Kestrel turns fault-around off); besides the four devices' traffic the guest reads MMDS, and the L1
  inflates the balloon by 64 MiB, runs a hinting run, reads the statistics
  and flushes the metrics. Each run also prints where its peak was: resident
  KiB by mapping, largest first (`peak-map-kib KIB MAPPINGS NAME`), and with
  --present-pages the executable's resident pages, to attribute them to
  symbols with nm. --control-binary runs a second static kestrel (another
  build of the same source) the same way, interleaved, as the control.

Needs: a release kestrel (swift build -c release --product kestrel),
qemu-system-x86 and the 6.1 lab kernel. Usage: scripts/virtio-bench.py [--runs 5] [--kernel 7.2 --guest 6.1] [--fault-around-control | --memory-only | --all-devices]
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
[ -e /lab/virtio_balloon.ko ] && insmod /lab/virtio_balloon.ko
for i in $(seq 100); do [ -b /dev/vda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 1 -W 5 172.16.0.1 >/dev/null
# (Not wget -T: Debian 12's busybox 1.35 wget crashes with it.)
[ -e /lab/virtio_balloon.ko ] && { ip route add 169.254.169.254 dev eth0; echo "mmds-read $(timeout 10 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id)"; }
head -c 32 /dev/hwrng >/dev/null
t() { cut -d' ' -f1 /proc/uptime; }
a=$(t); dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null; b=$(t); echo "seqread $a $b 64"
a=$(t); dd if=/dev/vda of=/dev/null bs=4k count=2048 iflag=direct 2>/dev/null; b=$(t); echo "qd1 $a $b 2048"
a=$(t); dd if=/dev/zero bs=1M count=4 2>/dev/null | nc -w 5 172.16.0.1 7100; b=$(t); echo "tcpup $a $b 4"
a=$(t); nc -w 5 172.16.0.1 7101 > /dev/null; b=$(t); echo "tcpdown $a $b 16"
echo vsock-listening
timeout 300 kestrel vsock listen --port 52 --echo 2>/dev/null
"""

L1 = r"""
set -u
ip tuntap add dev tap0 mode tap 2>/dev/null || tunctl -t tap0 >/dev/null
ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up
kestrel initramfs --modules /lab/guest/modules --add /bin/kestrel INITRAMFS_EXTRA --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=64 2>/dev/null
cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet EXTRA_CMDLINE'
guest_ram_kib=262144
# The peak of Kestrel's resident set beyond the guest RAM mapping (an
# anonymous read-write mapping of exactly the guest's size), in KiB, from the
# release of its start-up pages to its exit.
sample_kestrel() {
  until grep -q 'released start-up pages' /tmp/out.txt 2>/dev/null; do kill -0 $1 2>/dev/null || return; sleep 0.1; done
  peak=0
  while kill -0 $1 2>/dev/null; do
    now=$(awk -v guest=$guest_ram_kib '/^[0-9a-f]+-[0-9a-f]+ /{perm=$2; path=$6; next}
      /^Size:/{size=$2} /^Rss:/{if (!(path == "" && perm ~ /^rw/ && size == guest)) total += $2} END{print total+0}' /proc/$1/smaps 2>/dev/null)
    [ -n "$now" ] && [ "$now" -gt "$peak" ] && { peak=$now; cp /proc/$1/smaps /tmp/peak-smaps 2>/dev/null
      [ -n "PAGES" ] && dd if=/proc/$1/pagemap of=/tmp/peak-pagemap bs=8 skip=512 count=6656 2>/dev/null; }
    sleep 0.5
  done
  echo "peak-kib $peak"
}
for i in $(seq RUNS); do
  if [ $((i % 2)) = 1 ]; then order="VMMS"; else order="$(echo VMMS | tr ' ' '\n' | tac | tr '\n' ' ')"; fi
  for vmm in $order; do
    (sleep 600 | nc -l -p 7100 > /dev/null &)
    (head -c 16777216 /dev/zero | nc -l -p 7101 &)
    rm -f /tmp/out.txt /tmp/v.sock*
    case $vmm in
      kestrel|kestrel-fault-around)
               control=; [ $vmm = kestrel-fault-around ] && control=--fault-around
               kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$cmdline" \
                 --drive /tmp/disk.img,id=bench,cache=writeback --net tap0 \
                 --vsock /tmp/v.sock --entropy --verbose $control > /tmp/out.txt 2>&1 &
               vm=$!; sample_kestrel $vm > /tmp/peak.txt & sampler=$!
               ping="kestrel vsock ping --uds /tmp/v.sock --port 52 --count 300" ;;
      kestrel-all|kestrel-all-control)
               binary=kestrel; [ $vmm = kestrel-all-control ] && binary=/lab/kestrel-control
               cat > /tmp/all.json <<JSON
{"boot-source": {"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "$cmdline"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
 "drives": [{"drive_id": "bench", "path_on_host": "/tmp/disk.img", "is_root_device": false, "cache_type": "Writeback"}],
 "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
 "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
 "entropy": {},
 "balloon": {"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1, "free_page_hinting": true, "free_page_reporting": true},
 "mmds-config": {"version": "V1", "network_interfaces": ["eth0"]}}
JSON
               echo '{"latest": {"meta-data": {"instance-id": "i-bench"}}}' > /tmp/md.json
               rm -f /tmp/api.sock /tmp/metrics.json
               $binary run --api-sock /tmp/api.sock --config-file /tmp/all.json --metadata /tmp/md.json --metrics-path /tmp/metrics.json \
                 --verbose > /tmp/out.txt 2>&1 &
               vm=$!; sample_kestrel $vm > /tmp/peak.txt & sampler=$!
               ping="kestrel vsock ping --uds /tmp/v.sock --port 52 --count 300" ;;
      qemu) /usr/bin/qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host -m 256 -smp 1 -nodefaults \
              -no-user-config -display none -serial stdio -L /usr/share/qemu -bios /usr/share/qemu/qboot.rom -kernel /lab/guest/vmlinux -initrd /tmp/i.cpio \
              -append "$cmdline" -no-reboot \
              -drive id=d0,file=/tmp/disk.img,format=raw,if=none,cache=writeback -device virtio-blk-device,drive=d0 \
              -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device virtio-net-device,netdev=n0 \
              -device vhost-vsock-device,guest-cid=3 -object rng-random,id=r0,filename=/dev/urandom -device virtio-rng-device,rng=r0 \
              > /tmp/out.txt 2>&1 &
            vm=$!; sampler=
            ping="kestrel vsock ping --cid 3 --port 52 --count 300" ;;
    esac
    until grep -q vsock-listening /tmp/out.txt 2>/dev/null || ! kill -0 $vm 2>/dev/null; do sleep 1; done
    # The guest waits in its vsock listener: the balloon and the API are driven now, before the ping ends the run.
    if [ $vmm = kestrel-all ] || [ $vmm = kestrel-all-control ]; then
      c() { m=$1 p=$2; shift 2; echo "$vmm api $m $p $(CURL -s --max-time 60 --unix-socket /tmp/api.sock -X $m -w ' %{http_code}' "$@" http://localhost$p)"; }
      c PATCH /balloon -d '{"amount_mib": 64}'
      t0=$(cut -d. -f1 /proc/uptime)
      until CURL -s --unix-socket /tmp/api.sock http://localhost/balloon/statistics | grep -q '"actual_mib":64' || [ $(( $(cut -d. -f1 /proc/uptime) - t0 )) -gt 120 ] || ! kill -0 $vm 2>/dev/null; do sleep 1; done
      echo "$vmm inflate-64-s $(( $(cut -d. -f1 /proc/uptime) - t0 ))"
      c PATCH /balloon/hinting/start
      sleep 5
      c GET /balloon/hinting/status
      c GET /balloon/statistics
      c PUT /actions -d '{"action_type": "FlushMetrics"}'
      echo "$vmm metrics-lines $(wc -l < /tmp/metrics.json)"
      grep '^mmds-read' /tmp/out.txt | tr -d '\r' | sed "s/^/$vmm /"
    fi
    tries=0
    until $ping > /tmp/ping.txt 2>/dev/null; do
      tries=$((tries+1)); [ $tries -gt 60 ] || ! kill -0 $vm 2>/dev/null && break; sleep 1
    done
    # the echo server ends with the connection, the guest's init then powers off
    wait $vm
    [ -n "$sampler" ] && { wait $sampler; { cat /tmp/peak.txt; grep -o 'Kestrel overhead [0-9.]* MiB' /tmp/out.txt; } | sed "s/^/$vmm /"; }
    # Where the peak was: resident KiB by mapping (anonymous ones by permissions and size), largest first.
    [ -n "$sampler" ] && [ -s /tmp/peak-smaps ] && awk -v guest=$guest_ram_kib '
      /^[0-9a-f]+-[0-9a-f]+ /{perm=$2; path=$6; next}
      /^Size:/{size=$2}
      /^Rss:/{key = path == "" ? "anon " perm " " size "K" : path " " perm; if (!(path == "" && perm ~ /^rw/ && size == guest)) { rss[key] += $2; count[key]++ }}
      END{for (k in rss) if (rss[k] > 0) print rss[k], count[k], k}' /tmp/peak-smaps | sort -rn | head -12 | sed "s/^/$vmm peak-map-kib /"
    rm -f /tmp/peak-smaps
    [ -s /tmp/peak-pagemap ] && echo "$vmm peak-present-pages $(od -An -tx8 -w8 -v /tmp/peak-pagemap | awk '/^ *[89a-f]/{printf "%d%s ", NR - 1 + 512, $1 ~ /^[ab]/ ? "" : "a"}')"
    rm -f /tmp/peak-pagemap
    grep -E '^(seqread|qd1|tcpup|tcpdown) ' /tmp/out.txt | tr -d '\r' | sed "s/^/$vmm /"
    sed -n 's/^round-trips .* median-us \([0-9.]*\) .*/vsockrtt \1/p' /tmp/ping.txt | sed "s/^/$vmm /"
    grep -q 'median-us' /tmp/ping.txt && grep -q '^tcpdown ' /tmp/out.txt || { echo "$vmm run $i incomplete:"; tail -20 /tmp/out.txt | sed 's/^/  /'; }
    killall nc sleep 2>/dev/null; sleep 1
  done
done
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kernel", default="6.1")
    parser.add_argument("--guest", help="the L2 guest's lab kernel (default: the L1's own). Under --qemu 7.2, 6.18 and 7.2 "
                        "guests panic in their early FPU set-up, because QEMU 7.2's TCG lets a guest's XSETBV past KVM "
                        "(FINDINGS.md sections 10 and 11): use --guest 6.1 there")
    parser.add_argument("--qemu", default="system", help="the lab's L0: system (QEMU 10.0) or 7.2")
    parser.add_argument("--extra-cmdline", default="", help="appended to the guest's command line for both VMMs (e.g. noxsave)")
    parser.add_argument("--raw", help="write the L1 run's whole output to this file")
    parser.add_argument("--memory-only", action="store_true",
                        help="boot Kestrel only, with and without --fault-around, for the memory figure and its control (no QEMU, no ratios)")
    parser.add_argument("--all-devices", action="store_true",
                        help="boot Kestrel only, with every device, MMDS and metrics on, for the memory figure "
                             "(this machine's cloud kernel as L1 and L2; no QEMU, no ratios)")
    parser.add_argument("--balloon-module", help="with --all-devices: the virtio_balloon.ko of the --kernel lab kernel, uncompressed, "
                        "which then serves as L1 and guest (the lab keeps only the four devices' drivers). Debian ships it in "
                        "linux-modules-RELEASE: apt-get download it with the lab's apt options (~/.cache/kestrel/lab/apt), "
                        "dpkg-deb -x, xz -d")
    parser.add_argument("--present-pages", action="store_true",
                        help="also print, for Kestrel's peak, the page numbers (address / 4096) of the executable's resident pages "
                             "(`peak-present-pages N ...`, from /proc/PID/pagemap; `Na` for a private anonymous copy), to attribute them to symbols")
    parser.add_argument("--control-binary", help="with --all-devices: a second static kestrel (another build of the same "
                        "source, say) run the same way in the same L1, interleaved, as the memory figure's control")
    parser.add_argument("--fault-around-control", action="store_true",
                        help="also boot Kestrel with --fault-around (the kernel's fault-around kept) in each run, "
                             "for the memory figure's control")
    options = parser.parse_args()
    if not os.path.exists(KESTREL):
        sys.exit("build the release kestrel first: swift build -c release --product kestrel")
    work = tempfile.mkdtemp(prefix="kestrel-virtio-bench-")
    with open(os.path.join(work, "guest.sh"), "w") as file:
        file.write(GUEST)
    with open(os.path.join(work, "l1.sh"), "w") as file:
        if options.all_devices:
            vmms = "kestrel-all kestrel-all-control" if options.control_binary else "kestrel-all"
        elif options.memory_only:
            vmms = "kestrel kestrel-fault-around"
        else:
            vmms = "kestrel qemu kestrel-fault-around" if options.fault_around_control else "kestrel qemu"
        extra = "--add /lab/virtio_balloon.ko:/lab/virtio_balloon.ko" if options.all_devices else ""
        curl = shutil.which("curl") or ""
        file.write(L1.replace("RUNS", str(options.runs)).replace("VMMS", vmms).replace("EXTRA_CMDLINE", options.extra_cmdline)
                   .replace("INITRAMFS_EXTRA", extra).replace("CURL -s", curl + " -s")
                   .replace('"PAGES"', '"yes"' if options.present_pages else '""'))
    guest = ["--guest", options.guest] if options.guest and options.guest != options.kernel else ["--guest-kernel"]
    l1_kernel = ["--kernel", options.kernel, "--qemu", options.qemu]
    added = lab_bench.qemu_bundle()
    if options.all_devices and options.balloon_module:
        # The lab kernel as L1 and guest, with the balloon driver built for it.
        if not os.path.isfile(options.balloon_module) or not shutil.which("curl") or guest != ["--guest-kernel"]:
            sys.exit("--balloon-module needs the module's file, curl (apt-get install curl), and the L1's own kernel as the guest (no --guest)")
        added = [(options.balloon_module, "/lab/virtio_balloon.ko")] + lab_bench.with_libraries(shutil.which("curl"))
    elif options.all_devices:
        # This machine's cloud kernel, which has the balloon driver the lab's kernels leave out.
        if not shutil.which("curl"):
            sys.exit("--all-devices needs curl (apt-get install curl)")
        image, release, module = lab_bench.cloud_kernel_with_balloon()
        l1_kernel = ["--kernel-image", image, "--modules", f"/lib/modules/{release}", "--qemu", options.qemu]
        guest = ["--guest-kernel"]
        added = [(module, "/lab/virtio_balloon.ko")] + lab_bench.with_libraries(shutil.which("curl"))
    # One boot: an L1 booted again would run the script again, and its
    # samples would mix with the first boot's.
    arguments = [KESTREL, "lab", "run"] + l1_kernel + ["--boot-attempts", "1"] + guest + [
                 "--memory", "3072", "--timeout", "3000",
                 "--add", os.path.join(work, "guest.sh") + ":/lab/guest.sh", "--add", os.path.join(work, "l1.sh") + ":/lab/l1.sh"]
    if options.control_binary:
        added.append((os.path.abspath(options.control_binary), "/lab/kestrel-control"))
    for host, guest_path in added:
        arguments += ["--add", f"{host}:{guest_path}"]
    result = subprocess.run(arguments + ["--", "sh /lab/l1.sh"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if options.raw:
        with open(options.raw, "w") as file:
            file.write(result.stdout + "\n== stderr\n" + result.stderr)
    if result.returncode != 0:
        sys.exit(f"the lab run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    samples = {}
    for line in result.stdout.splitlines():
        rtt = re.match(r"(kestrel|qemu) vsockrtt ([0-9.]+)$", line.strip())
        if rtt:
            samples.setdefault((rtt.group(1), "vsockrtt"), []).append(float(rtt.group(2)))
            continue
        match = re.match(r"(kestrel|qemu|kestrel-fault-around) (seqread|qd1|tcpup|tcpdown) ([0-9.]+) ([0-9.]+) ([0-9]+)$", line.strip())
        if not match:
            if "incomplete" in line or line.startswith(" "):
                print(line)
            continue
        vmm, what, start, end, amount = match.groups()
        seconds = max(float(end) - float(start), 0.01)
        # MB/s for transfers (MiB counted), requests per second for qd1.
        samples.setdefault((vmm, what), []).append(float(amount) / seconds)
    if options.all_devices:
        for line in result.stdout.splitlines():
            if line.startswith(("kestrel-all ", "kestrel-all-control ")) and " peak-kib " not in line and "Kestrel overhead" not in line:
                print(line)
    measured = "kestrel-all" if options.all_devices else "kestrel"
    memory = [float(m) for m in re.findall(rf"^{measured} Kestrel overhead ([0-9.]+) MiB", result.stdout, re.M)]
    peaks = [int(k) / 1024 for k in re.findall(rf"^{measured} peak-kib ([0-9]+)", result.stdout, re.M)]
    control_name = "kestrel-all-control" if options.control_binary else "kestrel-fault-around"
    control_peaks = [int(k) / 1024 for k in re.findall(rf"^{control_name} peak-kib ([0-9]+)", result.stdout, re.M)]
    names = {"seqread": "virtio-blk sequential read (MiB/s)", "qd1": "virtio-blk 4 KiB reads at QD1 (IOPS)",
             "tcpup": "TCP guest to host over virtio-net (MiB/s)", "tcpdown": "TCP host to guest over virtio-net (MiB/s)",
             "vsockrtt": "vsock round trip, 64 bytes (median us; QEMU: vhost-vsock)"}
    print(f"{options.runs} runs each, interleaved, one L1 ({options.kernel}); medians; ratio = how many times better Kestrel is (goal >= 1.0)")
    for what, name in ({} if options.memory_only or options.all_devices else names).items():
        k, q = samples.get(("kestrel", what), []), samples.get(("qemu", what), [])
        if not k or not q:
            print(f"{name}: missing samples (kestrel {len(k)}, qemu {len(q)})")
            continue
        km, qm = statistics.median(k), statistics.median(q)
        # A latency is better when smaller: its ratio is QEMU's over Kestrel's.
        ratio = qm / km if what == "vsockrtt" else km / qm
        print(f"{name}: kestrel {km:.1f}, qemu {qm:.1f}, ratio {ratio:.2f}   "
              f"(kestrel {', '.join(f'{v:.1f}' for v in k)}; qemu {', '.join(f'{v:.1f}' for v in q)})")
    if peaks:
        attached = ("the four devices, the balloon, MMDS, metrics and the API" if options.all_devices else "all four devices")
        print(f"Kestrel's peak overhead while the guest ran (smaps, guest RAM excluded), {attached} attached and used: "
              f"median {statistics.median(peaks):.2f} MiB, max {max(peaks):.2f} ({', '.join(f'{v:.2f}' for v in peaks)}); goal < 5 MiB")
    if control_peaks:
        label = "the --control-binary" if options.control_binary else "Kestrel with --fault-around (the kernel's fault-around kept)"
        print(f"the control, {label}: "
              f"median {statistics.median(control_peaks):.2f} MiB, max {max(control_peaks):.2f} ({', '.join(f'{v:.2f}' for v in control_peaks)})")
    if memory:
        attached = ("the four devices, the balloon, MMDS, metrics and the API" if options.all_devices else "virtio-blk, -net, -vsock and -rng")
        print(f"Kestrel's own overhead figure at the end of each run, with {attached} attached and used: "
              f"median {statistics.median(memory):.1f} MiB ({', '.join(f'{v:.1f}' for v in memory)}); goal < 5 MiB")


if __name__ == "__main__":
    main()
