import SystemPackage

/// A failed KVM (or related) system call: which call, and the errno it returned.
public struct KVMError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The operation that failed: an ioctl name such as `KVM_CREATE_VM`, or a
    /// system call such as `open(/dev/kvm)`.
    public let operation: String
    /// The error number the kernel returned.
    public let errno: Errno

    public init(operation: String, errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation) failed: \(errno.symbolicName) (\(errno.description))"
    }
}

/// An error found before any system call was made: an argument that KVM would
/// refuse or that Kestrel cannot represent.
public struct KVMUsageError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
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
}
