import Foundation
import Testing
@testable import KVM


/// Calls against this host's /dev/kvm (skipped where there is none).
@Suite(.enabled(if: KVMSystem.isAvailable(), "needs /dev/kvm"), .timeLimit(.minutes(5))) struct KVMDeviceTests {
    @Test func systemBasics() throws {
        let kvm = try KVMSystem()
        #expect(try kvm.apiVersion() == 12)
        #expect(try kvm.vcpuMmapSize() >= 2352)  // sizeof(struct kvm_run)
        #expect(try kvm.supportedVMTypes().contains(.default))
        #expect(!(try kvm.supportedCPUID().entries.isEmpty))
        #expect(!(try kvm.msrIndexList().isEmpty))
    }

    @Test func badDevicePathNamesTheCall() {
        #expect(throws: SystemCallError.self) { try KVMSystem(path: "/nonexistent/kvm") }
        do { _ = try KVMSystem(path: "/nonexistent/kvm") } catch {
            #expect(String(describing: error).contains("open(/nonexistent/kvm) failed: ENOENT"))
        }
    }

    /// A slot at a guest address that is not page-aligned: KVM's generic
    /// slot code refuses it with EINVAL on every host.
    @Test func failedIoctlCarriesNameAndErrno() throws {
        let vm = try KVMSystem().createVirtualMachine()
        let misaligned = MemorySlot(slot: 0, guestPhysicalAddress: 0x1001, size: 4096, userspaceAddress: 0x10000)
        #expect {
            try vm.setUserMemoryRegion(misaligned)
        } throws: { error in
            error as? SystemCallError == SystemCallError(operation: "KVM_SET_USER_MEMORY_REGION", errno: .invalidArgument)
        }
    }

    static var guestMemfd: Bool { ((try? KVMSystem().checkExtension(.guestMemfd)) ?? 0) > 0 }

    @Test(.enabled(if: guestMemfd, "needs KVM_CAP_GUEST_MEMFD")) func aGuestMemfdOfOneByteIsRefused() throws {
        let vm = try KVMSystem().createVirtualMachine()
        do {
            _ = try vm.createGuestMemfd(size: 1)
            Issue.record("a 1-byte guest_memfd was accepted")
        } catch let error as SystemCallError {
            #expect(error.operation == "KVM_CREATE_GUEST_MEMFD")
            #expect(error.errno == .invalidArgument)
        }
    }

    @Test func vcpuStateRoundTrips() throws {
        let vcpu = try KVMSystem().createVirtualMachine().createVCPU()
        var registers = try vcpu.registers()
        registers.rbx = 0x1234_5678_9ABC_DEF0
        registers.rip = 0xFFF0
        try vcpu.setRegisters(registers)
        #expect(try vcpu.registers().rbx == 0x1234_5678_9ABC_DEF0)
        var special = try vcpu.specialRegisters()
        special.cr4 |= 1 << 5
        try vcpu.setSpecialRegisters(special)
        #expect(try vcpu.specialRegisters().cr4 & (1 << 5) != 0)
        _ = try vcpu.fpu()
        _ = try vcpu.events()
        _ = try vcpu.extendedControlRegisters()
        #expect(try vcpu.mpState() == .runnable)
        // IA32_TSC_AUX (0xC0000103) is writable from the host.
        #expect(try vcpu.setMSRs([MSREntry(index: 0xC000_0103, value: 7)]) == 1)
        #expect(try vcpu.msr(0xC000_0103) == 7)
        // KVM_GET_MSRS stops at an index it does not know.
        #expect(try vcpu.msrs([0xC000_0103, 0xDEAD_BEEF]).count == 1)
    }

    @Test func immediateExitReturnsInterrupted() throws {
        let vcpu = try KVMSystem().createVirtualMachine().createVCPU()
        vcpu.immediateExit = true
        guard case .interrupted = try vcpu.run() else { Issue.record("KVM_RUN with immediate_exit did not return EINTR"); return }
        vcpu.immediateExit = false
        #expect(!vcpu.immediateExit)
    }

    @Test func oneRegisterAndMSRsAgree() throws {
        let vcpu = try KVMSystem().createVirtualMachine().createVCPU()
        let tscAux = OneRegisterID.msr(0xC000_0103)
        try vcpu.setOneRegister(tscAux, 9)
        #expect(try vcpu.msr(0xC000_0103) == 9)
        try vcpu.setMSRs([MSREntry(index: 0xC000_0103, value: 11)])
        #expect(try vcpu.oneRegister(tscAux) == 11)
        // The register list never lists an id that ONE_REG then refuses.
        for id in try vcpu.registerList() where id.size <= 8 {
            _ = try vcpu.oneRegister(id)
        }
    }

    @Test func cpuidRoundTrips() throws {
        let kvm = try KVMSystem()
        let vcpu = try kvm.createVirtualMachine().createVCPU()
        let supported = try kvm.supportedCPUID()
        try vcpu.setCPUID(supported)
        let readBack = try vcpu.cpuid()
        #expect(!readBack.entries.isEmpty)
        #expect(readBack.entry(function: 0)?.ebx == supported.entry(function: 0)?.ebx)
        // A conforming KVM returns the table it was given, entry for entry. pvm
        // answers KVM_GET_CPUID2 from the host CPU instead (FINDINGS.md §5; the
        // conformance suite `cpuid` reports it as a FAIL), and its entry count
        // then varies from machine to machine (54 of 56 seen in CI). The count
        // is held to the table only where leaf 1, the leaf pvm is known to
        // replace, comes back as set.
        let leaf1Set = supported.entry(function: 1), leaf1Read = readBack.entry(function: 1)
        if leaf1Read?.ecx == leaf1Set?.ecx && leaf1Read?.edx == leaf1Set?.edx {
            #expect(readBack.entries.count == supported.entries.count)
        }
    }

    /// Whether this host's default VM type offers KVM_CAP_MEMORY_ATTRIBUTES.
    static let defaultVMHasMemoryAttributes = ((try? KVMSystem().createVirtualMachine().checkExtension(.memoryAttributes)) ?? 0) != 0
    static let hostHasFeatureMSRs = ((try? KVMSystem().checkExtension(.msrFeatures)) ?? 0) != 0

    @Test(.disabled(if: defaultVMHasMemoryAttributes, "this host's default VM type offers KVM_CAP_MEMORY_ATTRIBUTES"))
    func memoryAttributesNeedAPrivateMemoryVMType() throws {
        let kvm = try KVMSystem()
        let vm = try kvm.createVirtualMachine()
        do {
            try vm.setMemoryAttributes(address: 0, size: 4096, attributes: .private)
            Issue.record("KVM_SET_MEMORY_ATTRIBUTES succeeded on a VM without KVM_CAP_MEMORY_ATTRIBUTES")
        } catch let error as SystemCallError {
            #expect(error.operation == "KVM_SET_MEMORY_ATTRIBUTES")
        }
    }

    @Test(.enabled(if: hostHasFeatureMSRs, "needs KVM_CAP_GET_MSR_FEATURES")) func featureMSRList() throws {
        let kvm = try KVMSystem()
        #expect(!(try kvm.featureMSRIndexList().isEmpty))
    }
}

