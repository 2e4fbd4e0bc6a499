import Boot
import Decompression
import FoundationEssentials

/// A kernel ready for the lab: a bzImage and the KVM modules it needs,
/// decompressed, with their load order for AMD (kvm_amd) and Intel (kvm_intel) hosts.
public struct LabKernel: Codable, Equatable, Sendable {
    /// The name the user chose it by ("6.1", "7.2") or "custom".
    public var name: String
    /// The kernel release (`uname -r`), e.g. "6.1.0-50-cloud-amd64".
    public var release: String
    /// The Debian packages it came from, with versions; empty for a user's kernel.
    public var packages: [String]
    /// The directory holding `vmlinuz`, `modules/` and `kernel.json`.
    public var directory: String
    /// insmod order for an AMD (SVM) host and an Intel (VMX) host.
    public var amdModules: [String]
    public var intelModules: [String]
    /// More modules for the L1, loaded after KVM when present: the loop device
    /// (to read back an L2's disk image), tun (taps for virtio-net) and
    /// vhost_vsock (QEMU's vsock, the baseline in scripts/virtio-bench.py).
    public var hostModules: [String]?
    /// The virtio drivers an L2 guest of this kernel needs, in insmod order
    /// (Debian builds them as modules). Nil in a cache from before they were kept.
    public var guestModules: [String]?
    /// The host and guest modules looked for when this kernel was prepared.
    /// A cache prepared with another list is prepared again, so that a module
    /// added to the lists reaches kernels fetched before it was.
    public var modulesLookedFor: [String]?

    public var bzImage: String { directory + "/vmlinuz" }
    public func modulePath(_ name: String) -> String { directory + "/modules/\(name).ko" }

    /// The modules the lab loads: KVM for both vendors, with their dependencies.
    public static let wantedModules = (amd: "kvm_amd", intel: "kvm_intel")
    /// Wanted in the L1 when the kernel has them as modules.
    public static let wantedHostModules = ["loop", "tun", "vhost_vsock"]
    /// Wanted for L2 guests when the kernel has them as modules (built-in
    /// drivers need nothing).
    public static let wantedGuestModules = ["virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport", "virtio_rng"]

    /// Prepares a kernel from a bzImage and a modules tree (lib/modules/RELEASE)
    /// into `directory`: copies the image, finds and decompresses the KVM modules
    /// and their dependencies, and writes `kernel.json`.
    public static func prepare(name: String, image: String, modulesTree: String, packages: [String] = [],
                               into directory: String) throws -> LabKernel {
        let imageBytes = try readBytes(image)
        _ = try BzImage(imageBytes)  // refuse anything that is not a bootable bzImage, naming the problem
        let release = modulesTree.split(separator: "/").last.map(String.init) ?? "unknown"
        var files: [String: String] = [:]
        for file in regularFiles(under: modulesTree) where file.contains(".ko") {
            let base = file.split(separator: "/").last.map(String.init) ?? file
            guard base.hasSuffix(".ko") || base.hasSuffix(".ko.xz") || base.hasSuffix(".ko.zst") || base.hasSuffix(".ko.gz") else { continue }
            files[KernelModule.moduleName(fileName: base)] = modulesTree + "/" + file
        }
        guard files["kvm"] != nil else {
            throw LabError("\(modulesTree) has no kvm module (kvm.ko): give the modules tree of this kernel, lib/modules/\(release)")
        }
        var loaded: [String: KernelModule] = [:]
        func load(_ name: String) throws {
            guard loaded[name] == nil, let path = files[name] else { return }
            let module = try KernelModule(file: try readBytes(path), fileName: path)
            loaded[name] = module
            for dependency in module.dependencies { try load(dependency) }
        }
        try load(wantedModules.amd)
        try load(wantedModules.intel)
        for name in wantedHostModules + wantedGuestModules { try load(name) }
        let amd = try KernelModule.loadOrder([wantedModules.amd], available: loaded)
        let intel = try KernelModule.loadOrder([wantedModules.intel], available: loaded)
        let host = try KernelModule.loadOrder(wantedHostModules.filter { loaded[$0] != nil }, available: loaded)
        let guest = try KernelModule.loadOrder(wantedGuestModules.filter { loaded[$0] != nil }, available: loaded)

        try makeDirectories(directory + "/modules")
        try writeFileAtomically(imageBytes, to: directory + "/vmlinuz")
        for module in loaded.values { try writeFileAtomically(module.object, to: directory + "/modules/\(module.name).ko") }
        let kernel = LabKernel(name: name, release: release, packages: packages, directory: directory,
                               amdModules: amd.map(\.name), intelModules: intel.map(\.name),
                               hostModules: host.map(\.name), guestModules: guest.map(\.name),
                               modulesLookedFor: wantedHostModules + wantedGuestModules)
        try kernel.save()
        return kernel
    }

    func save() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(self)), to: directory + "/kernel.json")
    }

    /// The kernel prepared in `directory`, if it is complete.
    public static func load(from directory: String) -> LabKernel? {
        guard let bytes = try? readBytes(directory + "/kernel.json"),
              var kernel = try? JSONDecoder().decode(LabKernel.self, from: Data(bytes)) else { return nil }
        kernel.directory = directory
        guard let host = kernel.hostModules, let guest = kernel.guestModules,
              kernel.modulesLookedFor == wantedHostModules + wantedGuestModules else { return nil }  // prepared for other module lists
        let complete = fileExists(kernel.bzImage) && (kernel.amdModules + kernel.intelModules + host + guest).allSatisfy { fileExists(kernel.modulePath($0)) }
        return complete ? kernel : nil
    }

    /// The guest modules as L1 files in `directory`, with `modules.order`
    /// naming them in insmod order (what `kestrel initramfs --modules` reads).
    public func guestModuleFiles(under directory: String) -> [LabInitramfs.File] {
        let names = guestModules ?? []
        return names.map { LabInitramfs.File(guestPath: "\(directory)/\($0).ko", hostPath: modulePath($0)) }
            + [LabInitramfs.File(guestPath: "\(directory)/modules.order", bytes: Array(names.map { $0 + "\n" }.joined().utf8))]
    }

    /// The vmlinux ELF inside the bzImage (decompressed on the host once and
    /// cached), for booting this kernel as an L2 guest through PVH.
    public func vmlinux() throws -> String {
        let path = directory + "/vmlinux"
        if fileExists(path) { return path }
        let image = try BzImage(try readBytes(bzImage))
        let elf = try PayloadCompression.detect(image.payload).decompress(image.payload, expectedSize: Int(image.header.initSize))
        _ = try ELFKernel(elf)
        try writeFileAtomically(elf, to: path)
        return path
    }
}
