import CKVM
import FoundationEssentials
import Glibc
import GuestMemory
import KVM
import SystemPackage

/// A failed host system call made by a test (read, fallocate, mmap...).
public struct HostCallError: Error, CustomStringConvertible {
    public let call: String
    public let errno: Errno
    public var description: String { "\(call) failed: \(errno.symbolicName)" }
}

/// Thin, errno-preserving wrappers over the file calls the guest_memfd tests make.
public enum HostCall {
    static func check(_ result: Int, _ call: String) throws {
        if result < 0 { throw HostCallError(call: call, errno: Errno(rawValue: Glibc.errno)) }
    }

    /// read(2) of `count` bytes into a scratch buffer.
    public static func read(_ fd: Int32, count: Int = 64) throws {
        var buffer = [UInt8](repeating: 0, count: count)
        try check(buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count) }, "read")
    }

    /// write(2) of `count` zero bytes.
    public static func write(_ fd: Int32, count: Int = 64) throws {
        let buffer = [UInt8](repeating: 0, count: count)
        try check(buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, count) }, "write")
    }

    /// pread(2) at `offset`.
    public static func pread(_ fd: Int32, count: Int = 64, offset: Int = 0) throws {
        var buffer = [UInt8](repeating: 0, count: count)
        try check(buffer.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, count, off_t(offset)) }, "pread")
    }

    /// pwrite(2) at `offset`.
    public static func pwrite(_ fd: Int32, count: Int = 64, offset: Int = 0) throws {
        let buffer = [UInt8](repeating: 0, count: count)
        try check(buffer.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, count, off_t(offset)) }, "pwrite")
    }

    /// fstat(2).
    public static func fileStatus(_ fd: Int32) throws -> stat {
        var status = stat()
        try check(Int(fstat(fd, &status)), "fstat")
        return status
    }

    public static let keepSize: Int32 = 0x01  // FALLOC_FL_KEEP_SIZE
    public static let punchHole: Int32 = 0x02  // FALLOC_FL_PUNCH_HOLE

    /// fallocate(2).
    public static func fallocate(_ fd: Int32, mode: Int32, offset: Int, length: Int) throws {
        try check(Int(ckvm_fallocate(fd, mode, offset, length)), "fallocate(mode \(mode), offset \(offset), length \(length))")
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

/// The NUMA memory-policy calls the guest_memfd NUMA tests make (x86-64 raw syscalls).
public enum NUMAPolicy {
    public static let modeDefault: Int32 = 0  // MPOL_DEFAULT
    public static let modeBind: Int32 = 2     // MPOL_BIND
    public static let modeInterleave: Int32 = 3  // MPOL_INTERLEAVE
    /// get_mempolicy: return the policy of the range containing `address`.
    static let flagAddress: UInt = 2          // MPOL_F_ADDR

    /// The NUMA nodes this host has (/sys/devices/system/node/nodeN).
    public static func nodes() -> [Int] {
        guard let directory = opendir("/sys/devices/system/node") else { return [] }
        defer { closedir(directory) }
        var nodes: [Int] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("node"), let number = Int(name.dropFirst(4)) { nodes.append(number) }
        }
        return nodes.sorted()
    }

    /// mbind(2) of `length` bytes at `address` to the nodes in `mask`.
    public static func bind(_ address: UnsafeMutableRawPointer, length: Int, mode: Int32, mask: UInt, maxNode: UInt = 64) throws {
        var nodemask = mask
        try HostCall.check(ckvm_mbind(address, UInt(length), mode, mask == 0 ? nil : withUnsafePointer(to: &nodemask) { $0 }, mask == 0 ? 0 : maxNode, 0),
                           "mbind(mode \(mode), nodes 0x\(String(mask, radix: 16)))")
    }

    /// get_mempolicy(2) for the range containing `address`: (mode, node mask).
    public static func policy(at address: UnsafeMutableRawPointer, maxNode: UInt = 64) throws -> (mode: Int32, mask: UInt) {
        var mode: Int32 = -1
        var mask: UInt = 0
        try HostCall.check(ckvm_get_mempolicy(&mode, &mask, maxNode, address, flagAddress), "get_mempolicy(MPOL_F_ADDR)")
        return (mode, mask)
    }

    /// move_pages(2) in query mode: the node each page is on (or -errno).
    public static func nodes(of pages: [UnsafeMutableRawPointer]) throws -> [Int32] {
        var addresses: [UnsafeMutableRawPointer?] = pages
        var status = [Int32](repeating: -1, count: pages.count)
        try HostCall.check(ckvm_move_pages(0, UInt(pages.count), &addresses, nil, &status, 0), "move_pages (query)")
        return status
    }
}
