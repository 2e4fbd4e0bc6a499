import CKVM
import SystemPackage

extension CPUIDEntry {
    /// Every field zero: an unused slot of a kvm_cpuid2 buffer.
    var isAllZero: Bool { function == 0 && index == 0 && flags == 0 && eax == 0 && ebx == 0 && ecx == 0 && edx == 0 }

    /// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry applies to one sub-leaf only.
    public static let significantIndexFlag: UInt32 = 1 << 0
}

/// A CPUID table, as passed to KVM_SET_CPUID2 or returned by
/// KVM_GET_SUPPORTED_CPUID and KVM_GET_CPUID2.
public struct CPUIDTable: Sendable {
    public var entries: [CPUIDEntry]

    public init(entries: [CPUIDEntry]) { self.entries = entries }

    /// The entry for a leaf and sub-leaf, if present. Entries without the
    /// significant-index flag match any sub-leaf.
    public func entry(function: UInt32, index: UInt32 = 0) -> CPUIDEntry? {
        entries.first {
            $0.function == function
                && ($0.flags & CPUIDEntry.significantIndexFlag == 0 || $0.index == index)
        }
    }

    /// Replaces (or appends) the entry for the same leaf and sub-leaf.
    public mutating func set(_ entry: CPUIDEntry) {
        if let position = entries.firstIndex(where: { $0.function == entry.function && $0.index == entry.index }) {
            entries[position] = entry
        } else {
            entries.append(entry)
        }
    }

    static let headerSize = MemoryLayout<ckvm_cpuid2_header>.size
    static let entryStride = MemoryLayout<ckvm_cpuid_entry2>.stride

    /// Calls `body` with a `struct kvm_cpuid2` buffer holding these entries (or
    /// room for `capacity` of them), then reads the entries back.
    static func withBuffer<R>(capacity: Int, entries: [CPUIDEntry],
                              _ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> (R, [CPUIDEntry]) {
        let count = max(capacity, entries.count)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: headerSize + count * entryStride, alignment: 8)
        defer { buffer.deallocate() }
        // Sound: header plus `count` entries fit in the allocation; the kernel reads
        // or writes at most `nent` entries.
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize + count * entryStride)
        buffer.storeBytes(of: UInt32(entries.isEmpty ? count : entries.count), as: UInt32.self)
        for (position, entry) in entries.enumerated() {
            buffer.storeBytes(of: entry.raw, toByteOffset: headerSize + position * entryStride, as: ckvm_cpuid_entry2.self)
        }
        let result = try body(buffer)
        let returned = min(Int(buffer.load(as: UInt32.self)), count)
        let out = (0..<returned).map {
            CPUIDEntry(buffer.load(fromByteOffset: headerSize + $0 * entryStride, as: ckvm_cpuid_entry2.self))
        }
        return (result, out)
    }

    /// Reads a table with a request that answers E2BIG while the buffer is too
    /// small (KVM_GET_SUPPORTED_CPUID, KVM_GET_CPUID2).
    static func fetch(fileDescriptor: Int32, request: IoctlRequest) throws -> CPUIDTable {
        var capacity = 128
        while true {
            do {
                var (_, entries) = try withBuffer(capacity: capacity, entries: []) {
                    try SystemCall.ioctl(fileDescriptor, request, $0)
                }
                // KVM_GET_CPUID2 in older kernels (seen on 6.1) writes nent back only
                // on E2BIG, so on success it still holds the buffer's capacity. The
                // buffer starts zeroed and no real entry is all zero (leaf 0 names
                // the highest leaf), so trailing all-zero entries are unused room.
                while let last = entries.last, last.isAllZero { entries.removeLast() }
                return CPUIDTable(entries: entries)
            } catch let error as SystemCallError where error.errno == .argListTooLong && capacity < 65536 {
                capacity *= 2
            }
        }
    }
}
