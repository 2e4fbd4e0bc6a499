import Virtio

/// Firecracker's RateLimiter body: a `bandwidth` bucket (bytes) and an `ops`
/// bucket (requests), each `{"size", "one_time_burst", "refill_time"}` with
/// `refill_time` in milliseconds. A missing bucket, or one of size 0, is no limit.
public struct RateLimiterConfiguration: Equatable, Sendable {
    public var bandwidth: TokenBucket?
    public var operations: TokenBucket?

    public init(bandwidth: TokenBucket? = nil, operations: TokenBucket? = nil) {
        self.bandwidth = bandwidth
        self.operations = operations
    }

    /// The largest size, burst and refill time taken: 2^53 (JSON's exact integers).
    static let largest = 1 << 53

    /// Reads a rate_limiter object; `place` names it in errors. Null is none.
    public static func parse(_ value: JSONValue?, place: String, source: String) throws -> RateLimiterConfiguration? {
        guard let value, value != .null else { return nil }
        guard let object = value.objectValue else { throw ConfigurationError("\(source): \(place) must be an object") }
        try MachineConfigFile.refuseUnknownKeys(object, allowed: ["bandwidth", "ops"], section: place, source: source)
        return RateLimiterConfiguration(bandwidth: try bucket(object["bandwidth"], place: place + ".bandwidth", source: source),
                                        operations: try bucket(object["ops"], place: place + ".ops", source: source))
    }

    static func bucket(_ value: JSONValue?, place: String, source: String) throws -> TokenBucket? {
        guard let value, value != .null else { return nil }
        guard let object = value.objectValue else { throw ConfigurationError("\(source): \(place) must be an object") }
        try MachineConfigFile.refuseUnknownKeys(object, allowed: ["size", "one_time_burst", "refill_time"], section: place, source: source)
        func number(_ key: String, required: Bool) throws -> Int? {
            guard let field = object[key], field != .null else {
                if required { throw ConfigurationError("\(source): \(place).\(key) is required") }
                return nil
            }
            guard let whole = field.wholeNumber, whole >= 0, whole <= largest else {
                throw ConfigurationError("\(source): \(place).\(key) must be a whole number from 0 to 2^53")
            }
            return whole
        }
        let size = try number("size", required: true)!
        let refill = try number("refill_time", required: true)!
        let burst = try number("one_time_burst", required: false) ?? 0
        guard size == 0 || refill > 0 else { throw ConfigurationError("\(source): \(place).refill_time must be at least 1 ms for a bucket of size \(size)") }
        return TokenBucket(size: UInt64(size), oneTimeBurst: UInt64(burst), refillTime: .milliseconds(max(refill, 1)))
    }

    /// The limiter as Firecracker's JSON.
    public var document: JSONValue {
        func bucket(_ bucket: TokenBucket) -> JSONValue {
            let (seconds, attoseconds) = bucket.refillTime.components
            return .object(["size": .number(Double(bucket.size)), "one_time_burst": .number(Double(bucket.oneTimeBurst)),
                            "refill_time": .number(Double(seconds * 1000 + attoseconds / 1_000_000_000_000_000))])
        }
        var object: [String: JSONValue] = [:]
        if let bandwidth { object["bandwidth"] = bucket(bandwidth) }
        if let operations { object["ops"] = bucket(operations) }
        return .object(object)
    }

    /// A limited queue with these buckets.
    public func makeQueue() throws -> LimitedQueue { try LimitedQueue(bandwidth: bandwidth, operations: operations) }
}
