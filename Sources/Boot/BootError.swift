/// Why a kernel, initrd or boot layout was refused. Every case names the
/// problem; all are found before a VM exists.
public enum BootError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncated(what: String, needed: Int, available: Int)
    case badMagic(what: String, expected: String, found: String)
    case protocolTooOld(version: UInt16, minimum: UInt16)
    case notSixtyFourBit(String)
    case notLoadable(String)
    case outsideGuestMemory(what: String, address: UInt64, size: UInt64, memorySize: UInt64)
    case overlap(first: String, second: String)
    case commandLineTooLong(length: Int, maximum: Int)
    case initrdDoesNotFit(size: UInt64, below: UInt64)
    case unsupportedCompression(String)
    case decompression(String)
    case badELF(String)

    public var description: String {
        switch self {
        case .truncated(let what, let needed, let available):
            return "\(what) is truncated: needs \(needed) bytes, has \(available)"
        case .badMagic(let what, let expected, let found):
            return "\(what): wrong magic (expected \(expected), found \(found))"
        case .protocolTooOld(let version, let minimum):
            return "boot protocol \(version >> 8).\(String(format2(version & 0xFF))) is too old: Kestrel needs \(minimum >> 8).\(String(format2(minimum & 0xFF))) or later (64-bit entry, relocatable kernels)"
        case .notSixtyFourBit(let reason): return "the kernel has no 64-bit entry point: \(reason)"
        case .notLoadable(let reason): return reason
        case .outsideGuestMemory(let what, let address, let size, let memorySize):
            return "\(what) at 0x\(String(address, radix: 16)) (+0x\(String(size, radix: 16))) lies outside the guest's 0x\(String(memorySize, radix: 16)) bytes of memory"
        case .overlap(let first, let second): return "\(first) overlaps \(second)"
        case .commandLineTooLong(let length, let maximum):
            return "the command line has \(length) bytes; this kernel accepts at most \(maximum)"
        case .initrdDoesNotFit(let size, let below):
            return "the initrd (\(size) bytes) does not fit in guest memory below 0x\(String(below, radix: 16)) without overlapping the kernel; give the guest more memory"
        case .unsupportedCompression(let name): return "the kernel payload is compressed with \(name), which Kestrel cannot decompress"
        case .decompression(let reason): return "decompressing the kernel payload failed: \(reason)"
        case .badELF(let reason): return "not a loadable x86-64 ELF kernel: \(reason)"
        }
    }
}

private func format2(_ value: UInt16) -> String { value < 10 ? "0\(value)" : "\(value)" }
