import HostSystem
import Virtio

/// What Firecracker lets a client change in a running microVM: a drive's
/// image and rate limiter (`PATCH /drives/{id}`), an interface's rate
/// limiters (`PATCH /network-interfaces/{id}`). A change that is refused
/// changes nothing; one that is made is also made to `configuration`, so
/// that a snapshot taken afterwards records it.
extension Machine {
    /// Serves drive `id` from `path` (a regular file, opened and locked before
    /// the old one is let go; the driver is told its capacity may have
    /// changed) and/or applies `rateLimiter` (a bucket it leaves out is kept).
    public func updateDrive(id: String, path: String?, rateLimiter: RateLimiterConfiguration?) throws {
        guard let device = virtioDevice(named: "virtio-blk \(id)") as? BlockDevice else {
            throw ConfigurationError("no drive has the id \"\(id)\"")
        }
        if let path {
            do { try HostFile.require(path, is: [.regular], what: "drive \(id):") } catch let error as HostFileError {
                throw ConfigurationError(error.description)
            }
            try device.replaceImage(with: path)
        }
        if let rateLimiter { device.rateLimit.update(bandwidth: rateLimiter.bandwidth, operations: rateLimiter.operations) }
        current.withLock { configuration in
            guard let index = configuration.drives.firstIndex(where: { $0.id == id }) else { return }
            if let path { configuration.drives[index].path = path }
            if let rateLimiter { configuration.drives[index].rateLimiter = Self.merged(configuration.drives[index].rateLimiter, rateLimiter) }
        }
    }

    /// Applies an interface's new `rx_rate_limiter` and `tx_rate_limiter`.
    public func updateNetworkInterface(id: String, receive: RateLimiterConfiguration?, transmit: RateLimiterConfiguration?) throws {
        guard let device = virtioDevice(named: "virtio-net \(id)") as? NetDevice else {
            throw ConfigurationError("no network interface has the id \"\(id)\"")
        }
        if let receive { device.receiveLimit.update(bandwidth: receive.bandwidth, operations: receive.operations) }
        if let transmit { device.transmitLimit.update(bandwidth: transmit.bandwidth, operations: transmit.operations) }
        current.withLock { configuration in
            guard let index = configuration.networkInterfaces.firstIndex(where: { $0.id == id }) else { return }
            if let receive { configuration.networkInterfaces[index].receiveLimiter = Self.merged(configuration.networkInterfaces[index].receiveLimiter, receive) }
            if let transmit { configuration.networkInterfaces[index].transmitLimiter = Self.merged(configuration.networkInterfaces[index].transmitLimiter, transmit) }
        }
    }

    /// The balloon, if the machine has one.
    public var balloon: BalloonDevice? { virtioDevice(named: "virtio-balloon") as? BalloonDevice }

    /// A new balloon target (`PATCH /balloon`): at most the guest's memory.
    public func updateBalloon(amountMiB: UInt32) throws {
        guard let balloon else { throw ConfigurationError("the microVM has no balloon") }
        guard UInt64(amountMiB) << 20 <= configuration.memorySize else {
            throw ConfigurationError("amount_mib \(amountMiB) is more than the guest's \(configuration.memorySize >> 20) MiB")
        }
        balloon.setTarget(mib: amountMiB)
        current.withLock { $0.balloon?.amountMiB = amountMiB }
    }

    /// A new statistics polling interval (`PATCH /balloon/statistics`).
    public func updateBalloonStatistics(intervalSeconds: Int) throws {
        try withBalloon { try $0.setStatisticsInterval(.seconds(intervalSeconds)) }
        current.withLock { $0.balloon?.statisticsInterval = intervalSeconds }
    }

    /// `body` with the balloon, its refusals (BalloonError) as ConfigurationErrors.
    public func withBalloon<T>(_ body: (BalloonDevice) throws -> T) throws -> T {
        guard let balloon else { throw ConfigurationError("the microVM has no balloon") }
        do { return try body(balloon) } catch let error as BalloonError { throw ConfigurationError(error.description) }
    }

    private func virtioDevice(named name: String) -> (any VirtioDevice)? {
        devices.transports.first { $0.name == name }?.device
    }

    /// A PATCH's limiter over the one before: each bucket given replaces its
    /// namesake; one of size 0 removes it.
    static func merged(_ old: RateLimiterConfiguration?, _ change: RateLimiterConfiguration) -> RateLimiterConfiguration? {
        var result = old ?? RateLimiterConfiguration()
        if let bandwidth = change.bandwidth { result.bandwidth = bandwidth.size > 0 ? bandwidth : nil }
        if let operations = change.operations { result.operations = operations.size > 0 ? operations : nil }
        return result.bandwidth == nil && result.operations == nil ? nil : result
    }
}
