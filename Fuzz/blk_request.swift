// Fuzz target: virtio-blk requests (header, data, discard ranges, status)
// from arbitrary chains, against a 64 KiB image.
import Glibc
import Virtio

let blockImage: String = {
    let path = "/tmp/kestrel-fuzz-blk-\(getpid()).img"
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    _ = ftruncate(fd, 64 << 10)
    close(fd)
    return path
}()
let blockDevice = try! BlockDevice(path: blockImage, readOnly: false, identifier: "fuzz")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBlockRequest(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let (features, queueSize) = FuzzGuest.load(UnsafeRawBufferPointer(start: data, count: size))
    guard let context = FuzzGuest.context(queues: 1, features: features, size: queueSize) else { return 0 }
    try? blockDevice.activate(context)
    try? blockDevice.process(queue: 0)
    blockDevice.reset()
    return 0
}
