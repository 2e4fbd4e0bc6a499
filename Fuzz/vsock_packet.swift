// Fuzz target: virtio-vsock packets from the guest (every operation, with
// payloads) and the receive path, plus the CONNECT line parser.
import Glibc
import Virtio

let vsockDevice = try! VsockDevice(guestCID: 3, udsPath: "/tmp/kestrel-fuzz-vsock-\(getpid()).sock")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVsockPacket(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    _ = VsockHandshake.port(fromLine: Array(input.prefix(VsockHandshake.maximumLength)))
    _ = VsockHeader(Array(input.prefix(VsockHeader.size)))
    let (features, queueSize) = FuzzGuest.load(input)
    guard let context = FuzzGuest.context(queues: 3, features: features, size: queueSize) else { return 0 }
    try? vsockDevice.activate(context)
    try? vsockDevice.process(queue: 1)
    try? vsockDevice.process(queue: 0)
    vsockDevice.reset()
    return 0
}
