// Fuzz target: the split-queue walker over arbitrary guest RAM.
import GuestMemory
import Virtio

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtqueue(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let (features, queueSize) = FuzzGuest.load(input)
    guard let queue = FuzzGuest.queue(0, size: queueSize, features: features) else { return 0 }
    // Walk every chain the ring offers, read and write through each (as a
    // device would), and return it; stop at the first fault.
    for _ in 0..<Int(queueSize) {
        guard let chain = try? queue.nextOrEnableNotification() else { break }
        var reader = ChainReader(chain, memory: FuzzGuest.memory)
        _ = reader.readBytes(min(reader.remaining, 64))
        var writer = ChainWriter(chain, memory: FuzzGuest.memory)
        writer.write([UInt8](repeating: 0xA5, count: min(writer.remaining, 64)))
        precondition(writer.written <= chain.writableLength)
        queue.complete(chain.head, written: writer.written)
    }
    _ = queue.needsInterrupt()
    return 0
}
