import Boot
import Confidential
import Glibc
import GuestMemory
import HostSystem
import KVM

/// `kestrel run --confidential realm`: the realm a machine configuration
/// describes, checked against the realm memory rules and planned before
/// anything runs. Kestrel has no arm64 boot path yet (no device tree, no
/// GIC and PL011 wiring), so a realm is planned and refused, never started;
/// `--dry-run` prints the plan on any host.
public enum RealmMachine {
    /// The arm64 layout: RAM from 1 GiB (as QEMU's virt machine), the
    /// in-kernel GICv3, a PL011 and the virtio-mmio windows below it.
    public static let ramBase: UInt64 = 0x4000_0000
    public static let gicDistributor: UInt64 = 0x0800_0000
    public static let gicRedistributors: UInt64 = 0x080A_0000
    public static let uartBase: UInt64 = 0x0900_0000
    public static let virtioBase: UInt64 = 0x0A00_0000
    /// Room kept for the device tree at the top of RAM.
    public static let deviceTreeSize: UInt64 = 2 << 20
    public static let defaultIPABits: UInt8 = 40

    /// The realm `configuration` asks for, with an IPA size of `ipaBits` and
    /// private memory from `privateMemory` (guest_memfd unless the user asked
    /// for anonymous memory). Reads the kernel's header and the initrd's
    /// size; throws `ConfigurationError` for files it cannot use and
    /// `RealmRuleViolation` (through `RealmLaunchPlan`) for a configuration a
    /// realm cannot run with.
    public static func plan(_ configuration: MachineConfiguration, ipaBits: UInt8 = defaultIPABits,
                            privateMemory: RealmConfiguration.PrivateBacking = .guestMemfd) throws -> RealmLaunchPlan {
        let type: ARM64MachineType
        do { type = try ARM64MachineType(.realm, ipaBits: ipaBits) } catch { throw ConfigurationError("--ipa-bits: \(error)") }
        let kernelSize = try fileSize(configuration.kernelPath, what: "kernel")
        let header: ARM64Image
        do {
            header = try ARM64Image(header: try readPrefix(configuration.kernelPath, ARM64Image.headerSize), fileSize: kernelSize)
        } catch let error as BootError {
            throw ConfigurationError("the kernel must be an arm64 Image: \(configuration.kernelPath): \(error)")
        }
        let ramEnd = ramBase + configuration.memorySize
        let kernelAddress = ramBase + ARM64Image.baseAlignment + header.textOffset
        var payloads = [RealmConfiguration.Payload(name: "kernel Image", address: kernelAddress, size: kernelSize)]
        let kernelEnd = align(kernelAddress + header.imageSize, ARM64Image.baseAlignment)
        if let initrd = configuration.initrdPath {
            payloads.append(.init(name: "initrd", address: kernelEnd, size: try fileSize(initrd, what: "initrd")))
        }
        let deviceTree = ramEnd - deviceTreeSize
        payloads.append(.init(name: "device tree (Kestrel does not build arm64 device trees yet)", address: deviceTree, size: 64 << 10))
        var devices: [RealmConfiguration.Device] = [.init(name: "PL011 console", range: uartBase..<(uartBase + 0x1000))]
        let virtio = configuration.drives.map { "virtio-blk \($0.id)" } + configuration.networkInterfaces.map { "virtio-net \($0.id)" }
            + (configuration.vsock.map { _ in ["virtio-vsock"] } ?? []) + (configuration.entropy ? ["virtio-rng"] : [])
        for (index, name) in virtio.enumerated() {
            let base = virtioBase + UInt64(index) * 0x1000
            devices.append(.init(name: name, range: base..<(base + 0x1000)))
        }
        let realm = RealmConfiguration(
            machineType: type,
            ram: [.init(name: "guest RAM", range: ramBase..<ramEnd, privateBacking: privateMemory, sharedMapping: .shared)],
            devices: devices, payloads: payloads, vcpuCount: configuration.vcpuCount, entry: kernelAddress, entryArgument: deviceTree)
        return try RealmLaunchPlan(realm)
    }

    /// Why this host cannot launch the planned realm: the architecture, the
    /// capability, or (on a capable host) Kestrel's missing arm64 boot path.
    public static func refusal(architecture: String, kvm: KVMSystem?) -> String {
        RealmHostSupport.missing(architecture: architecture, kvm: kvm)
            ?? "this host offers realms, but kestrel run has no arm64 boot path yet (device tree, GIC and console wiring); nothing was started"
    }

    static func align(_ value: UInt64, _ alignment: UInt64) -> UInt64 { (value + alignment - 1) / alignment * alignment }

    static func fileSize(_ path: String, what: String) throws -> UInt64 {
        var status = stat()
        guard stat(path, &status) == 0 else { throw ConfigurationError("cannot read the \(what) \(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFREG else { throw ConfigurationError("cannot read the \(what) \(path): not a regular file") }
        return UInt64(status.st_size)
    }

    static func readPrefix(_ path: String, _ count: Int) throws -> [UInt8] {
        let fd: Int32
        do { fd = try HostFile.open(path, O_RDONLY, allowed: [.regular], what: "the kernel") } catch let error as HostFileError {
            throw ConfigurationError(error.description)
        }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, count) }
        return Array(bytes.prefix(max(got, 0)))
    }
}
