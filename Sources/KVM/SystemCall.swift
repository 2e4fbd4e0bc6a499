import CKVM
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The one place where Kestrel issues ioctls. Each function returns the kernel's
/// non-negative result or throws a `SystemCallError` naming the request and the errno.
enum SystemCall {
    /// ioctl with a pointer argument. `argument` must point at memory of the size
    /// encoded in `request` (or larger, for variable-length requests); the caller
    /// keeps it alive for the duration of the call.
    @inline(__always)
    static func ioctl(_ fd: Int32, _ request: IoctlRequest, _ argument: UnsafeMutableRawPointer?) throws -> Int32 {
        let result = ckvm_ioctl_pointer(fd, request.number, argument)
        if result < 0 { throw SystemCallError(operation: request.name, errno: Errno(rawValue: Glibc.errno)) }
        return result
    }

    /// ioctl with an integer argument (or none: pass 0).
    @inline(__always)
    static func ioctl(_ fd: Int32, _ request: IoctlRequest, value: UInt = 0) throws -> Int32 {
        let result = ckvm_ioctl_value(fd, request.number, value)
        if result < 0 { throw SystemCallError(operation: request.name, errno: Errno(rawValue: Glibc.errno)) }
        return result
    }

    /// ioctl on a value of type `T` passed by address: the kernel reads and/or
    /// writes exactly `MemoryLayout<T>.size` bytes, which `request` encodes.
    @inline(__always)
    static func ioctl<T>(_ fd: Int32, _ request: IoctlRequest, _ value: inout T) throws -> Int32 {
        try withUnsafeMutableBytes(of: &value) { try ioctl(fd, request, $0.baseAddress) }
    }

    /// Closes a file descriptor owned by a Kestrel object; errors at close are
    /// not actionable for KVM fds and are ignored.
    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// Opens a path read-write with O_CLOEXEC.
    static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw SystemCallError(operation: "open(\(path))", errno: Errno(rawValue: Glibc.errno)) }
        return fd
    }
}
