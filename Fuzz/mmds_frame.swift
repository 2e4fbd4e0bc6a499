// Fuzz target: the MMDS network stack the guest's frames reach. The input is
// a series of frames, each led by a length byte; every frame the stack
// claims is taken, and after each one the stack's frames for the guest are
// drained and checked (Ethernet to the guest, never empty). A SYN to port 80
// is made often enough by patching: byte 0's low bit turns the first frame
// into a well-formed TCP SYN so that the connection paths are reached.
import Metadata
import WireFormats

let service: MetadataService = {
    let service = MetadataService()
    try! service.put(.object(["latest": .object(["meta-data": .object(["id": .string("i-fuzz")])])]))
    service.configure(version: .v2, imdsCompatible: false)
    return service
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadataFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let stack = MetadataNetworkStack(service: service)
    let guestMAC: [UInt8] = [6, 0, 0, 0, 0, 2], guestIP: [UInt8] = [169, 254, 1, 2]
    var rest = bytes.dropFirst()
    var first = true
    while let length = rest.first {
        rest = rest.dropFirst()
        var body = Array(rest.prefix(Int(length)))
        rest = rest.dropFirst(Int(length))
        if first && bytes[0] & 1 == 1 {
            // Ethernet, IPv4 to the MMDS, then TCP to port 80 with this frame's bytes as flags and payload.
            var ip: [UInt8] = [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0] + guestIP + MetadataConfiguration.defaultIPv4Address
            let tcp: [UInt8] = [0x9C, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, body.first ?? 2, 0xFF, 0xFF, 0, 0, 0, 0] + body.dropFirst()
            let total = 20 + tcp.count
            ip[2] = UInt8(total >> 8)
            ip[3] = UInt8(total & 0xFF)
            body = MetadataConfiguration.macAddress + guestMAC + [8, 0] + ip + tcp
        }
        first = false
        if stack.claims(Array(body.prefix(stack.decisionLength))) { stack.receive(body) }
        var drained = 0
        while let frame = stack.nextFrame() {
            precondition(frame.count >= 42, "a frame for the guest has at least Ethernet and ARP or IPv4 headers")
            drained += 1
            precondition(drained <= 10_000, "the stack keeps making frames")
        }
    }
    return 0
}
