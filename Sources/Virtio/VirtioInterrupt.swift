import Synchronization

/// The device's interrupt: the status bits the driver reads and acknowledges
/// (virtio-mmio InterruptStatus/InterruptACK), and the line that tells it to
/// look. In the VMM the line is an irqfd.
public final class VirtioInterrupt: Sendable {
    public struct Reason: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The device used buffers in a queue.
        public static let usedBuffer = Reason(rawValue: 1)
        /// The configuration space changed (or the device needs a reset).
        public static let configurationChange = Reason(rawValue: 2)
    }

    private let pending = Atomic<UInt32>(0)
    private let line: @Sendable () -> Void

    /// `line` raises the interrupt (an edge).
    public init(line: @escaping @Sendable () -> Void) {
        self.line = line
    }

    /// Sets `reason` in the status and raises the line.
    public func raise(_ reason: Reason) {
        pending.bitwiseOr(reason.rawValue, ordering: .sequentiallyConsistent)
        line()
    }

    /// The InterruptStatus register.
    public var status: UInt32 { pending.load(ordering: .sequentiallyConsistent) }

    /// A write to InterruptACK clears those bits.
    public func acknowledge(_ bits: UInt32) {
        pending.bitwiseAnd(~bits, ordering: .sequentiallyConsistent)
    }

    func clear() { pending.store(0, ordering: .sequentiallyConsistent) }

    /// Sets the status bits a snapshot recorded, without raising the line:
    /// the interrupt controller's own restored state says whether the
    /// guest has still to take it.
    func restore(_ bits: UInt32) { pending.store(bits, ordering: .sequentiallyConsistent) }
}
