import HostSystem

/// MMDS V2 session tokens: `PUT /latest/api/token` issues one with a time to
/// live of 1 to 21600 s, and a GET must carry a live one. A token is 32
/// random bytes from the kernel (base64url, 43 characters), kept in a table
/// with its expiry: nothing about it can be guessed or forged, and it dies
/// with the process (Firecracker's tokens, encrypted with a per-process key,
/// behave the same). The table holds at most `capacity` tokens; a new one
/// replaces expired ones first, then the one closest to expiring.
///
/// Not thread-safe: `MetadataService` holds it under its lock.
struct SessionTokens {
    static let ttlRange: ClosedRange<Int> = 1...21600
    static let capacity = 4096

    private var expiries: [String: ContinuousClock.Instant] = [:]

    /// A new token valid for `ttl` seconds from `now`.
    mutating func issue(ttl: Int, now: ContinuousClock.Instant) -> String {
        precondition(Self.ttlRange.contains(ttl), "a TTL lies in 1...21600")
        if expiries.count >= Self.capacity {
            expiries = expiries.filter { $0.value > now }
            if expiries.count >= Self.capacity, let soonest = expiries.min(by: { $0.value < $1.value }) {
                expiries[soonest.key] = nil
            }
        }
        var bytes = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeMutableBytes { _ = HostRandom.fill($0) }
        let token = Self.base64URL(bytes)
        expiries[token] = now + .seconds(ttl)
        return token
    }

    /// Whether `token` was issued and has not expired at `now`.
    func isValid(_ token: String, now: ContinuousClock.Instant) -> Bool {
        guard let expiry = expiries[token] else { return false }
        return now < expiry
    }

    var count: Int { expiries.count }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// RFC 4648 base64url without padding.
    static func base64URL(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = 0
            for (offset, byte) in chunk.enumerated() { value |= Int(byte) << (16 - 8 * offset) }
            for sextet in 0...chunk.count { out.append(alphabet[(value >> (18 - 6 * sextet)) & 63]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
