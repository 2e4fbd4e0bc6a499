import Glibc
import GuestMemory
import HostSystem
import KVM

/// Suite `realm`: the Arm CCA realm interface of KVM, after what the host
/// series (`RealmInterface.series`) and Arm's kvm-unit-tests fork check:
/// creating a realm VM, the rules of KVM_ARM_RMI_POPULATE before and after
/// the realm is activated (its first KVM_RUN), the RIPAS of memory that was
/// not populated, and PSCI CPU_ON, which KVM now completes itself. Every case
/// needs an arm64 host whose KVM offers KVM_CAP_ARM_RMI; elsewhere it SKIPs
/// and says which is missing.
public enum RealmSuite {
    public static let name = "realm"
    static let page: UInt64 = 4096
    static let ramBase: UInt64 = 0x4000_0000
    static let ramSize: UInt64 = 2 << 20
    static let deviceBase: UInt64 = 0x0A00_0000
    static let gicDistributor: UInt64 = 0x0800_0000
    static let gicRedistributors: UInt64 = 0x080A_0000

    static let requirements: [Requirement] = [.architecture("aarch64"), .capability(.armRMI)]

    public static func tests() -> [ConformanceTest] {
        [
            ConformanceTest(suite: name, name: "create", summary: "a KVM_VM_TYPE_ARM_REALM VM is created and reports KVM_CAP_ARM_RMI; REALM with "
                + "PROTECTED is refused (EINVAL); POPULATE on an ordinary VM is refused (ENXIO)", requires: requirements) { try create($0) },
            ConformanceTest(suite: name, name: "populate_before_activation", summary: "POPULATE copies measured pages into a guest_memfd slot "
                + "before the first run, and refuses unaligned ranges, unknown flags and a non-zero reserved word (EINVAL)",
                requires: requirements) { try populateBeforeActivation($0) },
            ConformanceTest(suite: name, name: "populate_after_activation", summary: "after the realm's first KVM_RUN activated it, POPULATE "
                + "is refused (EBUSY) and so is setting vCPU 0's PC", requires: requirements) { try populateAfterActivation($0) },
            ConformanceTest(suite: name, name: "ripas_of_unpopulated_memory", summary: "the realm reads its populated data and zeros from "
                + "guest_memfd memory it did not populate (RIPAS RAM set at activation), and reports both over MMIO through the "
                + "unprotected alias", requires: requirements) { try ripasOfUnpopulatedMemory($0) },
            ConformanceTest(suite: name, name: "psci_cpu_on_completion", summary: "PSCI CPU_ON from vCPU 0 starts vCPU 1 at its entry with "
                + "no completion call from userspace (v14 removed KVM_ARM_VCPU_RMI_PSCI_COMPLETE)", requires: requirements) { try psciCPUOn($0) },
        ]
    }

    // MARK: The realm under test

    /// A realm VM with one 2 MiB guest_memfd slot at 1 GiB (its shared alias
    /// MAP_SHARED), a VGICv3 and `vcpus` initialised vCPUs.
    final class Realm {
        let type: ARM64MachineType
        let vm: VirtualMachine
        let shared: MemoryMapping
        let gic: KVMDevice
        let vcpus: [VCPU]

        init(_ context: TestContext, vcpus count: Int = 1) throws {
            let limit = try context.kvm.checkExtension(.armVMIPASize)
            type = try ARM64MachineType(.realm, ipaBits: limit >= 40 ? UInt8(min(limit, 48)) : 0)
            vm = try context.kvm.createVirtualMachine(type: type.vmType)
            let memfd = try vm.createGuestMemfd(size: ramSize)
            shared = try MemoryMapping(anonymousSize: Int(ramSize), sharing: .shared)
            try vm.install(MemoryRegion(slot: 0, start: GuestAddress(ramBase), mapping: shared, guestMemfd: memfd))
            gic = try ARM64GICv3.create(on: vm, distributor: gicDistributor, redistributors: gicRedistributors)
            let vm = self.vm
            let target = try vm.preferredARM64Target()
            vcpus = try (0..<count).map { index in
                let vcpu = try vm.createVCPU(id: index)
                try vcpu.initializeARM64(ARM64VCPUInit(target: target.target, features: index == 0 ? [.psci02] : [.psci02, .powerOff]))
                return vcpu
            }
            try gic.setAttribute(group: ARM64GICv3.controlGroup, attribute: ARM64GICv3.initialise)
        }

