import GuestMemory
import KVM
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a host offers for SEV-SNP guests, read without touching any SNP call.
public struct SNPHostSupport: Sendable {
    /// KVM_CAP_VM_TYPES includes KVM_X86_SNP_VM.
    public let snpVMType: Bool
    /// The raw KVM_CAP_VM_TYPES bit mask.
    public let vmTypeMask: Int
    /// `/dev/sev` exists and opens (the ccp driver with SEV firmware).
    public let sevDevice: Result<Void, Errno>
    /// KVM_X86_SEV_SNP_REQ_CERTS is advertised on /dev/kvm.
    public let certificateRequests: Bool

    public static let sevDevicePath = "/dev/sev"

    /// Reads the host's support from KVM capabilities, the SEV device attribute
    /// and `/dev/sev`.
    public init(kvm: KVMSystem) throws {
        vmTypeMask = try kvm.checkExtension(.vmTypes)
        snpVMType = vmTypeMask & (1 << Int(VMType.sevSNP.rawValue)) != 0
        certificateRequests = try kvm.supportsSNPCertificateRequests()
        let fd = open(Self.sevDevicePath, O_RDWR | O_CLOEXEC)
        if fd >= 0 {
            close(fd)
            sevDevice = .success(())
        } else {
            sevDevice = .failure(Errno(rawValue: errno))
        }
    }

    /// What is missing for an SNP launch, one sentence each; empty when nothing is.
    public var missingForLaunch: [String] {
        var missing: [String] = []
        if !snpVMType {
            missing.append("KVM does not offer VM type KVM_X86_SNP_VM (4): KVM_CAP_VM_TYPES is 0x\(String(vmTypeMask, radix: 16))")
        }
        if case .failure(let error) = sevDevice {
            let cause = error == .noSuchFileOrDirectory
                ? "does not exist (no SEV firmware driver: ccp/sev not loaded, or no SEV hardware)"
                : "cannot be opened: \(error.symbolicName) (\(error))"
            missing.append("\(Self.sevDevicePath) \(cause)")
        }
        return missing
    }
}

/// Why an SNP launch could not proceed.
public enum SNPLaunchError: Error, CustomStringConvertible {
    /// The host lacks what SNP needs; nothing was asked of KVM's SEV code.
    case unavailable([String])
    /// Certificate requests cannot be forwarded to userspace on this host.
    case certificateRequestsUnsupported
    /// A parameter the firmware would refuse.
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .unavailable(let missing):
            return "SEV-SNP is not available on this host: " + missing.joined(separator: "; ")
        case .certificateRequestsUnsupported:
            return "this host's KVM does not advertise KVM_X86_SEV_SNP_REQ_CERTS (KVM_HAS_DEVICE_ATTR group KVM_X86_GRP_SEV, attribute 2): certificate requests stay inside KVM and the certificate service cannot be enabled"
        case .invalidArgument(let message): return message
        }
    }
}

/// SNP page types for KVM_SEV_SNP_LAUNCH_UPDATE.
public enum SNPPageType: UInt8, Sendable, CaseIterable {
    case normal = 1
    case zero = 3
    case unmeasured = 4
    case secrets = 5
    case cpuid = 6
}

/// An SNP guest policy (SEV-SNP firmware ABI, "Guest policy").
public struct SNPGuestPolicy: Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 17 is reserved and must be one.
    public static let reservedMustBeOne: UInt64 = 1 << 17
    public static let allowSMT: UInt64 = 1 << 16
    public static let allowDebug: UInt64 = 1 << 19

    /// ABI 0.0, SMT allowed, no debugging, no migration agent.
    public static let standard = SNPGuestPolicy(rawValue: reservedMustBeOne | allowSMT)
}

/// An SNP VM being launched: the VM of type KVM_X86_SNP_VM, its private memory
/// in a guest_memfd, and `/dev/sev` for the firmware. Each step is one SEV command.
///
/// The order is the firmware's: `init` (VM creation, KVM_SEV_INIT2, the private
/// memory slot), optionally `enableCertificateRequests()`, `start`, `update` for
/// each measured range, then `finish`; vCPUs are created between update and finish.
public final class SNPLaunch: SNPLaunchOperations {
    public let virtualMachine: VirtualMachine
    public let privateMemory: GuestMemfd
    public let sharedMemory: MemoryMapping
    public let memorySize: UInt64
    private let sevFileDescriptor: Int32

    /// Creates the VM and its memory. Checks the host first and throws
    /// `SNPLaunchError.unavailable` naming every missing piece before any SNP call.
    public init(kvm: KVMSystem, memorySize: UInt64, vmsaFeatures: UInt64 = 0) throws {
        guard memorySize > 0, memorySize % 4096 == 0 else {
            throw SNPLaunchError.invalidArgument("SNP guest memory must be a positive multiple of 4 KiB, not \(memorySize)")
        }
        let support = try SNPHostSupport(kvm: kvm)
        let missing = support.missingForLaunch
        guard missing.isEmpty else { throw SNPLaunchError.unavailable(missing) }

        let sev = open(SNPHostSupport.sevDevicePath, O_RDWR | O_CLOEXEC)
        guard sev >= 0 else { throw SystemCallError.current("open(\(SNPHostSupport.sevDevicePath))") }
        sevFileDescriptor = sev
        do {
            virtualMachine = try kvm.createVirtualMachine(type: .sevSNP)
            try virtualMachine.sevInitialize(SEVInitParameters(vmsaFeatures: vmsaFeatures), sevFileDescriptor: sev)
            privateMemory = try virtualMachine.createGuestMemfd(size: memorySize)
            sharedMemory = try MemoryMapping(anonymousSize: Int(memorySize), sharing: .shared)
            try virtualMachine.install(MemoryRegion(slot: 0, start: 0, mapping: sharedMemory, guestMemfd: privateMemory))
            self.memorySize = memorySize
        } catch {
            close(sev)
            throw error
        }
    }

