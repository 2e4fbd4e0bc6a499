import Confidential
import FoundationEssentials
import HostSystem
import Metadata

/// What to run: a kernel and how to boot it, vCPUs, memory and CPU template.
/// `validate()` finds bad settings before anything is created.
public struct MachineConfiguration: Sendable {
    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String
    public var vcpuCount: Int
    public var memorySize: UInt64
    public var cpuTemplate: String
    /// Firecracker's custom CPU template (`cpu-config`), applied over `cpuTemplate`.
    public var customCPUTemplate: CustomCPUTemplate?
    /// Firecracker's `smt`: two threads to a core in the guest's CPUID
    /// topology (the vCPU count must then be 1 or even).
    public var smt = false
    /// For a bzImage: decompress the payload on the host (default) or let the
    /// kernel's own decompressor run.
    public var decompressOnHost: Bool
    /// For a vmlinux with a PVH note: use PVH (default) or the 64-bit entry.
    public var preferPVH: Bool
    /// virtio-blk disks, in the order given (a root drive goes first).
    public var drives: [DriveConfiguration] = []
    /// A virtio-rng device fed from the host's getrandom.
    public var entropy = false
    /// A virtio-balloon device.
    public var balloon: BalloonConfiguration?
    /// The entropy device's `rate_limiter`.
    public var entropyLimiter: RateLimiterConfiguration?
    /// virtio-net interfaces, in order (eth0, eth1, ...).
    public var networkInterfaces: [NetworkInterfaceConfiguration] = []
    /// A virtio-vsock device.
    public var vsock: VsockConfiguration?
    /// Firecracker's `mmds-config`: which interfaces carry the guest's MMDS
    /// requests, at which address, with which version.
    public var metadata: MetadataConfiguration?
    /// Firecracker's `serial.serial_out_path`: a regular file (created if
    /// missing, appended to) or a FIFO that takes the guest's COM1 output
    /// instead of standard output.
    public var serialOutputPath: String?
    /// Where guest RAM comes from.
    public var memoryBackend: MemoryBackend = .anonymous
    /// Map all guest RAM into KVM's stage-2 tables before the guest starts
    /// (KVM_PRE_FAULT_MEMORY): no first-touch faults, at the price of
    /// allocating every page of guest memory up front.
    public var prefault = false
    /// Firecracker's `track_dirty_pages`: log the pages the guest and the
    /// devices write (KVM_MEM_LOG_DIRTY_PAGES on every RAM slot), so that a
    /// Diff snapshot writes only those since the last snapshot.
    public var trackDirtyPages = false
    /// How tracked pages are read from KVM (machine-config `dirty_log`, a
    /// Kestrel extension): a bitmap per slot, or a ring per vCPU.
    public var dirtyLog: DirtyLogMode = .bitmap
    /// A confidential VM type, or nil for an ordinary VM.
    public var confidential: ConfidentialMode?
    /// The SEV-SNP certificate blob (GHCB certificate table) served to the
    /// guest's extended guest requests (`--snp-certs`).
    public var snpCertificatesPath: String?

    public static let defaultCommandLine = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 i8042.noaux"

