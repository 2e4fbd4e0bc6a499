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
        } catch let error as SystemCallError {
            throw SEVCommandError(command: command, errno: error.errno, firmwareError: request.error)
        }
    }

    /// Runs `command` with `data` (a C structure of the command's layout) by address.
    private func encryptionOperation<Data>(_ command: SEVCommand, _ data: inout Data, sevFileDescriptor: Int32) throws {
        try withUnsafeMutableBytes(of: &data) {
            // Sound: the buffer is exactly the command's structure and lives for the call.
            try encryptionOperation(command, data: $0.baseAddress, sevFileDescriptor: sevFileDescriptor)
        }
    }

    /// KVM_SEV_INIT2 with `struct kvm_sev_init`.
    public func sevInitialize(_ parameters: SEVInitParameters, sevFileDescriptor: Int32) throws {
        var data = ckvm_sev_init()
        data.vmsa_features = parameters.vmsaFeatures
        data.flags = parameters.flags
        data.ghcb_version = parameters.ghcbVersion
        try encryptionOperation(.initialize2, &data, sevFileDescriptor: sevFileDescriptor)
    }

    /// KVM_SEV_SNP_LAUNCH_START with `struct kvm_sev_snp_launch_start`.
    public func snpLaunchStart(_ parameters: SNPLaunchStartParameters, sevFileDescriptor: Int32) throws {
        var data = ckvm_sev_snp_launch_start()
        data.policy = parameters.policy
        data.flags = parameters.flags
        try parameters.guestOSVisibleWorkarounds.copy(into: &data.gosvw, what: "gosvw")
        try encryptionOperation(.snpLaunchStart, &data, sevFileDescriptor: sevFileDescriptor)
    }

    /// KVM_SEV_SNP_LAUNCH_UPDATE with `struct kvm_sev_snp_launch_update`. KVM
    /// advances `gfn_start`, `uaddr` and `len` as it goes; the final values are
    /// returned so a caller can resume after EAGAIN.
    @discardableResult
    public func snpLaunchUpdate(_ parameters: SNPLaunchUpdateParameters, sevFileDescriptor: Int32) throws -> SNPLaunchUpdateParameters {
        var data = ckvm_sev_snp_launch_update()
        data.gfn_start = parameters.guestFrameNumber
        data.uaddr = parameters.userspaceAddress
        data.len = parameters.length
        data.type = parameters.pageType
        data.flags = parameters.flags
        try encryptionOperation(.snpLaunchUpdate, &data, sevFileDescriptor: sevFileDescriptor)
        return SNPLaunchUpdateParameters(guestFrameNumber: data.gfn_start, userspaceAddress: data.uaddr, length: data.len,
                                         pageType: data.type, flags: data.flags)
    }

    /// KVM_SEV_SNP_LAUNCH_FINISH with `struct kvm_sev_snp_launch_finish`.
    public func snpLaunchFinish(_ parameters: SNPLaunchFinishParameters, sevFileDescriptor: Int32) throws {
        var data = ckvm_sev_snp_launch_finish()
        data.id_block_uaddr = parameters.idBlockAddress
        data.id_auth_uaddr = parameters.idAuthAddress
        data.id_block_en = parameters.idBlockEnabled ? 1 : 0
        data.auth_key_en = parameters.authorKeyEnabled ? 1 : 0
        data.vcek_disabled = parameters.vcekDisabled ? 1 : 0
        data.flags = parameters.flags
        try parameters.hostData.copy(into: &data.host_data, what: "host_data")
        try encryptionOperation(.snpLaunchFinish, &data, sevFileDescriptor: sevFileDescriptor)
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

/// The data of KVM_SEV_INIT2 (`struct kvm_sev_init`).
public struct SEVInitParameters: Equatable, Sendable {
    /// SEV_FEATURES bits for the VMSA (`vmsa_features`).
    public var vmsaFeatures: UInt64
    public var flags: UInt32
    /// The GHCB protocol version; 0 lets KVM choose.
    public var ghcbVersion: UInt16

    public init(vmsaFeatures: UInt64 = 0, flags: UInt32 = 0, ghcbVersion: UInt16 = 0) {
        self.vmsaFeatures = vmsaFeatures
        self.flags = flags
        self.ghcbVersion = ghcbVersion
    }
}

/// The data of KVM_SEV_SNP_LAUNCH_START (`struct kvm_sev_snp_launch_start`).
public struct SNPLaunchStartParameters: Equatable, Sendable {
    /// The guest policy.
    public var policy: UInt64
    /// Guest OS visible workarounds (`gosvw`), at most 16 bytes.
    public var guestOSVisibleWorkarounds: [UInt8]
    public var flags: UInt16

    public init(policy: UInt64, guestOSVisibleWorkarounds: [UInt8] = [], flags: UInt16 = 0) {
        self.policy = policy
        self.guestOSVisibleWorkarounds = guestOSVisibleWorkarounds
        self.flags = flags
    }
}

/// The data of KVM_SEV_SNP_LAUNCH_UPDATE (`struct kvm_sev_snp_launch_update`).
public struct SNPLaunchUpdateParameters: Equatable, Sendable {
    /// The first guest frame (`gfn_start`).
    public var guestFrameNumber: UInt64
    /// Where the pages' contents are in this process (`uaddr`).
    public var userspaceAddress: UInt64
    /// Bytes to add (`len`), a multiple of 4 KiB.
    public var length: UInt64
    /// The SNP page type (`type`).
    public var pageType: UInt8
    public var flags: UInt16

    public init(guestFrameNumber: UInt64, userspaceAddress: UInt64, length: UInt64, pageType: UInt8, flags: UInt16 = 0) {
        self.guestFrameNumber = guestFrameNumber
        self.userspaceAddress = userspaceAddress
        self.length = length
        self.pageType = pageType
        self.flags = flags
    }
}

/// The data of KVM_SEV_SNP_LAUNCH_FINISH (`struct kvm_sev_snp_launch_finish`).
public struct SNPLaunchFinishParameters: Equatable, Sendable {
    public var idBlockAddress: UInt64
    public var idAuthAddress: UInt64
    public var idBlockEnabled: Bool
    public var authorKeyEnabled: Bool
    public var vcekDisabled: Bool
    /// Host data bound into the attestation report, at most 32 bytes.
    public var hostData: [UInt8]
    public var flags: UInt16

    public init(idBlockAddress: UInt64 = 0, idAuthAddress: UInt64 = 0, idBlockEnabled: Bool = false,
                authorKeyEnabled: Bool = false, vcekDisabled: Bool = false, hostData: [UInt8] = [], flags: UInt16 = 0) {
        self.idBlockAddress = idBlockAddress
        self.idAuthAddress = idAuthAddress
        self.idBlockEnabled = idBlockEnabled
        self.authorKeyEnabled = authorKeyEnabled
        self.vcekDisabled = vcekDisabled
        self.hostData = hostData
        self.flags = flags
    }
}

extension Array where Element == UInt8 {
    /// Copies the bytes into a fixed-size C array field (imported as a tuple),
    /// refusing more bytes than it holds.
    func copy<Field>(into field: inout Field, what: String) throws {
        let capacity = MemoryLayout<Field>.size
        guard count <= capacity else { throw KVMUsageError("\(what) holds at most \(capacity) bytes, not \(count)") }
        Swift.withUnsafeMutableBytes(of: &field) { $0.copyBytes(from: self) }
    }
}