    deinit { close(sevFileDescriptor) }

    /// KVM_SEV_SNP_ENABLE_REQ_CERTS, after checking the host advertises it.
    public func enableCertificateRequests(kvm: KVMSystem) throws {
        guard try kvm.supportsSNPCertificateRequests() else { throw SNPLaunchError.certificateRequestsUnsupported }
        try virtualMachine.snpEnableCertificateRequests(sevFileDescriptor: sevFileDescriptor)
    }

    /// KVM_SEV_SNP_LAUNCH_START.
    public func start(policy: SNPGuestPolicy = .standard) throws {
        guard policy.rawValue & SNPGuestPolicy.reservedMustBeOne != 0 else {
            throw SNPLaunchError.invalidArgument("SNP policy 0x\(String(policy.rawValue, radix: 16)) lacks reserved bit 17, which must be one")
        }
        try virtualMachine.snpLaunchStart(SNPLaunchStartParameters(policy: policy.rawValue), sevFileDescriptor: sevFileDescriptor)
    }

    /// KVM_SEV_SNP_LAUNCH_UPDATE of `[guestPhysicalAddress, +length)` from the
    /// shared memory's contents, as pages of `type`.
    public func update(guestPhysicalAddress: UInt64, length: UInt64, type: SNPPageType) throws {
        guard guestPhysicalAddress % 4096 == 0, length % 4096 == 0, length > 0,
              guestPhysicalAddress <= memorySize, length <= memorySize - guestPhysicalAddress else {
            throw SNPLaunchError.invalidArgument(
                "SNP launch update 0x\(String(guestPhysicalAddress, radix: 16)) +0x\(String(length, radix: 16)) must be page-aligned and inside the \(memorySize)-byte guest")
        }
        var parameters = SNPLaunchUpdateParameters(guestFrameNumber: guestPhysicalAddress / 4096,
                                                   userspaceAddress: sharedMemory.address + guestPhysicalAddress,
                                                   length: length, pageType: type.rawValue)
        // KVM may return before the whole range is done, with gfn_start, uaddr
        // and len naming the rest; it is called again until len is 0.
        while parameters.length > 0 {
            let remaining = try virtualMachine.snpLaunchUpdate(parameters, sevFileDescriptor: sevFileDescriptor)
            guard remaining.length < parameters.length else {
                throw SNPLaunchError.invalidArgument("KVM_SEV_SNP_LAUNCH_UPDATE at GFN 0x\(String(parameters.guestFrameNumber, radix: 16)) made no progress (len 0x\(String(remaining.length, radix: 16)) left)")
            }
            parameters = remaining
        }
    }

    /// KVM_SET_MEMORY_ATTRIBUTES PRIVATE over `range`: SNP_LAUNCH_UPDATE
    /// accepts only private pages.
    public func setPrivate(_ range: Range<UInt64>) throws {
        try virtualMachine.setMemoryAttributes(address: range.lowerBound, size: UInt64(range.count), attributes: .private)
    }

    /// `length` bytes of the launch source buffer at `guestPhysicalAddress`
    /// (where KVM copies back a CPUID page the firmware rejected).
    public func sourceContents(at guestPhysicalAddress: UInt64, length: Int) -> [UInt8] {
        // Sound: the range is checked to lie inside the mapping, which lives as long as `self`.
        precondition(length >= 0 && guestPhysicalAddress + UInt64(length) <= UInt64(sharedMemory.size), "inside the launch source buffer")
        return [UInt8](UnsafeRawBufferPointer(start: sharedMemory.baseAddress + Int(guestPhysicalAddress), count: length))
    }

    /// KVM_SEV_SNP_LAUNCH_FINISH with the given host data (at most 32 bytes).
    public func finish(hostData: [UInt8]) throws {
        guard hostData.count <= 32 else {
            throw SNPLaunchError.invalidArgument("SNP host data is at most 32 bytes, not \(hostData.count)")
        }
        try virtualMachine.snpLaunchFinish(SNPLaunchFinishParameters(hostData: hostData), sevFileDescriptor: sevFileDescriptor)
    }
}

/// The SEV calls of an SNP launch, in the order the firmware takes them:
/// `SNPLaunch` makes them on a host with SNP; tests record them.
public protocol SNPLaunchOperations: AnyObject {
    /// KVM_SET_MEMORY_ATTRIBUTES PRIVATE.
    func setPrivate(_ range: Range<UInt64>) throws
    /// KVM_SEV_SNP_LAUNCH_START.
    func start(policy: SNPGuestPolicy) throws
    /// KVM_SEV_SNP_LAUNCH_UPDATE of the whole range, however many calls KVM needs.
    func update(guestPhysicalAddress: UInt64, length: UInt64, type: SNPPageType) throws
    /// KVM_SEV_SNP_LAUNCH_FINISH.
    func finish(hostData: [UInt8]) throws
    /// The launch source buffer's bytes (guest memory as the VMM wrote it).
    func sourceContents(at guestPhysicalAddress: UInt64, length: Int) -> [UInt8]
}