        /// Writes `code` at `offset` into the source memory and populates those pages, measured.
        func populate(_ bytes: [UInt8], at offset: UInt64) throws {
            let length = (UInt64(bytes.count) + page - 1) / page * page
            let source = shared.bytes.baseAddress! + Int(offset)
            bytes.withUnsafeBytes { source.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            try vm.populateRealm(base: ramBase + offset, size: length, source: UnsafeRawPointer(source), measure: true)
        }

        /// Runs `vcpu` to its next exit, at most `seconds`.
        func run(_ vcpu: VCPU, seconds: Double = 10) throws -> VCPUExit? {
            let thread = try VCPUThread(vcpu)
            defer { thread.leaveThread() }
            switch try thread.run(until: .now + .milliseconds(Int64(seconds * 1000))) {
            case .exit(let exit): return exit
            case .deadlineExpired, .stopped: return nil
            }
        }
    }

    /// The 8 bytes of an MMIO write at `address` (top bit stripped by KVM), or a failure.
    static func expectMMIOWrite(_ exit: VCPUExit?, at address: UInt64, _ what: String) throws -> UInt64 {
        guard let exit else { throw TestFailure("\(what): the vCPU made no exit within its time") }
        guard case .mmio(let mmio) = exit, mmio.isWrite, mmio.length == 8 else { throw TestFailure("\(what): expected an 8-byte MMIO write, got \(exit)") }
        guard mmio.address == address else {
            throw TestFailure("\(what): MMIO write at 0x\(String(mmio.address, radix: 16)), expected 0x\(String(address, radix: 16))")
        }
        return UnsafeRawBufferPointer(mmio.data).loadUnaligned(as: UInt64.self)
    }

    // MARK: Cases

    static func create(_ context: TestContext) throws {
        let realm = try Realm(context)
        try context.expectEqual(try realm.vm.checkExtension(.armRMI), 1, "KVM_CAP_ARM_RMI on the realm VM")
        context.note("realm VM type \(realm.type)")
        let both = VMType(rawValue: ARM64MachineType.Kind.realm.rawValue | ARM64MachineType.Kind.protected.rawValue)
        try context.expectErrno(.invalidArgument, "KVM_CREATE_VM with REALM and PROTECTED") { _ = try context.kvm.createVirtualMachine(type: both) }
        let ordinary = try context.kvm.createVirtualMachine(type: try ARM64MachineType(.normal).vmType)
        var request = RealmPopulateRequest(base: ramBase, size: page, sourceAddress: realm.shared.address, flags: 0)
        try context.expectErrno(.noSuchAddressOrDevice, "KVM_ARM_RMI_POPULATE on an ordinary VM") { try ordinary.populateRealm(&request) }
    }

    static func populateBeforeActivation(_ context: TestContext) throws {
        let realm = try Realm(context)
        let source = realm.shared.address
        for (what, request) in [
            ("an unaligned base", RealmPopulateRequest(base: ramBase + 0x800, size: page, sourceAddress: source, flags: 0)),
            ("an unaligned size", RealmPopulateRequest(base: ramBase, size: 0x800, sourceAddress: source, flags: 0)),
            ("an unaligned source", RealmPopulateRequest(base: ramBase, size: page, sourceAddress: source + 8, flags: 0)),
            ("an unknown flag (bit 1)", RealmPopulateRequest(base: ramBase, size: page, sourceAddress: source, flags: 2)),
            ("a non-zero reserved word", RealmPopulateRequest(base: ramBase, size: page, sourceAddress: source, flags: 0, reserved: 1)),
        ] {
            var copy = request
            try context.expectErrno(.invalidArgument, "KVM_ARM_RMI_POPULATE with \(what)") { try realm.vm.populateRealm(&copy) }
        }
        var whole = RealmPopulateRequest(base: ramBase, size: 2 * page, sourceAddress: source, flags: RealmInterface.populateMeasure)
        var calls = 0
        while whole.size > 0 && calls < 64 {
            try realm.vm.populateRealm(&whole)
            calls += 1
        }
        try context.expectEqual(whole.size, 0, "bytes left after \(calls) POPULATE call(s)")
        try context.expectEqualHex(whole.base, ramBase + 2 * page, "base after POPULATE (advanced past what was done)")
        try context.expectEqualHex(whole.sourceAddress, source + 2 * page, "source_uaddr after POPULATE")
    }

