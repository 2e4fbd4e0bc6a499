import CKVM

/// The Arm CCA realm interface of KVM, as the host series defines it. It is
/// not merged: every number and layout here follows one version of the
/// series, named in `RealmInterface.series`, and the capability number has
/// moved between versions (247, 248, 249), so a VMM probes rather than
/// trusts it.
///
/// What v14 has, against the interface an older reader may expect:
/// - a VM type bit, KVM_VM_TYPE_ARM_REALM (bit 30), beside the IPA size in
///   bits 7:0 of KVM_CREATE_VM's type;
/// - KVM_CAP_ARM_RMI (249), 1 when the host can run realms;
/// - one ioctl, KVM_ARM_RMI_POPULATE, which copies initial contents into
///   guest_memfd-backed protected memory (optionally measured into the
///   Realm Initial Measurement) and sets it to RIPAS RAM; valid only before
///   the first vCPU run; it may do part of the range and report the rest;
/// - RIPAS changes the guest asks for (RSI_IPA_STATE_SET) reach userspace as
///   KVM_EXIT_MEMORY_FAULT, KVM_MEMORY_EXIT_FLAG_PRIVATE meaning RAM.
///
/// What v14 no longer has (so Kestrel defines none of it): the
/// KVM_CAP_ARM_RME configuration subcommands (hash algorithm and
/// personalization value, "dropped for now", as is PMU support), CREATE,
/// INIT_RIPAS (the kernel sets the gmem memslots to RIPAS RAM when it
/// activates the realm), ACTIVATE (the first KVM_RUN activates), the
/// KVM_ARM_VCPU_REC feature and REC finalisation (RECs are created on the
/// first run), and KVM_ARM_VCPU_RMI_PSCI_COMPLETE (KVM completes PSCI calls
/// that name another vCPU itself, before it enters the REC again).
public enum RealmInterface {
    /// The version every number here is pinned to.
    public static let series = "\"arm64: Support for Arm CCA in KVM\" v14 (2026-05-13, on v7.1-rc1, RMM v2.0-bet1)"
    /// KVM_ARM_RMI_POPULATE_FLAGS_MEASURE: hash the data into the RIM.
    public static let populateMeasure: UInt32 = 1 << 0
}

extension Capability {
    /// KVM_CAP_ARM_RMI: 1 when KVM can run Arm CCA realms (v14: 249; v12 and
    /// v13 used 247 and 248).
    public static let armRMI = Capability(249, name: "KVM_CAP_ARM_RMI")
    /// KVM_CAP_ARM_VM_IPA_SIZE: the largest IPA size KVM_CREATE_VM accepts (0: only 40 bits).
    public static let armVMIPASize = Capability(165, name: "KVM_CAP_ARM_VM_IPA_SIZE")
    /// KVM_CAP_ARM_PSCI_0_2.
    public static let armPSCI02 = Capability(102, name: "KVM_CAP_ARM_PSCI_0_2")
    /// KVM_CAP_ARM_NISV_TO_USER: data aborts without a valid syndrome exit as KVM_EXIT_ARM_NISV.
    public static let armNISVToUser = Capability(177, name: "KVM_CAP_ARM_NISV_TO_USER")
}

