/// A small encoder for the ACPI Machine Language that Kestrel's DSDT needs:
/// scopes, devices, named objects, EISA ids and resource templates (ACPI 6.5,
/// section 20 for the grammar, section 6.4 for the resource descriptors).
public enum AML {
    /// The encoding of a PkgLength covering `contentLength` bytes that follow it
    /// (the length counts the PkgLength bytes themselves).
    static func packageLength(_ contentLength: Int) -> [UInt8] {
        if contentLength + 1 < 64 { return [UInt8(contentLength + 1)] }
        for extra in 1...3 {
            let total = contentLength + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var bytes = [UInt8(extra << 6) | UInt8(total & 0x0F)]
            for index in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * index))) }
            return bytes
        }
        preconditionFailure("AML package of \(contentLength) bytes exceeds 256 MiB")
    }

    /// A four-character name segment ("_HID", "COM1"); shorter names are padded with "_".
    static func nameSegment(_ name: String) -> [UInt8] {
        let bytes = Array(name.utf8)
        precondition(bytes.count <= 4 && !bytes.isEmpty, "AML name segment \(name)")
        return bytes + [UInt8](repeating: 0x5F, count: 4 - bytes.count)
    }

    /// A name string: "\\" for the root prefix, then one or more dot-separated segments.
    static func nameString(_ path: String) -> [UInt8] {
        var rest = Substring(path)
        var bytes: [UInt8] = []
        if rest.hasPrefix("\\") { bytes.append(0x5C); rest = rest.dropFirst() }
        let segments = rest.split(separator: ".").map { nameSegment(String($0)) }
        switch segments.count {
        case 1: bytes += segments[0]
        case 2: bytes += [0x2E] + segments[0] + segments[1]                 // DualNamePrefix
        default: bytes += [0x2F, UInt8(segments.count)] + segments.joined()  // MultiNamePrefix
        }
        return bytes
    }

    /// An integer constant in its shortest form (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix).
    public static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: return [0x00]
        case 1: return [0x01]
        case ...0xFF: return [0x0A, UInt8(value)]
        case ...0xFFFF: return [0x0B] + littleEndian(UInt16(value))
        case ...0xFFFF_FFFF: return [0x0C] + littleEndian(UInt32(value))
        default: return [0x0E] + littleEndian(value)
        }
    }

    /// The compressed EISA id of a PNP id such as "PNP0501", as a DWord constant.
    public static func eisaID(_ id: String) -> [UInt8] {
        let bytes = Array(id.utf8)
        precondition(bytes.count == 7, "EISA id \(id)")
        let letters = bytes[0..<3].map { UInt32($0 - 0x40) & 0x1F }
        let digits = bytes[3..<7].map { UInt32(Int(String(UnicodeScalar($0)), radix: 16) ?? 0) }
        // Big-endian in the id's byte order: 5-bit letters, then four hex digits.
        let value = letters[0] << 26 | letters[1] << 21 | letters[2] << 16 | digits[0] << 12 | digits[1] << 8 | digits[2] << 4 | digits[3]
        return [0x0C] + littleEndian(value.byteSwapped)
    }

    /// A string constant ("LNRO0005").
    public static func string(_ text: String) -> [UInt8] {
        [0x0D] + Array(text.utf8) + [0x00]
    }

    /// Name (name, object).
    public static func name(_ name: String, _ object: [UInt8]) -> [UInt8] {
        [0x08] + nameString(name) + object
    }

    /// Scope (path) { terms }.
    public static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.joined()
        return [0x10] + packageLength(body.count) + body
    }

    /// Device (name) { terms }.
    public static func device(_ name: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(name) + terms.joined()
        return [0x5B, 0x82] + packageLength(body.count) + body
    }

    /// Buffer () { bytes }.
    public static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let body = integer(UInt64(bytes.count)) + bytes
        return [0x11] + packageLength(body.count) + body
    }

    /// Resource descriptors for a ResourceTemplate.
    public enum Resource: Equatable, Sendable {
        /// IO (Decode16, base, base, alignment 1, length): an I/O port range.
        case ioPorts(base: UInt16, length: UInt8)
        /// IRQNoFlags () { line }: an ISA interrupt, edge-triggered, active high.
        case isaInterrupt(UInt8)
        /// Memory32Fixed (ReadWrite, base, length): a memory-mapped register window.
        case memory32(base: UInt32, length: UInt32)
        /// Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }: an
        /// extended interrupt descriptor naming one GSI.
        case edgeInterrupt(UInt32)

        var bytes: [UInt8] {
            switch self {
            case .ioPorts(let base, let length):
                return [0x47, 0x01] + littleEndian(base) + littleEndian(base) + [0x01, length]
            case .isaInterrupt(let line):
                return [0x22] + littleEndian(UInt16(1) << UInt16(line & 15))
            case .memory32(let base, let length):
                return [0x86, 0x09, 0x00, 0x01] + littleEndian(base) + littleEndian(length)
            case .edgeInterrupt(let gsi):
                // Flags: consumer (bit 0), edge (bit 1); active high, exclusive.
                return [0x89, 0x06, 0x00, 0x03, 0x01] + littleEndian(gsi)
            }
        }
    }

    /// ResourceTemplate () { resources }: a buffer of descriptors ended by the End Tag
    /// (checksum 0, "treated as if the checksum operation succeeded").
    public static func resourceTemplate(_ resources: [Resource]) -> [UInt8] {
        buffer(resources.flatMap(\.bytes) + [0x79, 0x00])
    }

    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }
}
