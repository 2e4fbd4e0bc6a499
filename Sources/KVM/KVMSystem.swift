import CKVM
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The KVM subsystem, opened through `/dev/kvm`: the owner of the system file
/// descriptor and the factory of virtual machines.
public final class KVMSystem: Sendable {
    /// The open `/dev/kvm` descriptor, closed when this object goes away.
    public let fileDescriptor: Int32
    /// The path that was opened.
    public let path: String

    /// The only API version KVM has ever reported; anything else is refused.
    public static let expectedAPIVersion = 12

    /// Where the KVM device usually is.
    public static let defaultPath = "/dev/kvm"

    /// Whether this process may open the KVM device read-write (access(2)),
    /// without opening it: how tests and tools decide to SKIP rather than fail.
    public static func isAvailable(at path: String = defaultPath) -> Bool {
        access(path, R_OK | W_OK) == 0
    }

    /// Opens the KVM device and checks its API version.
    public init(path: String = KVMSystem.defaultPath) throws {
        self.path = path
        self.fileDescriptor = try SystemCall.open(path)
        // From here on a throw runs deinit, which closes the descriptor.
        let version = try apiVersion()
        guard version == Self.expectedAPIVersion else {
            throw KVMUsageError("\(path) reports KVM API version \(version); Kestrel needs \(Self.expectedAPIVersion)")
        }
    }

    deinit { SystemCall.close(fileDescriptor) }

    /// The KVM API version. The corresponding ioctl is KVM_GET_API_VERSION.
    public func apiVersion() throws -> Int {
        Int(try SystemCall.ioctl(fileDescriptor, KVMRequest.getAPIVersion))
    }

    /// The value KVM reports for a capability (0 when absent). The corresponding
    /// ioctl is KVM_CHECK_EXTENSION on the system fd.
    public func checkExtension(_ capability: Capability) throws -> Int {
        Int(try SystemCall.ioctl(fileDescriptor, KVMRequest.checkExtension, value: UInt(capability.rawValue)))
    }

    /// The VM types this host can create (KVM_CAP_VM_TYPES); only the default
    /// type when the capability is missing.
    public func supportedVMTypes() throws -> [VMType] {
        let mask = try checkExtension(.vmTypes)
        return mask == 0 ? [.default] : VMType.types(inMask: mask)
    }

    /// Creates a virtual machine. The corresponding ioctl is KVM_CREATE_VM.
    public func createVirtualMachine(type: VMType = .default) throws -> VirtualMachine {
        let fd = try SystemCall.ioctl(fileDescriptor, KVMRequest.createVM, value: type.rawValue)
        return VirtualMachine(fileDescriptor: fd, type: type, system: self)
    }

    /// The size of the shared `kvm_run` area of each vCPU. The corresponding ioctl
    /// is KVM_GET_VCPU_MMAP_SIZE.
    public func vcpuMmapSize() throws -> Int {
        Int(try SystemCall.ioctl(fileDescriptor, KVMRequest.getVCPUMmapSize))
    }

    /// The CPUID leaves KVM can expose to a guest. The corresponding ioctl is
    /// KVM_GET_SUPPORTED_CPUID.
    public func supportedCPUID() throws -> CPUIDTable {
        try CPUIDTable.fetch(fileDescriptor: fileDescriptor, request: KVMRequest.getSupportedCPUID)
    }

    /// The MSRs KVM saves and restores for a vCPU. The corresponding ioctl is
    /// KVM_GET_MSR_INDEX_LIST.
    public func msrIndexList() throws -> [UInt32] {
        try fetchMSRList(KVMRequest.getMSRIndexList)
    }

    /// The feature MSRs (read-only capability MSRs) KVM reports. The corresponding
    /// ioctl is KVM_GET_MSR_FEATURE_INDEX_LIST.
    public func featureMSRIndexList() throws -> [UInt32] {
        try fetchMSRList(KVMRequest.getMSRFeatureIndexList)
    }

    /// Whether a device attribute exists on `/dev/kvm` (e.g. group KVM_X86_GRP_SEV).
    /// The corresponding ioctl is KVM_HAS_DEVICE_ATTR; ENXIO means "no", and so
    /// does ENOTTY (a kernel without the ioctl on /dev/kvm).
    public func hasDeviceAttribute(group: UInt32, attribute: UInt64) throws -> Bool {
        var attr = ckvm_device_attr(flags: 0, group: group, attr: attribute, addr: 0)
        do {
            _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.hasDeviceAttribute, &attr)
            return true
        } catch let error as SystemCallError where error.errno == .noSuchAddressOrDevice || error.errno == .inappropriateIOCTLForDevice {
            return false
        }
    }

    /// Both MSR lists use the same protocol: ask with a count of 0, get E2BIG and
    /// the real count, then ask again with a buffer of that size.
    private func fetchMSRList(_ request: IoctlRequest) throws -> [UInt32] {
        var header = ckvm_msr_list_header(nmsrs: 0)
        do {
            _ = try SystemCall.ioctl(fileDescriptor, request, &header)
            return []
        } catch let error as SystemCallError where error.errno == .argListTooLong {
            // header.nmsrs now holds the count.
        }
        let count = Int(header.nmsrs)
        let headerSize = MemoryLayout<ckvm_msr_list_header>.size
        let buffer = UnsafeMutableRawPointer.allocate(
            byteCount: headerSize + count * MemoryLayout<UInt32>.stride, alignment: 8)
        defer { buffer.deallocate() }
        // Sound: the buffer holds the header plus `count` indices, as the kernel expects.
        buffer.storeBytes(of: UInt32(count), as: UInt32.self)
        _ = try SystemCall.ioctl(fileDescriptor, request, buffer)
        let returned = Int(buffer.load(as: UInt32.self))
        return (0..<min(returned, count)).map {
            buffer.load(fromByteOffset: headerSize + $0 * 4, as: UInt32.self)
        }
    }
}
