import Glibc
@testable import Lab
import Testing
import TextFormat
import WireFormats

/// Kata Containers' launch of Firecracker, replayed in a 6.1 L1 from its Go
/// runtime (src/runtime/virtcontainers/fc.go) with Kestrel installed as
/// /opt/kata/bin/firecracker and /opt/kata/bin/jailer: the `--version`
/// check; the jail root made first, bind-mounted on itself, shared and
/// remounted without noexec; the kernel, the rootfs image, the config file
/// and the log and metrics FIFOs bind-mounted into it; eight empty
/// placeholder drives; a tap in a network namespace; Kata's config file
/// (tab-indented, `vsock_id`, `{}` rate limiters, `smt` false, the rootfs
/// read-only and not the root device); the jailer's line with `--daemonize`
/// and `--netns`; GET / every 10 ms until Running (timed against Kata's 10 s); the
/// pid from `firecracker.pid`; the hybrid vsock socket chmod 0640; the
/// agent's port; a container disk bind-mounted over `drive_0` and PATCHed;
/// SIGTERM within Kata's 15 s; and the clean-up. The guest, whose console
/// goes nowhere (the jailer daemonizes), writes what it saw into the
/// hot-plugged disk. The guest kernel is the lab's 6.1-microvm, which like
/// Kata's has its drivers built in, reads the MP table and takes
/// `virtio_mmio.device=`, so Kata's command line goes as Kata writes it,
/// `acpi=off` included. Where the replay departs from Kata: an initrd
/// carries the guest's script and agent, where Kata's rootfs image carries
/// its agent.
extension LabIntegrationTests {
    @Test func kataContainersJailedLaunchSequenceBootsAGuest() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labkata")
        let guest = #"""
            for i in $(seq 100); do [ -b /dev/vdi ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
            # The agent's port: Kata dials 1024 through the hybrid vsock socket.
            ( while true; do kestrel vsock listen --port 1024 --echo 2>>/tmp/agent.err; sleep 0.2; done ) &
            ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
            R="rootfs=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 11) ro=$(cat /sys/block/vda/ro) drives=$(ls /sys/block | grep -c '^vd')"
            R="$R before=$(cat /sys/block/vdb/size)"
            i=0; until [ "$(cat /sys/block/vdb/size)" != 0 ]; do i=$((i+1)); [ $i -gt 3000 ] && break; sleep 0.1; done
            R="$R after=$(cat /sys/block/vdb/size) disk=$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -c 14)"
            R="$R ping=$(ping -c 1 -W 10 172.16.0.1 >/dev/null 2>&1 && echo ok || echo failed) cpus=$(nproc) acpi-off=$(grep -c -w acpi=off /proc/cmdline)"
            R="$R vsock-devices=$(ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport 2>/dev/null | grep -c virtio) agent-errors=[$(tail -c 300 /tmp/agent.err 2>/dev/null | tr '\n' ' ')]"
            printf '%s report-end' "$R" | dd of=/dev/vdb bs=4096 seek=1 conv=sync,fsync 2>/dev/null
            sleep 900
            """#
        let l1 = #"""
            set -u
            \#(Self.nowFunction)
            ID=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
            mkdir -p /opt/kata/bin
            cp "$(command -v kestrel)" /opt/kata/bin/firecracker && cp "$(command -v kestrel)" /opt/kata/bin/jailer
            echo "version $(/opt/kata/bin/firecracker --version | head -n 1)"
            head -c 1048576 /dev/zero > /tmp/rootfs.img; printf kata-rootfs | dd of=/tmp/rootfs.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --add /lab/kestrel-guest:/bin/kestrel --command "$(cat /lab/guest.sh)" -o /tmp/initrd.cpio >/dev/null
            VM=/run/vc/firecracker/$ID; R=$VM/root
            # fcInitConfiguration: the root, remounted with exec.
            mkdir -p $R/run
            mount --bind $R $R && mount --make-shared $R && mount -o remount,bind,nosuid,relatime $R || echo "remount-failed"
            jail() { : > $R/$2 && mount --bind $1 $R/$2 || echo "bind-failed $2"; }
            jail /lab/guest/vmlinux vmlinux
            jail /tmp/rootfs.img rootfs
            jail /tmp/initrd.cpio initrd
            for i in 0 1 2 3 4 5 6 7; do : > $R/drive_$i; done
            mkfifo $VM/logs.fifo $VM/metrics.fifo
            cat $VM/logs.fifo > /tmp/logs.out &
            cat $VM/metrics.fifo > /tmp/metrics.out &
            jail $VM/logs.fifo logs.fifo
            jail $VM/metrics.fifo metrics.fifo
            # The sandbox's network namespace, with the tap Kata's endpoint gives Firecracker.
            mkdir -p /var/run/netns && : > /var/run/netns/cni-kata && unshare --net=/var/run/netns/cni-kata true || echo "netns-failed"
            nsenter --net=/var/run/netns/cni-kata sh -c 'ip link set lo up; ip tuntap add dev tap0_kata mode tap 2>/dev/null || tunctl -t tap0_kata >/dev/null; ip addr add 172.16.0.1/24 dev tap0_kata; ip link set tap0_kata up'
            DRIVES=""
            for i in 0 1 2 3 4 5 6 7; do
                DRIVES="$DRIVES,
            		{
            			\"drive_id\": \"drive_$i\",
            			\"is_read_only\": false,
            			\"is_root_device\": false,
            			\"path_on_host\": \"/drive_$i\"
            		}"
            done
            cat > $VM/fcConfig.json <<JSON
            {
            	"boot-source": {
            		"boot_args": "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0",
            		"initrd_path": "/initrd",
            		"kernel_image_path": "/vmlinux"
            	},
            	"drives": [
            		{
            			"drive_id": "rootfs",
            			"is_read_only": true,
            			"is_root_device": false,
            			"path_on_host": "/rootfs"
            		}$DRIVES
            	],
            	"logger": {
            		"level": "Debug",
            		"log_path": "/logs.fifo"
            	},
            	"machine-config": {
            		"mem_size_mib": 256,
            		"smt": false,
            		"vcpu_count": 1
            	},
            	"metrics": {
            		"metrics_path": "/metrics.fifo"
            	},
            	"network-interfaces": [
            		{
            			"guest_mac": "06:00:ac:10:00:02",
            			"host_dev_name": "tap0_kata",
            			"iface_id": "eth0",
            			"rx_rate_limiter": {},
            			"tx_rate_limiter": {}
            		}
            	],
            	"vsock": {
            		"guest_cid": 3,
            		"uds_path": "/kata.hvsock",
            		"vsock_id": "root"
            	}
            }
            JSON
            jail $VM/fcConfig.json fcConfig.json
            start=$(now)
            /opt/kata/bin/jailer --id $ID --exec-file /opt/kata/bin/firecracker --uid 0 --gid 0 --chroot-base-dir /run/vc --daemonize --netns /var/run/netns/cni-kata -- --config-file /fcConfig.json
            echo "jailer-exit $?"
            S=$R/run/firecracker.socket
            # waitVMMRunning: GET / every 10 ms, for at most fcTimeout (10 s); measured up to 60 s.
            until CURL -s --max-time 1 --unix-socket $S http://localhost/ 2>/dev/null | grep -q '"state":"Running"'; do
                [ $(( $(now) - start )) -gt 60000 ] && break
                [ -s $R/firecracker.pid ] && [ ! -e /proc/$(cat $R/firecracker.pid) ] && { echo "vmm-died"; break; }
                sleep 0.01
            done
            echo "running-ms $(( $(now) - start ))"
            PID=$(cat $R/firecracker.pid)
            if [ ! -e /proc/$PID ]; then echo "== logs"; cat /tmp/logs.out; echo "== end"; exit 0; fi
            echo "pid-root $(readlink /proc/$PID/root)"
            echo "vmm-netns $( [ "$(readlink /proc/$PID/ns/net)" = "$(nsenter --net=/var/run/netns/cni-kata readlink /proc/self/ns/net)" ] && echo sandbox || echo other)"
            chmod 0640 $R/kata.hvsock && echo "hvsock-mode $(stat -c %a $R/kata.hvsock)"
            echo "threads $(cat /proc/$PID/task/*/comm | sort | uniq -c | tr -s ' \n' ' ')"
            # GetThreadIDs: the threads whose comm is "fc_vcpu N", by N.
            echo "kata-vcpus $(for t in /proc/$PID/task/*; do c=$(cat $t/comm); case "$c" in fc_vcpu*) printf '%s=%s ' "${c#fc_vcpu }" "${t##*/}";; esac; done)"
            \#(Self.curlFunction(socket: "$S"))
            until [ "$(echo ping | timeout 5 kestrel vsock connect --uds $R/kata.hvsock --port 1024 2>/tmp/connect.err)" = ping ]; do
                [ $(( $(now) - start )) -gt 180000 ] || [ ! -e /proc/$PID ] && { echo "connect-error $(tail -n 1 /tmp/connect.err)"; break; }
                sleep 1
            done
            echo "agent-ms $(( $(now) - start ))"
            # hotplugBlockDevice: the container's disk over drive_0, then the PATCH.
            head -c 1048576 /dev/zero > /tmp/container.img; printf container-disk | dd of=/tmp/container.img conv=notrunc 2>/dev/null
            mount --bind /tmp/container.img $R/drive_0 || echo "hotplug-bind-failed"
            c PATCH /drives/drive_0 -d '{"drive_id":"drive_0","path_on_host":"/drive_0"}'
            i=0; until dd if=/tmp/container.img bs=4096 skip=1 count=1 2>/dev/null | grep -q report-end; do i=$((i+1)); [ $i -gt 600 ] || [ ! -e /proc/$PID ] && break; sleep 0.2; done
            echo "report $(dd if=/tmp/container.img bs=4096 skip=1 count=1 2>/dev/null | tr -d '\000')"
            # fcEnd: SIGTERM, then up to fcStopSandboxTimeout (15 s). The daemon is
            # init's child here, and this L1's init reaps nobody: a zombie has ended.
            stop=$(now); kill -TERM $PID
            i=0; while [ -e /proc/$PID ] && ! grep -q '^State:.*Z' /proc/$PID/status 2>/dev/null; do i=$((i+1)); [ $i -gt 150 ] && break; sleep 0.1; done
            echo "stopped-ms $(( $(now) - stop ))"
            sleep 1
            # cleanupJail
            for f in drive_0 vmlinux rootfs initrd logs.fifo metrics.fifo fcConfig.json; do umount $R/$f || echo "umount-failed $f"; done
            umount $R && rm -rf $VM && echo "cleanup ok"
            echo "== logs"; cat /tmp/logs.out
            echo "== metrics"; cat /tmp/metrics.out
            echo "== end"
            """#
        // The guest's agent is Kestrel itself (`kestrel vsock listen`), stripped:
        // the initrd Kestrel loads before Kata's 10 s run out is then 20 MB smaller.
        let strip = try HostProcess.output(["strip", "-o", directory.path + "/kestrel-guest", try Self.kestrel()])
        #expect(strip.status == 0, "strip (binutils, which scripts/prepare-host test installs): \(strip.errors)")
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: [
            "--kernel", "6.1", "--guest", "6.1-microvm", "--add", directory.path + "/kestrel-guest:/lab/kestrel-guest",
        ])
        print("Kata Containers' jailed launch in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let script = ScriptOutput(run.output, from: "\nversion ")
        let output = script.text, value = script.value, section = script.section
        #expect(value("version") == "Firecracker v1.16.0+kestrel.0.2.0", "Kata parses the second word as semver: \(output)")
        #expect(!output.contains("-failed"), "every step of the set-up worked: \(output)")
        #expect(value("jailer-exit") == "0", "\(output)")
        let running = script.number("running-ms")
        // Kata gives a VMM 10 s to reach Running. Here the L1 is TCG and Kestrel
        // a debug build: the same start takes 274 ms natively on this machine and
        // 6 to 11 s here, so the figure is reported against Kata's limit, and
        // the test asks only that the VMM got there (the loop gives up at 60 s).
        print("Kata's replay: Running after \(running) ms (\(running <= 10_000 ? "within" : "over") Kata's 10,000 on this TCG lab), "
              + "the agent after \(script.number("agent-ms")) ms")
        #expect((0..<60_000).contains(running), "the VMM never reported Running: \(output)")
        #expect(value("pid-root")?.hasPrefix("/run/vc/firecracker/") == true && value("pid-root")?.hasSuffix("/root") == true,
                "the pid file names the jailed VMM: \(output)")
        #expect(value("vmm-netns") == "sandbox" && value("hvsock-mode") == "640", "\(output)")
        // Kata's GetThreadIDs finds the one vCPU thread by its name, "fc_vcpu 0".
        let vcpus = (value("kata-vcpus") ?? "").split(separator: " ")
        #expect(vcpus.count == 1 && vcpus.first?.hasPrefix("0=") == true, "Kata finds vCPU 0's thread: \(output)")
        #expect(script.number("agent-ms") > 0 && script.number("agent-ms") < 180_000, "the agent's port answered over the hybrid vsock: \(output)")
        #expect(value("PATCH /drives/drive_0") == "204", "\(output)")
        let report = value("report") ?? ""
        for part in ["rootfs=kata-rootfs", "ro=1", "drives=9", "before=0", "after=2048", "disk=container-disk", "ping=ok", "cpus=1", "acpi-off=1", "report-end"] {
            #expect(report.contains(part), "the guest's report lacks \(part): \(output)")
        }
        #expect((0...15_000).contains(script.number("stopped-ms")), "SIGTERM ended the VMM within Kata's 15 s: \(output)")
        #expect(value("cleanup") == "ok", "\(output)")
        #expect(section("logs").contains { $0.contains(#"request on "/drives/drive_0""#) }, "the log FIFO has the API's lines: \(section("logs"))")
        let metrics = section("metrics")
        #expect(!metrics.isEmpty && metrics.allSatisfy { (try? JSONValue.parse(Array($0.utf8)).objectValue) != nil },
                "Kata unmarshals every metrics line: \(metrics)")
    }
}

/// flintlock's launch of Firecracker, replayed in a 6.1 L1 from its source
/// (infrastructure/microvm/firecracker): the state directory with the log
/// and metrics files made empty first; its config (compact, `smt` true as on
/// every x86 host, `cache_type` Unsafe, the root volume as the root device,
/// `mmds-config` V1 on eth0, the logger at Debug with level and origin);
/// the metadata file with base64 values under `latest`; `firecracker --id
/// ULID --boot-timer --no-api --config-file ... --metadata ...` with stdout
/// and stderr to files; and SIGHUP to stop it. The guest reads its
/// cloud-init data from MMDS V1 as cloud-init's nocloud-net source does
/// (`ds=nocloud-net;s=http://169.254.169.254/latest/`), and sees two threads
/// of one core. The replay adds an initrd (the lab's guest kernel has
/// virtio-blk as a module).
extension LabIntegrationTests {
    @Test func flintlocksLaunchSequenceBootsAGuestThatReadsItsMetadata() throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labflintlock")
        let guest = #"""
            for i in $(seq 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
            ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
            ip route add 169.254.169.254 dev eth0
            devmem 0xc0000000 8 123
            echo "cmdline $(cat /proc/cmdline)"
            echo "root-disk $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 14)"
            echo "cpus $(nproc)"
            echo "popcnt $(grep -c -w popcnt /proc/cpuinfo)"
            echo "siblings $(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list)"
            echo "core-of-cpu1 $(cat /sys/devices/system/cpu/cpu1/topology/core_id)"
            M=http://169.254.169.254/latest
            echo "listing $(wget -q -O - $M/ | tr '\n' ' ')"
            echo "meta-data $(wget -q -O - $M/meta-data | base64 -d | tr '\n' ' ')"
            echo "user-data $(wget -q -O - $M/user-data | base64 -d | tr '\n' ' ')"
            echo reads-done
            sleep 900
            """#
        let l1 = #"""
            set -u
            ULID=01JEKBYS3N6M5W2XQ7T9V4C8DF
            S=/var/lib/flintlock/vm/default/lab-vm/$ULID
            mkdir -p $S /tmp/flintlock-bin
            ln -sf "$(command -v kestrel)" /tmp/flintlock-bin/firecracker
            PATH=/tmp/flintlock-bin:$PATH
            ip tuntap add dev fltap0 mode tap 2>/dev/null || tunctl -t fltap0 >/dev/null
            ip addr add 172.16.0.1/24 dev fltap0 && ip link set fltap0 up
            : > $S/firecracker.log; : > $S/firecracker.metrics
            head -c 1048576 /dev/zero > /tmp/root.img; printf flintlock-root | dd of=/tmp/root.img conv=notrunc 2>/dev/null
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/initrd.cpio >/dev/null
            META=$(printf 'instance_id: default/lab-vm/%s\nlocal_hostname: lab-vm\nplatform: liquid_metal\n' $ULID | base64 -w 0)
            USERDATA=$(printf '#cloud-config\nhostname: lab-vm\n' | base64 -w 0)
            VENDOR=$(printf '#cloud-config\nruncmd: []\n' | base64 -w 0)
            printf '{"latest":{"meta-data":"%s","user-data":"%s","vendor-data":"%s"}}' $META $USERDATA $VENDOR > $S/metadata.json
            ARGS='console=ttyS0 ds=nocloud-net;s=http://169.254.169.254/latest/ i8042.dumbkbd i8042.noaux i8042.nomux i8042.nopnp panic=1 pci=off reboot=k'
            printf '%s' '{"drives":[{"drive_id":"root","path_on_host":"/tmp/root.img","is_root_device":true,"is_read_only":false,"cache_type":"Unsafe"}],' \
                '"boot-source":{"kernel_image_path":"/lab/guest/vmlinux","initrd_path":"/tmp/initrd.cpio","boot_args":"'"$ARGS"'"},' \
                '"logger":{"log_path":"'$S'/firecracker.log","level":"Debug","show_level":true,"show_log_origin":true},' \
                '"machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":true,"track_dirty_pages":false},' \
                '"metrics":{"metrics_path":"'$S'/firecracker.metrics"},' \
                '"mmds-config":{"version":"V1","network_interfaces":["eth0"]},' \
                '"network-interfaces":[{"iface_id":"eth0","host_dev_name":"fltap0","guest_mac":"06:00:ac:10:00:02"}]}' > $S/firecracker.cfg
            firecracker --id $ULID --boot-timer --no-api --config-file $S/firecracker.cfg --metadata $S/metadata.json \
                > $S/firecracker.stdout 2> $S/firecracker.stderr < /dev/null &
            echo $! > $S/firecracker.pid
            i=0; until grep -q '^reads-done' $S/firecracker.stdout; do i=$((i+1)); [ $i -gt 1500 ] && break; [ -e /proc/$(cat $S/firecracker.pid) ] || break; sleep 0.2; done
            # flintlock's Delete: SIGHUP.
            kill -HUP $(cat $S/firecracker.pid); wait $(cat $S/firecracker.pid); echo "vmm-exit $?"
            echo "== stdout"; cat $S/firecracker.stdout
            echo "== stderr"; cat $S/firecracker.stderr
            echo "== log"; cat $S/firecracker.log
            echo "== metrics"; cat $S/firecracker.metrics
            echo "== end"
            """#
        let run = try Self.runWithCurl(guest: guest, l1: l1, in: directory.path, labArguments: ["--kernel", "6.1", "--guest-kernel"])
        print("flintlock's launch in the 6.1 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let script = ScriptOutput(run.output, from: "\nvmm-exit ")
        let output = script.text, section = script.section
        let console = section("stdout")
        func line(_ key: String) -> String? {
            console.first { $0.hasPrefix(key + " ") }.map { String(String($0.dropFirst(key.count + 1)).reversed().drop { $0 == " " }.reversed()) }
        }
        #expect(script.value("vmm-exit") == "129", "SIGHUP ends the VMM as a signal does: \(output)")
        #expect(line("root-disk") == "flintlock-root" && line("cmdline")?.contains("root=/dev/vda rw") == true,
                "the root volume is /dev/vda and its root= was added: \(console)")
        #expect(line("cpus") == "2" && line("siblings") == "0-1" && line("core-of-cpu1") == "0", "smt: two threads of one core: \(console)")
        #expect(line("listing") == "meta-data user-data vendor-data", "\(console)")
        #expect(line("popcnt") == "2", "both vCPUs show POPCNT without a custom CPU template (the Async test's control): \(console)")
        #expect(line("meta-data") == "instance_id: default/lab-vm/01JEKBYS3N6M5W2XQ7T9V4C8DF local_hostname: lab-vm platform: liquid_metal",
                "cloud-init's meta-data over MMDS V1: \(console)")
        #expect(line("user-data") == "#cloud-config hostname: lab-vm", "\(console)")
        let log = section("log")
        #expect(log.contains { $0.contains("[01JEKBYS3N6M5W2XQ7T9V4C8DF:") && $0.contains(":INFO:") && $0.contains("Guest-boot-time = ") },
                "the log has the boot timer's line with the id, level and origin: \(log)")
        let metrics = section("metrics")
        let parsed = metrics.compactMap { try? JSONValue.parse(Array($0.utf8)).objectValue }
        #expect(!metrics.isEmpty && parsed.count == metrics.count, "every metrics line is JSON: \(metrics)")
        #expect(parsed.compactMap { $0["mmds"]?.objectValue?["rx_count"]?.wholeNumber }.reduce(0, +) >= 3,
                "the guest's three MMDS reads are counted: \(metrics)")
    }
}
