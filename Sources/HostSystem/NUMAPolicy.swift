import CHost

#if canImport(Glibc)
import Glibc
#endif

/// NUMA memory-policy calls: mbind(2), get_mempolicy(2) and move_pages(2).
/// glibc has no wrappers for them (libnuma has), and Swift cannot call the
/// variadic syscall(2), so CHost issues them.
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
        // Sound: the kernel reads ceil(maxNode / 64) words of the mask, one here.
        let result = withUnsafePointer(to: &nodemask) { pointer in
            chost_mbind(address, UInt(length), mode, mask == 0 ? nil : pointer, mask == 0 ? 0 : maxNode, 0)
        }
        try SystemCallError.check(result, "mbind(mode \(mode), nodes 0x\(String(mask, radix: 16)))")
    }

    /// get_mempolicy(2) for the range containing `address`: (mode, node mask).
    public static func policy(at address: UnsafeMutableRawPointer, maxNode: UInt = 64) throws -> (mode: Int32, mask: UInt) {
        var mode: Int32 = -1
        var mask: UInt = 0
        // Sound: one word of mask for maxNode <= 64.
        try SystemCallError.check(chost_get_mempolicy(&mode, &mask, min(maxNode, 64), address, flagAddress), "get_mempolicy(MPOL_F_ADDR)")
        return (mode, mask)
    }

    /// move_pages(2) in query mode: the node each page is on (or -errno).
    public static func nodes(of pages: [UnsafeMutableRawPointer]) throws -> [Int32] {
        var addresses: [UnsafeMutableRawPointer?] = pages
        var status = [Int32](repeating: -1, count: pages.count)
        // Sound: both arrays hold `pages.count` elements.
        try SystemCallError.check(chost_move_pages(0, UInt(pages.count), &addresses, nil, &status, 0), "move_pages (query)")
        return status
    }
}
