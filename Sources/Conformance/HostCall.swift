import FoundationEssentials
import Glibc
import GuestMemory
import HostSystem
import KVM
import SystemPackage

/// Thin, errno-preserving wrappers over the file calls the guest_memfd tests make.
public enum HostCall {
    /// read(2) of `count` bytes into a scratch buffer.
    public static func read(_ fd: Int32, count: Int = 64) throws {
        var buffer = [UInt8](repeating: 0, count: count)
        try SystemCallError.check(buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count) }, "read")
    }

    /// write(2) of `count` zero bytes.
    public static func write(_ fd: Int32, count: Int = 64) throws {
        let buffer = [UInt8](repeating: 0, count: count)
        try SystemCallError.check(buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, count) }, "write")
    }

    /// pread(2) at `offset`.
    public static func pread(_ fd: Int32, count: Int = 64, offset: Int = 0) throws {
        var buffer = [UInt8](repeating: 0, count: count)
        try SystemCallError.check(buffer.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, count, off_t(offset)) }, "pread")
    }

    /// pwrite(2) at `offset`.
    public static func pwrite(_ fd: Int32, count: Int = 64, offset: Int = 0) throws {
        let buffer = [UInt8](repeating: 0, count: count)
        try SystemCallError.check(buffer.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, count, off_t(offset)) }, "pwrite")
    }

    /// fstat(2).
    public static func fileStatus(_ fd: Int32) throws -> stat {
        var status = stat()
        try SystemCallError.check(Int(fstat(fd, &status)), "fstat")
        return status
    }

    /// The transparent huge page size, or nil when THP is not configured.
    public static func transparentHugePageSize() -> Int? {
        // sysfs reports a size of 0, so read the one line rather than "the whole file".
        guard let file = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 32)
        guard fgets(&line, Int32(line.count), file) != nil else { return nil }
        return Int(String(cString: line).filter { !$0.isWhitespace })
    }
}