/// KVM_CREATE_VM's type on arm64: the IPA size in bits 7:0 (0 means the
/// default 40 bits) and the machine type in bits 31:30.
public struct ARM64MachineType: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: UInt, Sendable, CaseIterable {
        /// KVM_VM_TYPE_ARM_NORMAL (0).
        case normal = 0
        /// KVM_VM_TYPE_ARM_REALM (1 << 30), v14.
        case realm = 0x4000_0000
        /// KVM_VM_TYPE_ARM_PROTECTED (1 << 31): pKVM.
        case protected = 0x8000_0000
    }

    /// The IPA sizes KVM_VM_TYPE_ARM_IPA_SIZE can ask for (32 to 52 bits; 0 is the default).
    public static let ipaBitsRange: ClosedRange<UInt8> = 32...52
    public static let defaultIPABits: UInt8 = 40

    public let kind: Kind
    /// The IPA size requested, or 0 for the default.
    public let requestedIPABits: UInt8

    public init(_ kind: Kind, ipaBits: UInt8 = 0) throws {
        guard ipaBits == 0 || Self.ipaBitsRange.contains(ipaBits) else {
            throw KVMUsageError("an arm64 IPA size is \(Self.ipaBitsRange.lowerBound) to \(Self.ipaBitsRange.upperBound) bits, not \(ipaBits)")
        }
        self.kind = kind
        requestedIPABits = ipaBits
    }

    /// The IPA size in force.
    public var ipaBits: UInt8 { requestedIPABits == 0 ? Self.defaultIPABits : requestedIPABits }

    /// The value for KVM_CREATE_VM.
    public var rawValue: UInt { kind.rawValue | UInt(requestedIPABits) }
    public var vmType: VMType { VMType(rawValue: rawValue) }

    /// For realms: the top IPA bit, set in the unprotected (shared) alias of
    /// a protected address and clear in the protected range.
    public var unprotectedBit: UInt64 { 1 << UInt64(ipaBits - 1) }

    /// Whether `address` lies in the protected half of the IPA space
    /// (below the top IPA bit).
    public func isProtected(_ address: UInt64) -> Bool { address < unprotectedBit }

    public var description: String {
        let name: String
        switch kind {
        case .normal: name = "KVM_VM_TYPE_ARM_NORMAL"
        case .realm: name = "KVM_VM_TYPE_ARM_REALM"
        case .protected: name = "KVM_VM_TYPE_ARM_PROTECTED"
        }
        return "\(name) | KVM_VM_TYPE_ARM_IPA_SIZE(\(requestedIPABits)) = 0x\(String(rawValue, radix: 16))"
    }
}

extension KVMRequest {
    public static let armRMIPopulate = IoctlRequest(
        "KVM_ARM_RMI_POPULATE", .readWrite, 0xD7, size: MemoryLayout<ckvm_arm_rmi_populate>.size)
}

/// One KVM_ARM_RMI_POPULATE request as KVM reads and updates it.
public struct RealmPopulateRequest: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var sourceAddress: UInt64
    public var flags: UInt32
    /// Must be 0 (KVM refuses anything else with EINVAL).
    public var reserved: UInt32

    public init(base: UInt64, size: UInt64, sourceAddress: UInt64, flags: UInt32, reserved: UInt32 = 0) {
        self.base = base
        self.size = size
        self.sourceAddress = sourceAddress
        self.flags = flags
        self.reserved = reserved
    }
}

extension VirtualMachine {
    /// One KVM_ARM_RMI_POPULATE call: KVM may do part of the range, and
    /// advances `base`, `size` and `sourceAddress` past what it did (also when
    /// it fails).
    public func populateRealm(_ request: inout RealmPopulateRequest) throws {
        var raw = ckvm_arm_rmi_populate(base: request.base, size: request.size, source_uaddr: request.sourceAddress,
                                        flags: request.flags, reserved: request.reserved)
        // Sound: `raw` is the 32-byte struct KVM reads and writes back.
        defer { request = RealmPopulateRequest(base: raw.base, size: raw.size, sourceAddress: raw.source_uaddr, flags: raw.flags, reserved: raw.reserved) }
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.armRMIPopulate, &raw)
    }

    /// Copies `size` bytes from host memory at `source` into the realm's
    /// protected memory at `base` (a guest_memfd-backed memslot), sets it to
    /// RIPAS RAM and, with `measure`, extends the Realm Initial Measurement.
    /// The corresponding ioctl is KVM_ARM_RMI_POPULATE, called again while KVM
    /// reports part of the range done; a call that makes no progress is an
    /// error rather than a loop. `source` must point at `size` readable bytes.
    /// Returns the number of calls made.
    @discardableResult
    public func populateRealm(base: UInt64, size: UInt64, source: UnsafeRawPointer, measure: Bool) throws -> Int {
        var request = RealmPopulateRequest(base: base, size: size, sourceAddress: UInt64(UInt(bitPattern: source)),
                                           flags: measure ? RealmInterface.populateMeasure : 0)
        var calls = 0
        while request.size > 0 {
            let before = request.size
            try populateRealm(&request)
            calls += 1
            guard request.size < before else {
                throw KVMUsageError("KVM_ARM_RMI_POPULATE made no progress at 0x\(String(request.base, radix: 16)) (0x\(String(request.size, radix: 16)) bytes left)")
            }
        }
        return calls
    }
}
