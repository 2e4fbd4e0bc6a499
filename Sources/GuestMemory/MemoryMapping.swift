import HostSystem
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A host mapping of memory (anonymous or file-backed), unmapped on deinit.
///
/// Sendable: its fields never change, and the bytes it maps are shared with
/// the guest, which reads and writes them concurrently with every host thread;
/// callers that need ordering keep it themselves (a ucall, a virtqueue's
/// barriers).
public final class MemoryMapping: @unchecked Sendable {
    /// Start of the mapping in this process.
    public let baseAddress: UnsafeMutableRawPointer
    /// Length in bytes.
    public let size: Int
    /// MAP_SHARED or MAP_PRIVATE, as mapped.
    public let sharing: Sharing
    /// The memfd behind a mapping made with `init(sharedMemorySize:)`, owned
    /// by the mapping (closed with it): its data and holes are the mapping's
    /// pages (lseek SEEK_DATA), and other mappings of it see the same bytes.
    public let sharedMemoryFile: Int32?

    /// How the pages are shared with other mappings of the same object.
    public enum Sharing: Sendable {
        /// MAP_SHARED: writes reach the file (or other mappers); required for
        /// guest_memfd and for memory that devices or other processes must see.
        case shared
        /// MAP_PRIVATE: copy-on-write.
        case `private`
    }

    /// The page size of this host.
    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// The alignment that lets the kernel back guest RAM with transparent huge
    /// pages and KVM map them with 2 MiB stage-2 entries (guest-physical and host
    /// addresses must agree modulo 2 MiB).
    public static let hugePageAlignment = 2 << 20

    /// Maps `size` bytes of zeroed anonymous memory (mmap MAP_ANONYMOUS), starting
    /// at a multiple of `alignment` (a power of two; the page size by default).
    public init(anonymousSize size: Int, sharing: Sharing = .private, noReserve: Bool = true, alignment: Int = 0) throws {
        var flags = MAP_ANONYMOUS | (sharing == .shared ? MAP_SHARED : MAP_PRIVATE)
        if noReserve { flags |= MAP_NORESERVE }
        self.baseAddress = try Self.mapAligned(size, alignment, PROT_READ | PROT_WRITE, flags, -1, 0)
        self.size = size
        self.sharing = sharing
        self.sharedMemoryFile = nil
    }

    /// Maps `size` bytes of a new memfd (memfd_create, named `name` in
    /// /proc/PID/maps), MAP_SHARED, starting at a multiple of `alignment`.
    /// The pages start as holes and read as zero; the mapping owns the file.
    public init(sharedMemorySize size: Int, name: String, alignment: Int = 0) throws {
        guard size > 0 else { throw GuestMemoryError.invalidSize(size) }
        let descriptor = try HostFile.createMemfd(name: name)
        do {
            guard ftruncate(descriptor, off_t(size)) == 0 else { throw SystemCallError.current("ftruncate(memfd, \(size))") }
            self.baseAddress = try Self.mapAligned(size, alignment, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        } catch {
            close(descriptor)
            throw error
        }
        self.size = size
        self.sharing = .shared
        self.sharedMemoryFile = descriptor
    }

    /// Maps `size` bytes of a file (mmap), e.g. a guest_memfd, starting at a
    /// multiple of `alignment` (a power of two; the page size by default). A
    /// private mapping is MAP_NORESERVE, as anonymous guest RAM is: its
    /// copy-on-write pages are not charged up front, so a restored guest of
    /// more memory than the host commits to (an 8 GiB guest in a 4 GiB lab
    /// L1 failed with ENOMEM without it) maps like a booted one.
    public init(fileDescriptor: Int32, size: Int, offset: Int = 0, sharing: Sharing = .shared,
                protection: Int32 = PROT_READ | PROT_WRITE, alignment: Int = 0) throws {
        self.baseAddress = try Self.mapAligned(size, alignment, protection, sharing == .shared ? MAP_SHARED : MAP_PRIVATE | MAP_NORESERVE,
                                               fileDescriptor, off_t(offset))
        self.size = size
        self.sharing = sharing
        self.sharedMemoryFile = nil
    }

    /// mmap at a multiple of `alignment`: above the page size, an aligned range
    /// of address space is reserved first and the mapping placed over it.
    private static func mapAligned(_ size: Int, _ alignment: Int, _ protection: Int32, _ flags: Int32,
                                   _ fd: Int32, _ offset: off_t) throws -> UnsafeMutableRawPointer {
        guard size > 0 else { throw GuestMemoryError.invalidSize(size) }
        guard alignment == 0 || alignment & (alignment - 1) == 0 else { throw GuestMemoryError.invalidSize(alignment) }
        guard alignment > pageSize else { return try map(nil, size, protection, flags, fd, offset) }
        let reserved = try map(nil, size + alignment, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        let start = (UInt(bitPattern: reserved) + UInt(alignment) - 1) & ~UInt(alignment - 1)
        let head = Int(start - UInt(bitPattern: reserved))
        let target = reserved + head
        do {
            _ = try map(target, size, protection, flags | MAP_FIXED, fd, offset)
        } catch {
            munmap(reserved, size + alignment)
            throw error
        }
        // Sound: the slack on both sides is part of our own reservation.
        if head > 0 { munmap(reserved, head) }
        if alignment - head > 0 { munmap(target + size, alignment - head) }
        return target
    }

    deinit {
        munmap(baseAddress, size)
        if let sharedMemoryFile { close(sharedMemoryFile) }
    }

    /// The mapping as a byte buffer.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: baseAddress, count: size)
    }

    /// Host virtual address, as KVM memory slots want it.
    public var address: UInt64 { UInt64(UInt(bitPattern: baseAddress)) }

    /// Calls madvise(2) on a page-aligned sub-range.
    public func advise(offset: Int = 0, length: Int? = nil, _ advice: Int32) throws {
        let length = length ?? size - offset
        guard offset >= 0, length >= 0, offset + length <= size else {
            throw GuestMemoryError.outOfBounds(address: UInt64(offset), length: length)
        }
        if madvise(baseAddress + offset, length, advice) != 0 {
            throw SystemCallError.current("madvise")
        }
    }

    private static func map(_ hint: UnsafeMutableRawPointer?, _ size: Int, _ protection: Int32, _ flags: Int32,
                            _ fd: Int32, _ offset: off_t) throws -> UnsafeMutableRawPointer {
        let address = mmap(hint, size, protection, flags, fd, offset)
        guard let address, address != MAP_FAILED else {
            throw SystemCallError.current("mmap")
        }
        return address
    }
}
