#if canImport(Glibc)
import Glibc
#endif
import CHost

/// A userfaultfd: faults on registered pages of this process (the kernel's
/// own accesses included, so KVM's faults on guest RAM too) wait, reported
/// as `Event`s, until the owner resolves them. In missing mode a fault is on
/// a page not yet populated, resolved by filling it (`copy`, `zeroPage`);
/// in write-protect mode it is a write to a protected page, resolved by
/// `removeWriteProtection`.
///
/// The descriptor closes with the object; closing it unregisters every range,
/// and faults there from then on are served by the kernel as usual (a fresh
/// zero page for anonymous memory).
public final class Userfault: @unchecked Sendable {
    /// The userfaultfd. `@unchecked Sendable`: the descriptor never changes,
    /// and the kernel serialises the calls made on it.
    public let fileDescriptor: Int32
    /// The UFFD_FEATURE_* bits the kernel offers.
    public let offeredFeatures: UInt64

    /// UFFD_FEATURE_EVENT_REMOVE: MADV_DONTNEED and MADV_REMOVE in a
    /// registered range are reported (`Event.removed`) before the pages go.
    public static let eventRemove: UInt64 = 1 << 3

    /// UFFD_FEATURE_WP_HUGETLBFS_SHMEM: write protection works on shared
    /// memory (memfd, MAP_SHARED anonymous) too, not only on private
    /// anonymous memory (Linux 5.19).
    public static let writeProtectShared: UInt64 = 1 << 12

    /// Opens a userfaultfd (the system call, or /dev/userfaultfd where the
    /// call is refused) that takes kernel faults as well as user ones, and
    /// asks UFFDIO_API for `features`.
    public init(features: UInt64 = 0, nonBlocking: Bool = true) throws {
        var offered: UInt64 = 0
        let descriptor = chost_userfaultfd_open(nonBlocking ? 1 : 0, features, &offered)
        guard descriptor >= 0 else {
            throw SystemCallError.current("userfaultfd (or /dev/userfaultfd) with UFFDIO_API features 0x\(String(features, radix: 16))")
        }
        fileDescriptor = descriptor
        offeredFeatures = offered
    }

    /// Takes over a userfaultfd opened elsewhere (received over a socket,
    /// as a page-fault handler gets Kestrel's); its features are unknown here.
    public init(adopting descriptor: Int32) {
        fileDescriptor = descriptor
        offeredFeatures = 0
    }

    deinit { close(fileDescriptor) }

    /// UFFDIO_REGISTER in missing mode over `[start, start + length)`, page
    /// aligned, of this process's own anonymous mappings. Returns the mask
    /// of ioctls the range supports.
    @discardableResult
    public func registerMissing(start: UInt, length: Int) throws -> UInt64 {
        var ioctls: UInt64 = 0
        // Sound: registration flags the VMAs in the range; the kernel checks
        // that it is mapped, and it reads or writes no memory of this process.
        guard chost_userfaultfd_register_missing(fileDescriptor, UInt64(start), UInt64(length), &ioctls) == 0 else {
            throw SystemCallError.current("UFFDIO_REGISTER(MISSING, 0x\(String(start, radix: 16)), \(length) bytes)")
        }
        return ioctls
    }

    /// UFFDIO_REGISTER in write-protect mode over `[start, start + length)`,
    /// page aligned: nothing is protected until `writeProtect`.
    public func registerWriteProtect(start: UInt, length: Int) throws {
        // Sound: as registerMissing; no memory of this process is read or written.
        guard chost_userfaultfd_register_wp(fileDescriptor, UInt64(start), UInt64(length)) == 0 else {
            throw SystemCallError.current("UFFDIO_REGISTER(WP, 0x\(String(start, radix: 16)), \(length) bytes)")
        }
    }

    /// UFFDIO_WRITEPROTECT: from now on a write to `[start, start + length)`
    /// (registered with `registerWriteProtect`) waits, reported as
    /// `Event.writeProtectFault`, until `removeWriteProtection` covers it.
    /// False, with nothing done, while the address space is changing
    /// (EAGAIN: an event such as a remove waits to be read): read the events
    /// and try again.
    public func writeProtect(start: UInt, length: Int) throws -> Bool {
        try setWriteProtection(true, start: start, length: length)
    }

    /// UFFDIO_WRITEPROTECT without MODE_WP: writes to the range go through
    /// again, and the threads waiting there are woken. False on EAGAIN, as
    /// `writeProtect`.
    public func removeWriteProtection(start: UInt, length: Int) throws -> Bool {
        try setWriteProtection(false, start: start, length: length)
    }

    private func setWriteProtection(_ protect: Bool, start: UInt, length: Int) throws -> Bool {
        // Sound: the kernel changes page-table bits of the range; no memory of this process is read or written.
        if chost_userfaultfd_writeprotect(fileDescriptor, UInt64(start), UInt64(length), protect ? 1 : 0) == 0 { return true }
        if Glibc.errno == EAGAIN { return false }
        throw SystemCallError.current("UFFDIO_WRITEPROTECT(\(protect ? "WP, " : "")0x\(String(start, radix: 16)), \(length) bytes)")
    }

