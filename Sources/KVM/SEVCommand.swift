import CKVM
import SystemPackage

/// A SEV / SEV-SNP command of KVM_MEMORY_ENCRYPT_OP (`enum sev_cmd_id`).
public struct SEVCommand: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public let name: String

    public init(_ rawValue: UInt32, name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    /// KVM_SEV_INIT2: initialise SEV state of a VM created with a SEV VM type.
    public static let initialize2 = SEVCommand(22, name: "KVM_SEV_INIT2")
    /// KVM_SEV_SNP_LAUNCH_START: create the guest context in firmware.
    public static let snpLaunchStart = SEVCommand(100, name: "KVM_SEV_SNP_LAUNCH_START")
    /// KVM_SEV_SNP_LAUNCH_UPDATE: encrypt and measure guest pages.
    public static let snpLaunchUpdate = SEVCommand(101, name: "KVM_SEV_SNP_LAUNCH_UPDATE")
    /// KVM_SEV_SNP_LAUNCH_FINISH: finalise the launch measurement.
    public static let snpLaunchFinish = SEVCommand(102, name: "KVM_SEV_SNP_LAUNCH_FINISH")
    /// KVM_SEV_SNP_ENABLE_REQ_CERTS: exit to userspace with KVM_EXIT_SNP_REQ_CERTS
    /// on extended guest requests (before any vCPU exists).
    public static let snpEnableRequestCertificates = SEVCommand(103, name: "KVM_SEV_SNP_ENABLE_REQ_CERTS")

    public var description: String { name }
}

/// A failed SEV command: the ioctl's errno and, when the firmware ran it, the
/// firmware status code (`kvm_sev_cmd.error`).
public struct SEVCommandError: Error, Equatable, CustomStringConvertible, Sendable {
    public let command: SEVCommand
    public let errno: Errno
    public let firmwareError: UInt32

    public init(command: SEVCommand, errno: Errno, firmwareError: UInt32) {
        self.command = command
        self.errno = errno
        self.firmwareError = firmwareError
    }

    public var description: String {
        var text = "KVM_MEMORY_ENCRYPT_OP(\(command.name)) failed: \(errno.symbolicName) (\(errno.description))"
        if firmwareError != 0 { text += ", firmware status 0x\(String(firmwareError, radix: 16))" }
        return text
    }
}

extension VirtualMachine {
    /// Runs one SEV command on this VM. The corresponding ioctl is
    /// KVM_MEMORY_ENCRYPT_OP with a `struct kvm_sev_cmd`.
    ///
    /// - Parameters:
    ///   - command: the command id.
    ///   - data: the command's own structure, or nil for commands without one; its
    ///     layout must match `command` (the typed methods below guarantee that).
    ///   - sevFileDescriptor: an open `/dev/sev`, which KVM uses to reach firmware.
    public func encryptionOperation(
        _ command: SEVCommand, data: UnsafeMutableRawPointer?, sevFileDescriptor: Int32
    ) throws {
        var request = ckvm_sev_cmd(
            id: command.rawValue, pad0: 0, data: UInt64(UInt(bitPattern: data)), error: 0,
            sev_fd: UInt32(bitPattern: sevFileDescriptor))
        do {
            // Sound: `request` is a kvm_sev_cmd; its `data` points at memory the
            // caller keeps alive for the duration of this call.
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.memoryEncryptOperation, &request)
        } catch let error as KVMError {
            throw SEVCommandError(command: command, errno: error.errno, firmwareError: request.error)
        }
    }

    /// KVM_SEV_INIT2 with `struct kvm_sev_init`.
    public func sevInitialize(_ parameters: ckvm_sev_init, sevFileDescriptor: Int32) throws {
        var data = parameters
        try withUnsafeMutableBytes(of: &data) {
            try encryptionOperation(.initialize2, data: $0.baseAddress, sevFileDescriptor: sevFileDescriptor)
        }
    }

    /// KVM_SEV_SNP_LAUNCH_START with `struct kvm_sev_snp_launch_start`.
    public func snpLaunchStart(_ parameters: ckvm_sev_snp_launch_start, sevFileDescriptor: Int32) throws {
        var data = parameters
        try withUnsafeMutableBytes(of: &data) {
            try encryptionOperation(.snpLaunchStart, data: $0.baseAddress, sevFileDescriptor: sevFileDescriptor)
        }
    }

    /// KVM_SEV_SNP_LAUNCH_UPDATE with `struct kvm_sev_snp_launch_update`. KVM
    /// advances `gfn_start`, `uaddr` and `len` as it goes; the final values are
    /// returned so a caller can resume after EAGAIN.
    @discardableResult
    public func snpLaunchUpdate(_ parameters: ckvm_sev_snp_launch_update, sevFileDescriptor: Int32) throws -> ckvm_sev_snp_launch_update {
        var data = parameters
        try withUnsafeMutableBytes(of: &data) {
            try encryptionOperation(.snpLaunchUpdate, data: $0.baseAddress, sevFileDescriptor: sevFileDescriptor)
        }
        return data
    }

    /// KVM_SEV_SNP_LAUNCH_FINISH with `struct kvm_sev_snp_launch_finish`.
    public func snpLaunchFinish(_ parameters: ckvm_sev_snp_launch_finish, sevFileDescriptor: Int32) throws {
        var data = parameters
        try withUnsafeMutableBytes(of: &data) {
            try encryptionOperation(.snpLaunchFinish, data: $0.baseAddress, sevFileDescriptor: sevFileDescriptor)
        }
    }

    /// KVM_SEV_SNP_ENABLE_REQ_CERTS (no data); must precede vCPU creation.
    public func snpEnableCertificateRequests(sevFileDescriptor: Int32) throws {
        try encryptionOperation(.snpEnableRequestCertificates, data: nil, sevFileDescriptor: sevFileDescriptor)
    }
}

extension KVMSystem {
    /// Device attribute group KVM_X86_GRP_SEV.
    public static let sevAttributeGroup: UInt32 = 1
    /// Attribute KVM_X86_SEV_SNP_REQ_CERTS in that group.
    public static let snpRequestCertificatesAttribute: UInt64 = 2

    /// Whether KVM can forward SNP certificate requests to userspace
    /// (KVM_HAS_DEVICE_ATTR on group KVM_X86_GRP_SEV, attribute KVM_X86_SEV_SNP_REQ_CERTS).
    public func supportsSNPCertificateRequests() throws -> Bool {
        try hasDeviceAttribute(group: Self.sevAttributeGroup, attribute: Self.snpRequestCertificatesAttribute)
    }
}
