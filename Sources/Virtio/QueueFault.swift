/// Why a virtqueue is malformed. The device stops using the queue, sets
/// DEVICE_NEEDS_RESET and logs the fault once; nothing outside guest RAM is
/// read or written on the way.
public struct QueueFault: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) { self.description = description }
}
