@testable import Boot

/// Hand-made kernel images for the loader tests.
enum CraftedImages {
    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    /// A bzImage: 4 setup sectors, header fields as given, a protected-mode part
    /// of `kernelSize` bytes whose payload is `payload`.
    static func bzImage(version: UInt16 = 0x020F, xloadflags: UInt16 = 0x7F, loadflags: UInt8 = 0x01, kernelSize: Int = 8192,
                        payload: [UInt8] = [0x02, 0x21, 0x4C, 0x18, 0, 0, 0, 0], initSize: UInt32 = 0x40_0000,
                        initrdAddressMax: UInt32 = 0x7FFF_FFFF, commandLineSize: UInt32 = 2047, alignment: UInt32 = 0x20_0000) -> [UInt8] {
        let setupSectors = 4
        var image = [UInt8](repeating: 0, count: (setupSectors + 1) * 512 + max(kernelSize, payload.count + 0x100))
        image[0x1F1] = UInt8(setupSectors)
        put(UInt16(0xAA55), at: 0x1FE, in: &image)
        image[0x200] = 0xEB          // jmp
        image[0x201] = 0x6A          // header ends at 0x202 + 0x6A = 0x26C
        put(UInt32(0x5372_6448), at: 0x202, in: &image)
        put(version, at: 0x206, in: &image)
        image[0x211] = loadflags
        put(UInt32(0x10_0000), at: 0x214, in: &image)
        put(initrdAddressMax, at: 0x22C, in: &image)
        put(alignment, at: 0x230, in: &image)
        image[0x234] = 1
        put(xloadflags, at: 0x236, in: &image)
        put(commandLineSize, at: 0x238, in: &image)
        put(UInt32(0x100), at: 0x248, in: &image)  // payload offset inside the protected-mode part
        put(UInt32(payload.count), at: 0x24C, in: &image)
        put(UInt64(0x100_0000), at: 0x258, in: &image)
        put(initSize, at: 0x260, in: &image)
        let payloadStart = (setupSectors + 1) * 512 + 0x100
        image.replaceSubrange(payloadStart..<(payloadStart + payload.count), with: payload)
        return image
    }

    /// A vmlinux ELF64 with the given PT_LOAD segments (physical address, file bytes,
    /// memory size) and, optionally, a Xen PHYS32_ENTRY note.
    static func elf(entry: UInt64 = 0x100_0000, segments: [(UInt64, [UInt8], UInt64)], pvhEntry: UInt32? = nil) -> [UInt8] {
        let headerCount = segments.count + (pvhEntry == nil ? 0 : 1)
        var bytes = [UInt8](repeating: 0, count: 64 + 56 * headerCount)
        bytes.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        bytes[4] = 2; bytes[5] = 1; bytes[6] = 1
        put(UInt16(2), at: 16, in: &bytes)
        put(UInt16(62), at: 18, in: &bytes)
        put(entry, at: 24, in: &bytes)
        put(UInt64(64), at: 32, in: &bytes)
        put(UInt16(56), at: 54, in: &bytes)
        put(UInt16(headerCount), at: 56, in: &bytes)
        for (index, segment) in segments.enumerated() {
            let base = 64 + 56 * index
            put(UInt32(1), at: base, in: &bytes)
            put(UInt64(bytes.count), at: base + 8, in: &bytes)
            put(segment.0, at: base + 24, in: &bytes)
            put(UInt64(segment.1.count), at: base + 32, in: &bytes)
            put(segment.2, at: base + 40, in: &bytes)
            bytes += segment.1
        }
        if let pvhEntry {
            let base = 64 + 56 * segments.count
            var note: [UInt8] = []
            note += [4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0] + Array("Xen\0".utf8)
            note += [UInt8(pvhEntry & 0xFF), UInt8(pvhEntry >> 8 & 0xFF), UInt8(pvhEntry >> 16 & 0xFF), UInt8(pvhEntry >> 24)]
            put(UInt32(4), at: base, in: &bytes)
            put(UInt64(bytes.count), at: base + 8, in: &bytes)
            put(UInt64(note.count), at: base + 32, in: &bytes)
            bytes += note
        }
        return bytes
    }
}
