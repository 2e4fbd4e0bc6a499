// Fuzz target: the snapshot state file (PUT /snapshot/load reads it from a
// path the API client names). Each input is decoded as it is, and again
// framed as this format version would frame it (magic, version, the input
// as the section list, a matching CRC-32), so the fuzzer reaches the section
// readers instead of stopping at the CRC. Whatever decodes must encode and
// decode back to the same snapshot.
import VMM

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSnapshotState(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? MachineSnapshot.decode(bytes)
    var framed = MachineSnapshot.magic
    withUnsafeBytes(of: MachineSnapshot.formatVersion.littleEndian) { framed += $0 }
    framed += bytes
    withUnsafeBytes(of: CRC32.checksum(framed[...]).littleEndian) { framed += $0 }
    if let snapshot = try? MachineSnapshot.decode(framed) {
        guard let again = try? MachineSnapshot.decode(snapshot.encoded()), again == snapshot else {
            fatalError("a decoded snapshot does not survive encoding")
        }
    }
    return 0
}
