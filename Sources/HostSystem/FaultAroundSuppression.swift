#if canImport(Glibc)
import Glibc
#endif
import CHost

/// Turns the kernel's fault-around off for chosen file mappings of this
/// process, so that a page fault there maps the one page it needs.
///
/// A read fault on a file mapping normally maps every page of the page
/// cache in the surrounding window as well (`fault_around_bytes`, 64 KiB by
/// default). One instruction fetch can make 16 pages of an executable
/// resident. The kernel skips fault-around in a range registered with a
/// userfaultfd in write-protect mode (`uffd_disable_fault_around` in
/// mm/memory.c). Since Linux 6.7, asynchronous write protection
/// (UFFD_FEATURE_WP_ASYNC) may be registered on a mapping of any kind,
/// an ordinary file's included.
///
/// Nothing is ever write-protected: no UFFDIO_WRITEPROTECT is issued, so the
/// registration changes no access, raises no event and needs no handler
/// thread. It only makes later faults map one page each. It lasts while this
/// object holds the userfaultfd: closing the descriptor unregisters the ranges.
///
/// Kernels before 6.7 refuse the feature (UFFDIO_API fails with EINVAL), and
/// a sandbox may refuse userfaultfd(2) itself; `init` then throws, and
/// fault-around stays as it was.
public final class FaultAroundSuppression: Sendable {
    /// The userfaultfd holding the registration.
    public let fileDescriptor: Int32
    /// Bytes of address space registered.
    public let registeredBytes: UInt64

    /// Registers each range, page-aligned start and length, of this
    /// process's own mappings.
    public init(ranges: [(start: UInt, length: Int)]) throws {
        let descriptor = chost_userfaultfd_wp_async()
        guard descriptor >= 0 else { throw SystemCallError.current("userfaultfd(UFFD_USER_MODE_ONLY) with UFFDIO_API UFFD_FEATURE_WP_ASYNC") }
        var total: UInt64 = 0
        for range in ranges {
            // Sound: registration only flags the VMAs in the range; it reads
            // or writes no memory of this process, and the kernel checks that
            // the range is mapped.
            guard chost_userfaultfd_register_wp(descriptor, UInt64(range.start), UInt64(range.length)) == 0 else {
                let error = SystemCallError.current("UFFDIO_REGISTER(WP, 0x\(String(range.start, radix: 16)), \(range.length) bytes)")
                close(descriptor)
                throw error
            }
            total += UInt64(range.length)
        }
        fileDescriptor = descriptor
        registeredBytes = total
    }

    deinit { close(fileDescriptor) }

    /// Whether this kernel lets this process do it: a userfaultfd with
    /// asynchronous write protection can be opened (nothing is registered).
    public static var isSupported: Bool { (try? FaultAroundSuppression(ranges: [])) != nil }
}
