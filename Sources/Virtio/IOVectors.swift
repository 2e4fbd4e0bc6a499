import Glibc

/// Calls a readv/writev-like `body` with iovecs for `pieces` of guest memory
/// (at most 1024 of them, IOV_MAX), retrying on EINTR; returns its result.
func withIOVectors(_ pieces: [UnsafeMutableRawBufferPointer], _ body: (UnsafePointer<iovec>, Int32) -> Int) -> Int {
    let vectors = pieces.prefix(1024).map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
    while true {
        // Sound: the iovecs cover checked guest RAM.
        let result = vectors.withUnsafeBufferPointer { body($0.baseAddress!, Int32($0.count)) }
        if result < 0 && errno == EINTR { continue }
        return result
    }
}
