/// A service inside the VMM that answers some of a virtio-net guest's frames
/// itself (Firecracker's MMDS) instead of the endpoint. Frames here are
/// Ethernet frames without the virtio-net header.
///
/// The device calls both methods on its event loop's thread only.
public protocol FrameInterceptor: AnyObject, Sendable {
    /// The number of leading bytes `claims` needs to decide (Ethernet, IPv4
    /// and TCP headers); the device reads no more for frames it forwards.
    var decisionLength: Int { get }

    /// Whether a frame whose first bytes are `prefix` is the interceptor's
    /// (then the device hands it the whole frame rather than the endpoint).
    func claims(_ prefix: [UInt8]) -> Bool

    /// Takes a claimed frame from the guest.
    func receive(_ frame: [UInt8])

    /// The next frame for the guest, if the interceptor has one; the device
    /// delivers these before the endpoint's frames, and asks again whenever
    /// the guest gives it receive buffers.
    func nextFrame() -> [UInt8]?
}
