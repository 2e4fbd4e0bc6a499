import Glibc
@testable import Lab
import Testing
import TextFormat

extension LabIntegrationTests {
    /// `kestrel run --memory-backend guest_memfd` on the kernels whose
    /// guest_memfd can back all RAM (MMAP|INIT_SHARED, 6.18 and later): a
    /// Linux L2 reaches userspace with every RAM slot in a guest_memfd (the
    /// L1 sees the `kvm-gmem` mappings in Kestrel's address space while the
    /// guest runs), and reads a virtio-blk disk whose sha256 matches the
    /// host's, so the devices reach guest memory through the guest_memfd
    /// mapping. Each L1 first boots the same guest on anonymous memory, as a
    /// control. The guest is Debian's 6.1 kernel, as when the L0 was QEMU 7.2,
    /// under which 6.18 and 7.2 guests panicked in their FPU set-up with either
    /// backend (FINDINGS.md, sections 10 and 11).
    @Test(arguments: ["6.18", "7.2"])
    func aLinuxGuestRunsOnGuestMemfdRAM(kernel: String) throws {
        let directory = try TemporaryDirectory(prefix: "kestrel-labgmem")
        let guest = #"""
            echo guest-userspace
            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
            echo "guest-sum $(sha256sum /dev/vda)"
            sleep 1
            """#
        let l1 = #"""
            set -u
            head -c 4194304 /dev/urandom > /tmp/disk.img; echo "host-sum $(sha256sum /tmp/disk.img)"
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            cmdline='console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet'
            for backend in anonymous guest_memfd; do
              # A boot that KVM ends with FINDINGS.md section 8's exact signature is
              # the L1's defect under QEMU's SVM: DELIVERY_EV on an NPF (exit code
              # 0x400) whose fault address, given twice, is a virtio-mmio
              # QueueNotify register (0xd000N050), with the NPF error code of a
              # write to MMIO (0x10000000e), on vCPU 0. It is reported and booted
              # again, at most six boots in all (6 of 17 boots on 6.18 show it, so six in a
              # row would be 1 run in 500). Any other internal error is a failure.
              for attempt in 1 2 3 4 5 6; do
                # A stale file from the boot before would satisfy the wait below at once.
                rm -f /tmp/$backend.out
                kestrel run --kernel /lab/guest/vmlinux --initrd /tmp/i.cpio --memory 256M --cmdline "$cmdline" \
                  --memory-backend $backend --drive /tmp/disk.img,ro > /tmp/$backend.out 2>&1 &
                vm=$!
                until grep -q guest-userspace /tmp/$backend.out || ! kill -0 $vm 2>/dev/null; do sleep 0.2; done
                mappings=$(grep -c kvm-gmem /proc/$vm/maps 2>/dev/null)
                wait $vm; status=$?
                grep -q 'KVM_INTERNAL_ERROR_DELIVERY_EV), data \[\(0xd000[0-9a-f]050\), 0x400, 0x10000000e, \1, 0x0\] at RIP 0x[0-9a-f]*$' /tmp/$backend.out || break
                echo "== $backend boot $attempt: KVM_INTERNAL_ERROR_DELIVERY_EV on an MMIO access (FINDINGS section 8), booting again"
              done
              echo "== $backend gmem-mappings $mappings"
              echo "== $backend exit $status"
              cat /tmp/$backend.out
            done
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(l1.utf8), to: directory.path + "/l1.sh")
        let run = try Self.run(["lab", "run", "--kernel", kernel, "--guest", "6.1", "--add", directory.path + "/guest.sh:/lab/guest.sh",
                                "--add", directory.path + "/l1.sh:/lab/l1.sh", "--", "sh /lab/l1.sh"], timeout: 900)
        print("guest_memfd RAM in the \(kernel) lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        let retries = run.output.split(separator: "\n").filter { $0.contains("booting again") }.count
        if retries > 0 { print("the \(kernel) L1 ended \(retries) boot(s) with DELIVERY_EV on MMIO (FINDINGS section 8)") }
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        // An L1 that died (FINDINGS.md, section 6) is booted again and the
        // script run again, with a new disk: only the last run counts, from
        // its first line (host-sum).
        let all = run.output.split(separator: "\n").map(String.init)
        let lines = Array(all[(all.lastIndex { $0.hasPrefix("host-sum ") } ?? 0)...])
        if lines.count < all.count { print("the \(kernel) L1 was booted again; reading its last run") }
        let output = lines.joined(separator: "\n")
        func value(_ key: String) -> String? {
            lines.first { $0.hasPrefix(key + " ") }.map { String($0.dropFirst(key.count + 1)) }
        }
        let hostSum = try #require(value("host-sum")?.prefix(64), "\(output)")
        let guestSums = lines.filter { $0.hasPrefix("guest-sum ") }.map { $0.dropFirst("guest-sum ".count).prefix(64) }
        #expect(guestSums == [hostSum, hostSum], "both guests read the disk intact: \(output)")
        #expect(value("== anonymous exit") == "0" && value("== guest_memfd exit") == "0", "\(output)")
        #expect(value("== anonymous gmem-mappings") == "0", "the control run maps no guest_memfd: \(output)")
        let mappings = Int(value("== guest_memfd gmem-mappings") ?? "") ?? 0
        #expect(mappings >= 1, "Kestrel's address space holds the guest_memfd mappings while the guest runs: \(output)")
        let protection = lines.first { $0.hasPrefix("kestrel: guest memory: guest_memfd MMAP|INIT_SHARED") }
        #expect(protection != nil, "kestrel says what backs guest RAM: \(output)")
        #expect(protection?.contains("userspace_addr at Kestrel's MAP_SHARED mapping of the file") == true, "\(output)")
        #expect(protection?.contains("direct map") == true, "\(output)")
    }

