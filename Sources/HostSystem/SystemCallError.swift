import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failed system call: which call, and the errno it returned. Every Kestrel
/// target reports a failed ioctl, open, mmap or fallocate with this one type,
/// so a caller that wants the errno (a negative test, say) catches one error.
public struct SystemCallError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What failed: an ioctl name such as `KVM_CREATE_VM`, or a call such as
    /// `open(/dev/kvm)` or `fallocate(mode 0x3, offset 0, length 4096)`.
    public let operation: String
    /// The error number the kernel returned.
    public let errno: Errno

    public init(operation: String, errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    /// The error for `operation` with the calling thread's current errno.
    public static func current(_ operation: String) -> SystemCallError {
        SystemCallError(operation: operation, errno: Errno(rawValue: Glibc.errno))
    }

    /// Returns `result`, or throws the current errno when `result` is negative
    /// (the C convention of -1 plus errno).
    @inline(__always) @discardableResult
    public static func check<Result: BinaryInteger>(_ result: Result, _ operation: @autoclosure () -> String) throws -> Result {
        if result < 0 { throw current(operation()) }
        return result
    }

    public var description: String {
        "\(operation) failed: \(errno.symbolicName) (\(errno.description))"
    }
}

extension Errno {
    private static let linuxNames: [CInt: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        8: "ENOEXEC", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT",
        16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 22: "EINVAL", 23: "ENFILE", 24: "EMFILE",
        25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC", 29: "ESPIPE", 30: "EROFS", 34: "ERANGE",
        38: "ENOSYS", 95: "EOPNOTSUPP", 110: "ETIMEDOUT", 133: "EHWPOISON",
    ]

    /// The C name of the error number (`EINVAL`), or `errno N` for rare ones.
    public var symbolicName: String { Self.linuxNames[rawValue] ?? "errno \(rawValue)" }

    /// EHWPOISON (133): memory with an uncorrectable hardware error. KVM_RUN
    /// fails with it, alongside a KVM_EXIT_MEMORY_FAULT, when the guest touches
    /// a poisoned page. swift-system has no name for it.
    public static var hardwarePoison: Errno { Errno(rawValue: 133) }
}