/// KVM_SET_CLOCK from a KVM_GET_CLOCK reading of another VM, as a snapshot
/// load does: without realtime the new VM's kvmclock resumes at the reading;
/// with KVM_CLOCK_REALTIME, KVM moves it on by the wall time since then.
@Suite(.timeLimit(.minutes(1))) struct ClockRestoreTests {
    /// KVM_GET_CLOCK gives a realtime reading only while KVM's master clock
    /// is in use (a TSC-based host clock; Linux 5.16 and later): the flags a
    /// fresh VM's reading has.
    static let readingFlags: UInt32? = KVMSystem.isAvailable() ? (try? KVMSystem().createVirtualMachine().clock().flags) : nil
    static var realtime: Bool { (readingFlags ?? 0) & ClockState.realtimeFlag != 0 }

    @Test(.enabled(if: realtime, "KVM_GET_CLOCK here gives no KVM_CLOCK_REALTIME (KVM's master clock is not in use)")) func realtimeMovesTheClockOnByTheWallTime() throws {
        let kvm = try KVMSystem()
        let reading = try kvm.createVirtualMachine().clock()
        try #require(reading.flags & ClockState.realtimeFlag != 0, "KVM_GET_CLOCK gave flags 0x\(String(reading.flags, radix: 16))")
        usleep(300_000)
        let resumed = try kvm.createVirtualMachine()
        try resumed.setClock(reading)
        let plain = try resumed.clock().nanoseconds &- reading.nanoseconds
        let moved = try kvm.createVirtualMachine()
        try moved.setClock(reading, realtime: true)
        let advanced = try moved.clock().nanoseconds &- reading.nanoseconds
        #expect(plain < 200_000_000, "without realtime the clock resumed \(plain) ns on")
        #expect(advanced >= 300_000_000 && advanced < 10_000_000_000, "with realtime the clock moved \(advanced) ns on")
    }
}
