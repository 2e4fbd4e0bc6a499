import CKVM
import Synchronization
import SystemPackage

/// A KVM virtual machine: owner of the VM file descriptor, factory of vCPUs and
/// guest_memfds, and the place memory slots are set.
public final class VirtualMachine: Sendable {
    /// The VM file descriptor, closed when this object goes away.
    public let fileDescriptor: Int32
    /// The type it was created with.
    public let type: VMType
    /// The system it came from (kept alive for the vCPU mmap size).
    public let system: KVMSystem
    /// Regions installed with `install`, by slot: kept alive while KVM maps them.
    let installedRegions = Mutex<[UInt32: MemoryRegion]>([:])

    init(fileDescriptor: Int32, type: VMType, system: KVMSystem) {
        self.fileDescriptor = fileDescriptor
        self.type = type
        self.system = system
    }

    // The VM fd closes first; the installed regions (and their memory) are
    // released after it, when the stored properties go.
    deinit { SystemCall.close(fileDescriptor) }

    /// The value of a capability for this VM (0 when absent). The corresponding
    /// ioctl is KVM_CHECK_EXTENSION on the VM fd; some capabilities (e.g.
    /// KVM_CAP_GUEST_MEMFD_FLAGS) depend on the VM type.
    public func checkExtension(_ capability: Capability) throws -> Int {
        Int(try SystemCall.ioctl(fileDescriptor, KVMRequest.checkExtension, value: UInt(capability.rawValue)))
    }

    /// Turns on a VM capability with up to four arguments. The corresponding
    /// ioctl is KVM_ENABLE_CAP on the VM fd.
    public func enableCapability(_ capability: Capability, arguments: [UInt64] = []) throws {
        guard arguments.count <= 4 else {
            throw KVMUsageError("KVM_ENABLE_CAP takes at most 4 arguments; \(capability) got \(arguments.count)")
        }
        var request = ckvm_enable_cap()
        request.cap = UInt32(bitPattern: capability.rawValue)
        // Sound: `args` is four UInt64s (32 bytes) inside `request`, and at most
        // four are stored, each at its own 8-byte offset.
        withUnsafeMutableBytes(of: &request.args) { raw in
            for (index, value) in arguments.enumerated() { raw.storeBytes(of: value, toByteOffset: 8 * index, as: UInt64.self) }
        }
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.enableCapability, &request)
    }

    /// The guest_memfd flags this VM accepts (KVM_CAP_GUEST_MEMFD_FLAGS).
    public func supportedGuestMemfdFlags() throws -> GuestMemfdFlags {
        GuestMemfdFlags(rawValue: UInt64(try checkExtension(.guestMemfdFlags)))
    }

    /// Sets, moves or deletes (size 0) a memory slot. The corresponding ioctl is
    /// KVM_SET_USER_MEMORY_REGION.
    public func setUserMemoryRegion(_ slot: MemorySlot) throws {
        var region = slot.region
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setUserMemoryRegion, &region)
    }

    /// Sets a memory slot that may be backed by a guest_memfd. The corresponding
    /// ioctl is KVM_SET_USER_MEMORY_REGION2.
    public func setUserMemoryRegion2(_ slot: MemorySlot) throws {
        var region = slot.region2
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setUserMemoryRegion2, &region)
    }

    /// Creates a guest_memfd of `size` bytes. The corresponding ioctl is
    /// KVM_CREATE_GUEST_MEMFD.
    public func createGuestMemfd(size: UInt64, flags: GuestMemfdFlags = []) throws -> GuestMemfd {
        var arguments = ckvm_create_guest_memfd()
        arguments.size = size
        arguments.flags = flags.rawValue
        let fd = try SystemCall.ioctl(fileDescriptor, KVMRequest.createGuestMemfd, &arguments)
        return GuestMemfd(fileDescriptor: fd, size: size, flags: flags)
    }

    /// Sets attributes (e.g. private) on a guest physical range. The corresponding
    /// ioctl is KVM_SET_MEMORY_ATTRIBUTES; only VM types with private memory accept it.
    public func setMemoryAttributes(address: UInt64, size: UInt64, attributes: MemoryAttributes) throws {
        var arguments = ckvm_memory_attributes(address: address, size: size, attributes: attributes.rawValue, flags: 0)
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setMemoryAttributes, &arguments)
    }

    /// Places the three-page TSS region Intel hosts need for real-mode guests.
    /// The corresponding ioctl is KVM_SET_TSS_ADDR.
    public func setTSSAddress(_ address: UInt64) throws {
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setTSSAddress, value: UInt(address))
    }

    /// Places the identity-map page Intel hosts need for real-mode guests. The
    /// corresponding ioctl is KVM_SET_IDENTITY_MAP_ADDR.
    public func setIdentityMapAddress(_ address: UInt64) throws {
        var value = address
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setIdentityMapAddress, &value)
    }

    /// Creates a vCPU and maps its run area. The corresponding ioctl is
    /// KVM_CREATE_VCPU.
    public func createVCPU(id: Int = 0) throws -> VCPU {
        let mmapSize = try system.vcpuMmapSize()
        let fd = try SystemCall.ioctl(fileDescriptor, KVMRequest.createVCPU, value: UInt(id))
        do {
            return try VCPU(fileDescriptor: fd, id: id, runSize: mmapSize, vm: self)
        } catch {
            SystemCall.close(fd)
            throw error
        }
    }
}