    /// UFFDIO_UNREGISTER: faults in the range are the kernel's again.
    public func unregister(start: UInt, length: Int) throws {
        guard chost_userfaultfd_unregister(fileDescriptor, UInt64(start), UInt64(length)) == 0 else {
            throw SystemCallError.current("UFFDIO_UNREGISTER(0x\(String(start, radix: 16)), \(length) bytes)")
        }
    }

    /// What a fill (`copy`, `zeroPage`) did.
    public enum Fill: Equatable, Sendable {
        /// This many bytes from the start were filled (all, or the first ones
        /// of a fill cut short).
        case filled(Int)
        /// The first page was already there (EEXIST): someone filled it.
        case alreadyPresent
        /// The address space is changing (EAGAIN: a remove event is pending);
        /// read the events and try again.
        case retry
    }

    private func fill(_ result: Int, _ operation: @autoclosure () -> String) throws -> Fill {
        if result >= 0 { return .filled(result) }
        switch Glibc.errno {
        case EEXIST: return .alreadyPresent
        case EAGAIN: return .retry
        default: throw SystemCallError.current(operation())
        }
    }

    /// UFFDIO_COPY: fills `[target, target + length)` (registered, page
    /// aligned) with the bytes at `source` and wakes the threads waiting on
    /// it. `source` must be readable for `length` bytes.
    public func copy(to target: UInt, from source: UnsafeRawPointer, length: Int) throws -> Fill {
        // Sound: the kernel reads `length` bytes at `source`, which the caller
        // vouches for, and writes only into the registered missing pages.
        try fill(chost_userfaultfd_copy(fileDescriptor, UInt64(target), UInt64(UInt(bitPattern: source)), UInt64(length)),
                 "UFFDIO_COPY(0x\(String(target, radix: 16)), \(length) bytes)")
    }

    /// UFFDIO_ZEROPAGE: maps the zero page over `[start, start + length)`
    /// and wakes the threads waiting on it.
    public func zeroPage(start: UInt, length: Int) throws -> Fill {
        try fill(chost_userfaultfd_zeropage(fileDescriptor, UInt64(start), UInt64(length)),
                 "UFFDIO_ZEROPAGE(0x\(String(start, radix: 16)), \(length) bytes)")
    }

    /// UFFDIO_WAKE: wakes the threads waiting on `[start, start + length)`
    /// (after a fill found the page already there).
    public func wake(start: UInt, length: Int) throws {
        guard chost_userfaultfd_wake(fileDescriptor, UInt64(start), UInt64(length)) == 0 else {
            throw SystemCallError.current("UFFDIO_WAKE(0x\(String(start, radix: 16)), \(length) bytes)")
        }
    }

    /// One event read from the descriptor.
    public enum Event: Equatable, Sendable {
        /// A thread waits on the page at `address` (not aligned).
        case pageFault(address: UInt, write: Bool)
        /// A thread waits to write the write-protected page at `address`
        /// (not aligned).
        case writeProtectFault(address: UInt)
        /// `[start, end)` is being discarded (MADV_DONTNEED, MADV_REMOVE):
        /// its pages will be missing again, and fault again.
        case removed(start: UInt, end: UInt)
        /// An event of a kind asked for elsewhere (fork, remap, unmap).
        case other
    }

    /// The next pending event; nil when none is pending (non-blocking
    /// descriptor). A blocking descriptor waits for one.
    public func nextEvent() throws -> Event? {
        var event = chost_uffd_event()
        switch chost_userfaultfd_read_event(fileDescriptor, &event) {
        case 0: return nil
        case 1: break
        default: throw SystemCallError.current("read(userfaultfd)")
        }
        switch event.kind {
        case 1: return .pageFault(address: UInt(event.address), write: event.write != 0)
        case 2: return .removed(start: UInt(event.address), end: UInt(event.end))
        case 3: return .writeProtectFault(address: UInt(event.address))
        default: return .other
        }
    }
}

extension UnixSocket {
    /// Sends `bytes` with `descriptor` attached (SCM_RIGHTS) in one sendmsg.
    public static func send(_ bytes: [UInt8], descriptor: Int32, on socket: Int32) throws {
        // Sound: the array's buffer holds bytes.count bytes, read by sendmsg only.
        let sent = bytes.withUnsafeBytes { chost_send_with_descriptor(socket, $0.baseAddress, $0.count, descriptor) }
        guard sent >= 0 else { throw SystemCallError.current("sendmsg(SCM_RIGHTS)") }
        guard sent == bytes.count else {
            throw SystemCallError(operation: "sendmsg(SCM_RIGHTS) sent \(sent) of \(bytes.count) bytes", errno: .resourceTemporarilyUnavailable)
        }
    }
}