    /// The lab host with private memory: 6.12 with its KVM rebuilt with
    /// CONFIG_KVM_SW_PROTECTED_VM offers KVM_X86_SW_PROTECTED_VM, and the
    /// guest_memfd suite's sw_protected cases, the private_mem suite (the
    /// kernel's private_mem selftests, and Kestrel's conversion manager driven
    /// by a guest, with the refused device request) and the hypercall exit run
    /// there. They skip on every Debian kernel as shipped.
    @Test func theSoftwareProtectedHostOffersPrivateMemory() throws {
        let caps = try Self.run(["lab", "run", "--kernel", "6.12-sw-protected", "--", "kestrel caps"], timeout: 900)
        #expect(caps.status == 0, "\(caps.errors.suffix(3000))")
        let types = caps.output.split(separator: "\n").first { $0.hasPrefix("VM types") } ?? ""
        #expect(types.contains("KVM_X86_SW_PROTECTED_VM"), "\(caps.output)")
        #expect(caps.output.contains("0x8 (PRIVATE)"), "KVM_SET_MEMORY_ATTRIBUTES offers PRIVATE: \(caps.output)")
        let check = try Self.run(["lab", "check", "--kernel", "6.12-sw-protected", "--filter", "guest_memfd.sw_protected",
                                  "--filter", "private_mem", "--filter", "basics.exit_hypercall"], timeout: 900)
        print("guest_memfd, private_mem and the hypercall exit on the SW_PROTECTED host:\n\(check.output)")
        // 6.12 binds a guest_memfd range that ends past INT64_MAX: the one
        // failure expected here, with its fix named (eba85fee7fc6, in 7.2).
        // Exit status 1 is what `kestrel check` gives for a FAIL.
        #expect(check.status == 1, "\(check.output)\n\(check.errors.suffix(2000))")
        let summary = check.output.split(separator: "\n").first { $0.contains(" passed, ") } ?? ""
        let passed = Int(summary.split(separator: " ").first ?? "") ?? 0
        #expect(passed >= 15 && summary.contains(" 1 failed"), "\(check.output)")
        let failures = check.output.split(separator: "\n").filter { $0.contains("] FAIL  ") }
        #expect(failures.count == 1 && failures.first?.contains("FAIL  guest_memfd.sw_protected.invalid_binding") == true,
                "\(check.output)")
        #expect(check.output.contains("offset 0x7ffffffffffff000") && check.output.contains("eba85fee7fc6"), "\(check.output)")
        for name in ["kvm_exits.memslot_not_private", "kvm_exits.memslot_deleted", "conversions.one_slot", "conversions.two_slots",
                     "manager.conversions", "manager.device_refuses_private_buffer"] {
            #expect(check.output.contains("PASS  private_mem.\(name)"), "private_mem.\(name): \(check.output)")
        }
        #expect(check.output.contains("PASS  basics.exit_hypercall"), "\(check.output)")
    }
}

