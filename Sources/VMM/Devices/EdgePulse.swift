import Synchronization

/// An edge on an interrupt line, raised from any thread: the line goes high
/// and then low as one step. Two threads that each raise and lower the same
/// line on their own can interleave (high, high, low, low), and the irqchip
/// then sees one edge for two. Every line Kestrel raises through
/// KVM_IRQ_LINE goes through one: the serial port's, the i8042's, and the
/// virtio devices' where KVM has no irqfd. The i8042 raises IRQ 1 from the
/// API thread (Ctrl+Alt+Del) and from a vCPU (a read that leaves a byte
/// behind), and a lost edge there left a guest with seven scan codes it was
/// never told of (a CI run of the firecracker-python lab test, 2026-12-07).
final class EdgePulse: Sendable {
    private let lock = Mutex(())
    private let setLine: @Sendable (Bool) -> Void

    init(_ setLine: @escaping @Sendable (Bool) -> Void) { self.setLine = setLine }

    func pulse() {
        lock.withLock { _ in
            setLine(true)
            setLine(false)
        }
    }
}
