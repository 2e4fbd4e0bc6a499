/// Little-endian integer fields in byte buffers: the layouts virtio defines
/// (request headers, packet headers, configuration spaces).
extension RandomAccessCollection where Element == UInt8, Index == Int {
    /// The integer at `offset` from the start; the caller checked that its bytes are there.
    func littleEndian<T: FixedWidthInteger>(at offset: Int, as _: T.Type = T.self) -> T {
        (0..<MemoryLayout<T>.size).reduce(T.zero) { $0 | T(self[startIndex + offset + $1]) << (8 * $1) }
    }
}

extension Array where Element == UInt8 {
    /// Writes `value` at `offset` (inside the array).
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    /// Appends `value`.
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        for index in 0..<MemoryLayout<T>.size { append(UInt8(truncatingIfNeeded: value >> (8 * index))) }
    }
}
