#if canImport(Glibc)
import Glibc
#endif

/// AF_VSOCK stream sockets (vsock(7)), for programs inside a guest.
public enum VsockSocket {
    public static let addressFamily: Int32 = 40  // AF_VSOCK
    /// VMADDR_CID_ANY and VMADDR_CID_HOST.
    public static let anyCID: UInt32 = 0xFFFF_FFFF, hostCID: UInt32 = 2

    /// struct sockaddr_vm: family, reserved, port, cid, zero[4] (16 bytes).
    private static func address(cid: UInt32, port: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[0] = UInt8(addressFamily)
        for index in 0..<4 {
            bytes[4 + index] = UInt8(truncatingIfNeeded: port >> (8 * UInt32(index)))
            bytes[8 + index] = UInt8(truncatingIfNeeded: cid >> (8 * UInt32(index)))
        }
        return bytes
    }

    private static func makeSocket() throws -> Int32 {
        try SystemCallError.check(socket(addressFamily, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0), "socket(AF_VSOCK)")
    }

    /// Connects to `port` of `cid` (blocking).
    public static func connect(cid: UInt32, port: UInt32) throws -> Int32 {
        let fd = try makeSocket()
        let address = address(cid: cid, port: port)
        // Sound: the 16 bytes are a complete sockaddr_vm.
        let result = address.withUnsafeBytes { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 16) }
        guard result == 0 else {
            let error = SystemCallError.current("connect(vsock \(cid):\(port))")
            close(fd)
            throw error
        }
        return fd
    }

    /// Listens on `port` for any CID (blocking accept).
    public static func listen(port: UInt32) throws -> Int32 {
        let fd = try makeSocket()
        let address = address(cid: anyCID, port: port)
        // Sound: as in connect.
        let bound = address.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 16) }
        guard bound == 0, Glibc.listen(fd, 16) == 0 else {
            let error = SystemCallError.current("bind/listen(vsock port \(port))")
            close(fd)
            throw error
        }
        return fd
    }
}