    static func populateAfterActivation(_ context: TestContext) throws {
        let realm = try Realm(context)
        try realm.populate(ARM64Instruction.bytes([ARM64Instruction.branchToSelf]), at: 0)
        try realm.vcpus[0].setOneRegister(.arm64Core(.pc), ramBase)
        // The guest parks; the deadline ends the run. The realm is active now.
        let exit = try realm.run(realm.vcpus[0], seconds: 1)
        context.note("first KVM_RUN ended with \(exit.map { "\($0)" } ?? "the deadline")")
        var request = RealmPopulateRequest(base: ramBase + page, size: page, sourceAddress: realm.shared.address + page,
                                           flags: RealmInterface.populateMeasure)
        try context.expectErrno(.resourceBusy, "KVM_ARM_RMI_POPULATE after the realm's first run") { try realm.vm.populateRealm(&request) }
        // Configuration is locked too: PC is settable only before activation
        // (v14 documents no errno for it, so any refusal passes).
        let refused = try context.errno(of: { try realm.vcpus[0].setOneRegister(.arm64Core(.pc), ramBase + page) })
        try context.expect(refused != nil, "KVM_SET_ONE_REG of PC after the realm's first run succeeded")
        context.note("KVM_SET_ONE_REG of PC after activation: \(refused!.symbolicName)")
    }

    static func ripasOfUnpopulatedMemory(_ context: TestContext) throws {
        let realm = try Realm(context)
        typealias A = ARM64Instruction
        let marker: UInt64 = 0x4B45_5354_5245_4C21
        let unpopulated = ramBase + ramSize - page
        let device = deviceBase | realm.type.unprotectedBit
        // x0 = the marker's address, x1 = an unpopulated page, x2 = the device
        // through the unprotected alias; store what each load finds.
        var code = A.move(0, ramBase + page) + A.move(1, unpopulated) + A.move(2, device)
        code += [A.load(3, from: 0), A.store(3, to: 2), A.load(4, from: 1), A.store(4, to: 2), A.branchToSelf]
        try realm.populate(A.bytes(code), at: 0)
        try realm.populate(withUnsafeBytes(of: marker.littleEndian, Array.init), at: page)
        try realm.vcpus[0].setOneRegister(.arm64Core(.pc), ramBase)
        let populated = try expectMMIOWrite(try realm.run(realm.vcpus[0]), at: deviceBase, "the realm's report of its populated page")
        try context.expectEqualHex(populated, marker, "populated data the realm read")
        let zero = try expectMMIOWrite(try realm.run(realm.vcpus[0]), at: deviceBase, "the realm's report of its unpopulated page")
        try context.expectEqualHex(zero, 0, "unpopulated guest_memfd memory the realm read (RIPAS RAM, a fresh page)")
    }

    static func psciCPUOn(_ context: TestContext) throws {
        let realm = try Realm(context, vcpus: 2)
        typealias A = ARM64Instruction
        let device = deviceBase | realm.type.unprotectedBit
        let secondEntry = ramBase + page
        // vCPU 0: x0 = PSCI_CPU_ON (SMC64), x1 = target MPIDR 1, x2 = entry,
        // x3 = context; SMC; report x0 (the PSCI result).
        let first = A.move(0, 0xC400_0003) + A.move(1, 1) + A.move(2, secondEntry) + A.move(3, 0x1234)
            + [A.smc] + A.move(5, device) + [A.store(0, to: 5), A.branchToSelf]
        // vCPU 1: report x0 (the context id CPU_ON passes), then park.
        let second = A.move(5, device) + [A.store(0, to: 5), A.branchToSelf]
        try realm.populate(A.bytes(first), at: 0)
        try realm.populate(A.bytes(second), at: page)
        try realm.vcpus[0].setOneRegister(.arm64Core(.pc), ramBase)
        let result = try expectMMIOWrite(try realm.run(realm.vcpus[0]), at: deviceBase, "vCPU 0's PSCI CPU_ON result")
        try context.expectEqualHex(result, 0, "PSCI CPU_ON result (PSCI_RET_SUCCESS)")
        let started = try expectMMIOWrite(try realm.run(realm.vcpus[1]), at: deviceBase, "vCPU 1's first report")
        try context.expectEqualHex(started, 0x1234, "x0 of vCPU 1 (the context id CPU_ON gave)")
    }
}