    public init(kernelPath: String, initrdPath: String? = nil, commandLine: String = MachineConfiguration.defaultCommandLine,
                vcpuCount: Int = 1, memorySize: UInt64 = 256 << 20, cpuTemplate: String = CPUTemplate.defaultName,
                decompressOnHost: Bool = true, preferPVH: Bool = true) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
        self.vcpuCount = vcpuCount
        self.memorySize = memorySize
        self.cpuTemplate = cpuTemplate
        self.decompressOnHost = decompressOnHost
        self.preferPVH = preferPVH
    }

    public static let maximumVCPUs = 64

    /// With SMT, two threads make a core: 1 vCPU or an even number (Firecracker's rule).
    static func checkSMT(_ smt: Bool, vcpuCount: Int) throws {
        guard !smt || vcpuCount == 1 || vcpuCount % 2 == 0 else {
            throw ConfigurationError("vcpu_count \(vcpuCount) with smt: with SMT the vCPU count must be 1 or even")
        }
    }
    /// The most guest RAM a machine may have: 1 TiB.
    public static let maximumMemorySize: UInt64 = 1 << 40

    /// The CPUID topology the vCPUs report.
    public var topology: CPUTopology { CPUTopology(count: vcpuCount, smt: smt) }

    public func validate() throws {
        guard (1...Self.maximumVCPUs).contains(vcpuCount) else {
            throw ConfigurationError("vcpus must be between 1 and \(Self.maximumVCPUs), not \(vcpuCount)")
        }
        try Self.checkSMT(smt, vcpuCount: vcpuCount)
        guard memorySize >= 32 << 20 else { throw ConfigurationError("memory must be at least 32 MiB, not \(memorySize >> 20) MiB") }
        guard memorySize <= Self.maximumMemorySize, memorySize % 4096 == 0 else {
            throw ConfigurationError("memory must be a whole number of 4 KiB pages, at most 1 TiB")
        }
        guard CPUTemplate.named(cpuTemplate) != nil else {
            throw ConfigurationError("unknown CPU template \"\(cpuTemplate)\"; known: \(CPUTemplate.all.map(\.name).joined(separator: ", "))")
        }
        for (what, path) in [("kernel", kernelPath), ("initrd", initrdPath)] {
            guard let path else { continue }
            try Self.checkBootFile(path, what: what)
        }
        try validateDevices()
        try checkDirtyTracking()
        if let path = serialOutputPath { try Self.checkSerialOutput(path) }
        if let path = snpCertificatesPath {
            guard confidential == .snp else { throw ConfigurationError("--snp-certs is for --confidential snp") }
            guard let blob = try? MachineBuilder.readFile(path, what: "SNP certificate blob") else {
                throw ConfigurationError("cannot read the SNP certificate blob \(path)")
            }
            do { _ = try SNPCertificateTable(parsing: blob) } catch {
                throw ConfigurationError("\(path) is not an SNP certificate table (kestrel snp-certs build writes one): \(error)")
            }
        }
    }

    /// Dirty page tracking needs slots KVM can log: KVM refuses
    /// KVM_MEM_LOG_DIRTY_PAGES on a guest_memfd slot, and a confidential
    /// guest's memory is not the host's to snapshot.
    func checkDirtyTracking() throws {
        guard trackDirtyPages else {
            if dirtyLog != .bitmap { throw ConfigurationError("dirty_log \(dirtyLog.rawValue) needs track_dirty_pages") }
            return
        }
        if memoryBackend == .guestMemfd {
            throw ConfigurationError("track_dirty_pages needs anonymous or shared guest RAM: KVM does not log the dirty pages of guest_memfd slots "
                + "(it refuses KVM_MEM_LOG_DIRTY_PAGES with KVM_MEM_GUEST_MEMFD)")
        }
        if confidential != nil { throw ConfigurationError("track_dirty_pages: a confidential guest's memory cannot be snapshotted") }
    }

    /// A kernel or initrd must be readable and a regular file: a FIFO passes
    /// access(2), and opening it would wait for a writer.
    public static func checkBootFile(_ path: String, what: String) throws {
        guard FileManager.default.isReadableFile(atPath: path) else { throw ConfigurationError("cannot read the \(what) \(path)") }
        do { try HostFile.require(path, is: [.regular], what: "the \(what)") } catch let error as HostFileError {
            throw ConfigurationError(error.description)
        }
    }

    /// A serial output path must be an existing regular file or FIFO, or a
    /// new name in an existing directory (checked with stat, never opened).
    public static func checkSerialOutput(_ path: String) throws {
        guard !path.isEmpty else { throw ConfigurationError("serial_out_path is empty") }
        if let kind = try? HostFile.kind(atPath: path) {
            guard kind == .regular || kind == .fifo else {
                throw ConfigurationError("serial_out_path \(path) is \(kind), not a regular file or a FIFO")
            }
            return
        }
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        guard (try? HostFile.kind(atPath: directory.isEmpty ? "/" : directory)) == .directory else {
            throw ConfigurationError("serial_out_path \(path): the directory \(directory) does not exist")
        }
    }

    /// Parses sizes such as `128M`, `1G`, `512MiB` or a number of bytes.
    public static func parseSize(_ text: String) -> UInt64? {
        let trimmed = String(text.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()).uppercased()
        let units: [(String, UInt64)] = [("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]
        for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
            guard let number = UInt64(trimmed.dropLast(suffix.count)) else { return nil }
            let (value, overflow) = number.multipliedReportingOverflow(by: scale)
            return overflow ? nil : value
        }
        return UInt64(trimmed)
    }
}

public struct ConfigurationError: Error, Equatable, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where a machine's RAM comes from (`--memory-backend`, machine-config
/// `memory_backend`).
public enum MemoryBackend: String, Sendable, CaseIterable {
    /// Anonymous memory, 2 MiB-aligned and advised for transparent huge pages.
    case anonymous
    /// One guest_memfd per RAM range, created MMAP|INIT_SHARED (plus
    /// NO_DIRECT_MAP when the kernel offers it) and mapped by Kestrel.
    case guestMemfd = "guest_memfd"
    /// A memfd mapped MAP_SHARED (a Kestrel extension): what a live snapshot
    /// (`Machine.createLiveSnapshot`) write-protects and copies while the
    /// guest runs.
    case shared

    /// The backend named `text`, or an error listing the known names.
    public static func named(_ text: String) throws -> MemoryBackend {
        guard let backend = MemoryBackend(rawValue: text) else {
            throw ConfigurationError("unknown memory backend \"\(text)\"; known: \(allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return backend
    }
}

/// A confidential VM type for `kestrel run --confidential`.
public enum ConfidentialMode: String, Sendable, CaseIterable {
    /// AMD SEV-SNP: KVM_X86_SNP_VM, private memory in guest_memfd, the boot
    /// payload measured with SNP_LAUNCH_START/UPDATE/FINISH.
    case snp
    /// An Arm CCA realm: KVM_VM_TYPE_ARM_REALM, planned and checked by
    /// `RealmMachine` (arm64 hosts with KVM_CAP_ARM_RMI only).
    case realm
}

/// How KVM reports the pages a tracked guest writes.
public enum DirtyLogMode: String, Sendable, CaseIterable {
    /// KVM_GET_DIRTY_LOG: a bitmap per slot, read and cleared at once.
    case bitmap = "Bitmap"
    /// KVM_CAP_DIRTY_LOG_RING: a ring per vCPU of the pages it wrote, in
    /// order, harvested when it fills and at each read, then handed back
    /// (KVM_RESET_DIRTY_RINGS).
    case ring = "Ring"
}