extension LabIntegrationTests {
    /// A Linux guest on guest_memfd RAM (MMAP|INIT_SHARED) snapshotted and
    /// restored in a new process on 6.18, the first kernel with such RAM
    /// (issue 37, item 5; 7.2 is `curlBootsPausesSnapshotsAndRestoresALinuxGuest`'s
    /// guest_memfd case). The guest has no virtio device: it ticks on the
    /// serial port, so it makes none of the MMIO exits on which the 6.18 L1
    /// meets FINDINGS.md section 8 (with a disk and vsock, 3 runs of 3 ended
    /// with that DELIVERY_EV on 6.18, with either backend, and none on 7.2).
    /// The restored guest's ticks go on from where the snapshot left them,
    /// and it powers off.
    @Test func aLinuxGuestOnGuestMemfdRAMRestoresInANewProcessOn618() throws {
        let curl = try #require(HostProcess.find("curl"), "curl is not installed (scripts/prepare-host test installs it)")
        let directory = try TemporaryDirectory(prefix: "kestrel-labgmemsnap")
        let guest = #"""
            i=0; while [ $i -lt 100 ]; do echo "tick $i"; i=$((i+1)); sleep 0.1; done
            poweroff -f
            """#
        let host = #"""
            set -u
            echo "== guest_memfd snapshot test"
            kestrel initramfs --modules /lab/guest/modules --command "$(cat /lab/guest.sh)" -o /tmp/i.cpio >/dev/null
            c() { sock=$1; method=$2; path=$3; shift 3; echo "$method $path $(CURL -s -S --max-time 300 --unix-socket $sock -X $method -w ' %{http_code}' "$@" http://localhost$path 2>&1)"; }
            wait_for() { local n=0; until [ -S $1 ]; do n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1; done; }
            now() { cut -d' ' -f1 /proc/uptime; }
            ms() { awk -v a=$1 -v b=$(now) 'BEGIN { printf "%d", (b - a) * 1000 }'; }
            kestrel run --api-sock /tmp/a.sock --id gmem-vm > /tmp/a.out 2>/tmp/a.err &
            a=$!
            wait_for /tmp/a.sock
            c /tmp/a.sock PUT /boot-source -d '{"kernel_image_path": "/lab/guest/vmlinux", "initrd_path": "/tmp/i.cpio", "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux pci=off quiet"}'
            c /tmp/a.sock PUT /machine-config -d '{"vcpu_count": 1, "mem_size_mib": 256, "memory_backend": "guest_memfd"}'
            c /tmp/a.sock PUT /actions -d '{"action_type": "InstanceStart"}'
            n=0; until grep -q "tick 20" /tmp/a.out; do n=$((n+1)); [ $n -gt 1500 ] && break; sleep 0.2; done
            c /tmp/a.sock PATCH /vm -d '{"state": "Paused"}'
            c /tmp/a.sock PUT /snapshot/create -d '{"snapshot_path": "/tmp/vm.state", "mem_file_path": "/tmp/vm.mem"}'
            grep -E "kestrel: (snapshot|guest memory):" /tmp/a.err
            kill -9 $a; wait $a
            echo "a-last $(grep tick /tmp/a.out | tail -1)"
            echo "files $(stat -c %s /tmp/vm.mem) $(du -k /tmp/vm.mem | cut -f1)"
            kestrel run --api-sock /tmp/b.sock --id gmem-vm-restored > /tmp/b.out 2>/tmp/b.err &
            b=$!
            wait_for /tmp/b.sock
            t0=$(now)
            c /tmp/b.sock PUT /snapshot/load -d '{"snapshot_path": "/tmp/vm.state", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/vm.mem"}, "resume_vm": true}'
            echo "loaded ms=$(ms $t0)"
            c /tmp/b.sock GET /kestrel/memory
            wait $b; echo "b-exit $?"
            echo "b-first $(grep tick /tmp/b.out | head -1)"
            echo "b-head $(head -1 /tmp/b.out)"
            echo "b-last $(grep tick /tmp/b.out | tail -1)"
            echo "== b.err"; cat /tmp/b.err
            """#
        try writeFileAtomically(Array(guest.utf8), to: directory.path + "/guest.sh")
        try writeFileAtomically(Array(host.replacing("CURL -s", with: curl + " -s").utf8), to: directory.path + "/l1.sh")
        let run = try Self.run(["lab", "run", "--kernel", "6.18", "--guest", "6.1", "--add", directory.path + "/guest.sh:/lab/guest.sh",
                                "--add", directory.path + "/l1.sh:/lab/l1.sh"] + (try Self.programWithLibraries(curl)) + ["--", "sh /lab/l1.sh"],
                               timeout: 900)
        print("a guest_memfd snapshot in the 6.18 lab: \(run.seconds.text(places: 2)) s\n\(run.output)")
        #expect(run.status == 0, "\(run.errors.suffix(3000))")
        let output = ScriptOutput(run.output, from: "== guest_memfd snapshot test")
        func line(_ prefix: String) -> String { output.lines.first { $0.hasPrefix(prefix) } ?? "(no \(prefix) line)" }
        #expect(line("PUT /snapshot/create").hasSuffix(" 204") && line("PUT /snapshot/load").hasSuffix(" 204"), "\(output.text)")
        #expect(line("kestrel: guest memory: guest_memfd MMAP|INIT_SHARED").contains("userspace_addr"), "\(output.text)")
        #expect(line("GET /kestrel/memory").contains(#""backing":"guest_memfd""#), "the restored RAM is guest_memfd: \(output.text)")
        let last = Int(line("a-last tick ").dropFirst("a-last tick ".count)) ?? -1
        let first = Int(line("b-first tick ").dropFirst("b-first tick ".count)) ?? -1
        // The console goes out by line, so a line the pause cut in two was
        // still in the first VMM's buffer when it was killed: then the
        // restored guest's output starts with the rest of that line ("1" of
        // "tick 21"), and its first whole tick is the one after.
        let head = String(line("b-head ").dropFirst("b-head ".count))
        let cut = first == last + 2 && !head.isEmpty && !head.hasPrefix("tick ") && "tick \(last + 1)".hasSuffix(head)
        #expect(last >= 20 && (first == last || first == last + 1 || cut),
                "the ticks go on from \(last): the restored guest's first is \(first), its output starts \"\(head)\"")
        #expect(line("b-last") == "b-last tick 99" && line("b-exit") == "b-exit 0", "the restored guest ticked to the end and powered off: \(output.text)")
        #expect(output.lines.contains { $0.contains("guest_memfd, filled from the snapshot's memory file") }, "\(output.text)")
    }
}
