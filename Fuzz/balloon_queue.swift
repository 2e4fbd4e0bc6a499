// Fuzz target: virtio-balloon queues (inflate and deflate page frames,
// statistics buffers, free page reports) from arbitrary chains, and the
// driver's configuration writes. The third byte picks the queue served.
import Virtio

let balloon = try! BalloonDevice(targetMiB: 1, deflateOnOOM: true, statisticsInterval: .seconds(1), freePageReporting: true)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBalloonQueue(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let (features, queueSize) = FuzzGuest.load(bytes)
    guard let context = FuzzGuest.context(queues: 4, features: features, size: queueSize) else { return 0 }
    try? balloon.activate(context)
    let queue = size > 2 ? Int(bytes[2] % 4) : 0
    try? balloon.process(queue: queue)
    if size > 8 { balloon.writeConfiguration(offset: Int(bytes[3] % 20), bytes: Array(bytes[4..<8])) }
    _ = balloon.configurationSpace
    _ = balloon.status
    balloon.reset()
    return 0
}
