#if canImport(Glibc)
import Glibc
#endif
import CHost

/// The kernel's random bytes.
public enum HostRandom {
    /// Fills `buffer` from getrandom(2) (the urandom pool, blocking only until it
    /// is first initialised); returns how many bytes it filled, which is fewer
    /// only if the call fails.
    @discardableResult
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var filled = 0
        while filled < buffer.count {
            // Sound: getrandom writes at most `buffer.count - filled` bytes from `base + filled`.
            let result = getrandom(base + filled, buffer.count - filled, 0)
            if result < 0 { if errno == EINTR { continue } else { break } }
            filled += result
        }
        return filled
    }
}
