// Fuzz target: virtio-net transmit chains and receive buffers, with a
// datagram socket pair in place of the tap.
import Glibc
import HostSystem
import Virtio

final class PairEndpoint: PacketEndpoint {
    let fileDescriptor: Int32
    let peer: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &fds) == 0)
        fileDescriptor = fds[0]
        peer = fds[1]
        try! UnixSocket.setNonBlocking(fds[0])
        try! UnixSocket.setNonBlocking(fds[1])
    }
    func acceptOffloads(guestFeatures: UInt64) throws {}
}

let endpoint = PairEndpoint()
let netDevice = try! NetDevice(endpoint: endpoint, mac: [2, 0, 0, 0, 0, 1])

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetFrame(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let (features, queueSize) = FuzzGuest.load(input)
    guard let context = FuzzGuest.context(queues: 2, features: features, size: queueSize) else { return 0 }
    // A frame waits on the endpoint for the receive path.
    _ = send(endpoint.peer, input.baseAddress, min(size, 1600), 0)
    try? netDevice.activate(context)
    try? netDevice.process(queue: 1)
    try? netDevice.process(queue: 0)
    netDevice.reset()
    // Drain both directions so nothing piles up between runs.
    var sink = [UInt8](repeating: 0, count: 70000)
    while sink.withUnsafeMutableBytes({ recv(endpoint.peer, $0.baseAddress, $0.count, 0) }) > 0 {}
    while sink.withUnsafeMutableBytes({ recv(endpoint.fileDescriptor, $0.baseAddress, $0.count, 0) }) > 0 {}
    return 0
}
