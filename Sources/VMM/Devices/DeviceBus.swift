/// A device on the port-I/O or MMIO bus. Offsets are from the device's base.
/// Devices are called from vCPU threads; each device does its own locking,
/// which is why a device must be Sendable.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, from data: UnsafeRawBufferPointer)
}

/// Devices by address range; accesses outside every device read as all ones
/// and writes are dropped, as on a PC bus with nothing decoding them. A value:
/// the machine builder fills it, and the running machine only reads it.
public struct DeviceBus: Sendable {
    private var devices: [(range: Range<UInt64>, device: any BusDevice)] = []

    public init() {}

    /// Adds a device; ranges must not overlap.
    public mutating func add(_ device: any BusDevice, at range: Range<UInt64>) {
        precondition(!devices.contains { $0.range.overlaps(range) }, "bus ranges overlap")
        devices.append((range, device))
        devices.sort { $0.range.lowerBound < $1.range.lowerBound }
    }

    @inline(__always)
    private func device(at address: UInt64) -> (range: Range<UInt64>, device: any BusDevice)? {
        for entry in devices where entry.range.contains(address) { return entry }
        return nil
    }

    /// Handles a read; returns whether a device answered.
    @discardableResult
    public func read(_ address: UInt64, into data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let entry = device(at: address) else {
            for index in data.indices { data[index] = 0xFF }
            return false
        }
        entry.device.read(offset: address - entry.range.lowerBound, into: data)
        return true
    }

    /// Handles a write; returns whether a device took it.
    @discardableResult
    public func write(_ address: UInt64, from data: UnsafeRawBufferPointer) -> Bool {
        guard let entry = device(at: address) else { return false }
        entry.device.write(offset: address - entry.range.lowerBound, from: data)
        return true
    }
}
