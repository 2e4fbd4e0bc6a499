// Fuzz target: virtio-balloon queues (inflate and deflate page frames,
// statistics buffers, free page hints, free page reports) from arbitrary
// chains, and the driver's configuration writes. The third byte picks the
// queue served; an odd fourth byte starts a hinting run first.
import Virtio

let balloon = try! BalloonDevice(targetMiB: 1, deflateOnOOM: true, statisticsInterval: .seconds(1), freePageHinting: true,
                                 freePageReporting: true)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBalloonQueue(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let (features, queueSize) = FuzzGuest.load(bytes)
    guard let context = FuzzGuest.context(queues: 5, features: features, size: queueSize) else { return 0 }
    try? balloon.activate(context)
    if size > 3, bytes[3] & 1 == 1 { try? balloon.startHinting(acknowledgeOnStop: bytes[3] & 2 == 0) }
    let queue = size > 2 ? Int(bytes[2] % 5) : 0
    try? balloon.process(queue: queue)
    _ = try? balloon.hintingStatus()
    if size > 8 { balloon.writeConfiguration(offset: Int(bytes[3] % 20), bytes: Array(bytes[4..<8])) }
    _ = balloon.configurationSpace
    _ = balloon.status
    balloon.reset()
    return 0
}
