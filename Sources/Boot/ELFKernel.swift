/// A vmlinux ELF64 kernel: its PT_LOAD segments, the 64-bit entry, and the PVH
/// entry from the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY when present.
public struct ELFKernel: Sendable {
    public struct Segment: Equatable, Sendable {
        public let physicalAddress: UInt64
        public let fileOffset: Int
        public let fileSize: Int
        public let memorySize: UInt64
    }

    public let segments: [Segment]
    /// e_entry: the kernel's 64-bit startup_64 (a virtual address for vmlinux).
    public let entry: UInt64
    /// The 32-bit PVH entry (physical), if the kernel has one.
    public let pvhEntry: UInt32?
    public let bytes: [UInt8]

    /// XEN_ELFNOTE_PHYS32_ENTRY.
    public static let pvhNoteType: UInt32 = 18

    public static func looksLikeELF(_ bytes: [UInt8]) -> Bool { bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) }

    public init(_ bytes: [UInt8]) throws {
        guard bytes.count >= 64 else { throw BootError.truncated(what: "the ELF header", needed: 64, available: bytes.count) }
        guard Self.looksLikeELF(bytes) else {
            throw BootError.badMagic(what: "ELF header", expected: "7f 45 4c 46", found: bytes.prefix(4).map { String($0, radix: 16) }.joined(separator: " "))
        }
        guard bytes[4] == 2 else { throw BootError.badELF("not ELF64 (class \(bytes[4]))") }
        guard bytes[5] == 1 else { throw BootError.badELF("not little-endian") }
        let machine = bytes.littleEndian(UInt16.self, at: 18)
        guard machine == 62 else { throw BootError.badELF("machine \(machine) is not x86-64 (62)") }
        entry = bytes.littleEndian(UInt64.self, at: 24)
        let programHeaders = Int(clamping: bytes.littleEndian(UInt64.self, at: 32))
        let entrySize = Int(bytes.littleEndian(UInt16.self, at: 54))
        let count = Int(bytes.littleEndian(UInt16.self, at: 56))
        guard entrySize >= 56, count > 0, programHeaders <= bytes.count,
              count <= (bytes.count - programHeaders) / entrySize else {
            throw BootError.truncated(what: "the ELF program headers", needed: programHeaders + count * max(entrySize, 56), available: bytes.count)
        }
        var segments: [Segment] = []
        var pvh: UInt32?
        for index in 0..<count {
            let base = programHeaders + index * entrySize
            let type = bytes.littleEndian(UInt32.self, at: base)
            let offset = bytes.littleEndian(UInt64.self, at: base + 8)
            let physical = bytes.littleEndian(UInt64.self, at: base + 24)
            let fileSize = bytes.littleEndian(UInt64.self, at: base + 32)
            let memorySize = bytes.littleEndian(UInt64.self, at: base + 40)
            guard offset <= UInt64(bytes.count), fileSize <= UInt64(bytes.count) - offset else {
                throw BootError.truncated(what: "ELF segment \(index)", needed: Int(clamping: offset &+ fileSize), available: bytes.count)
            }
            switch type {
            case 1:  // PT_LOAD
                guard fileSize <= memorySize else { throw BootError.badELF("segment \(index) has p_filesz > p_memsz") }
                guard physical <= UInt64.max - memorySize else { throw BootError.badELF("segment \(index) wraps around the address space") }
                segments.append(Segment(physicalAddress: physical, fileOffset: Int(offset), fileSize: Int(fileSize), memorySize: memorySize))
            case 4:  // PT_NOTE
                pvh = pvh ?? Self.pvhEntry(in: bytes[Int(offset)..<Int(offset + fileSize)])
            default: break
            }
        }
        guard !segments.isEmpty else { throw BootError.badELF("no PT_LOAD segments") }
        for (index, segment) in segments.enumerated() {
            for other in segments[(index + 1)...] where segment.physicalAddress < other.physicalAddress + other.memorySize
                && other.physicalAddress < segment.physicalAddress + segment.memorySize {
                throw BootError.overlap(first: "ELF segment at \(hex(segment.physicalAddress))", second: "ELF segment at \(hex(other.physicalAddress))")
            }
        }
        self.segments = segments
        self.pvhEntry = pvh
        self.bytes = bytes
    }

    /// Walks ELF notes (namesz, descsz, type, name, desc; 4-byte aligned) for the
    /// "Xen" PHYS32_ENTRY note.
    static func pvhEntry(in notes: ArraySlice<UInt8>) -> UInt32? {
        var position = 0
        while notes.count - position >= 12 {
            let nameSize = Int(notes.littleEndian(UInt32.self, at: position))
            let descriptorSize = Int(notes.littleEndian(UInt32.self, at: position + 4))
            let type = notes.littleEndian(UInt32.self, at: position + 8)
            let nameStart = position + 12
            let descriptorStart = nameStart + (nameSize + 3) & ~3
            let next = descriptorStart + (descriptorSize + 3) & ~3
            guard nameSize >= 0, descriptorSize >= 0, next <= notes.count, next > position else { return nil }
            let name = notes[(notes.startIndex + nameStart)..<(notes.startIndex + nameStart + nameSize)]
            if type == pvhNoteType, name.starts(with: [0x58, 0x65, 0x6E]), descriptorSize >= 4 {  // "Xen"
                return notes.littleEndian(UInt32.self, at: descriptorStart)
            }
            position = next
        }
        return nil
    }

    /// The lowest and highest physical addresses the segments cover.
    public var physicalRange: Range<UInt64> {
        let low = segments.map(\.physicalAddress).min()!
        let high = segments.map { $0.physicalAddress + $0.memorySize }.max()!
        return low..<high
    }
}
