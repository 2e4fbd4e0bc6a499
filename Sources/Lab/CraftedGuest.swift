/// Tiny vmlinux images that run on any KVM (the software one here too) and
/// show on COM1 that they run: for process tests and `kestrel bench`.
/// Each is an ELF with one segment at 16 MiB, entered in 64-bit mode.
public enum CraftedGuest {
    /// `mov dx, 0x3f8; again: mov al, 'x'; out dx, al; mov al, 10; out dx, al;
    /// mov ecx, 100000; dec ecx; jnz .-2; jmp again`: a line of "x" at a
    /// steady pace (about seven a second on this machine's KVM).
    public static func ticker() -> [UInt8] {
        elf([0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x78, 0xEE, 0xB0, 0x0A, 0xEE, 0xB9, 0xA0, 0x86, 0x01, 0x00, 0xFF, 0xC9, 0x75, 0xFC, 0xEB, 0xE9])
    }

    /// Lines that count in EBX, eight hex digits each: `mov dx, 0x3f8; xor
    /// ebx, ebx; line: mov ecx, 8; mov esi, ebx; digit: rol esi, 4; mov eax,
    /// esi; and al, 15; add al, '0'; cmp al, '9'; jbe out; add al, 7; out:
    /// out dx, al; dec ecx; jnz digit; mov al, 10; out dx, al; inc ebx; mov
    /// ecx, 100000; dec ecx; jnz .-2; jmp line`. Every line is the one before
    /// plus one, so output cut anywhere (mid-line too) and continued by a
    /// restored copy reads as one unbroken count.
    public static func counter() -> [UInt8] {
        elf([
            0x66, 0xBA, 0xF8, 0x03, 0x31, 0xDB, 0xB9, 0x08, 0x00, 0x00, 0x00, 0x89, 0xDE, 0xC1, 0xC6, 0x04, 0x89, 0xF0, 0x24, 0x0F,
            0x04, 0x30, 0x3C, 0x39, 0x76, 0x02, 0x04, 0x07, 0xEE, 0xFF, 0xC9, 0x75, 0xEC, 0xB0, 0x0A, 0xEE, 0xFF, 0xC3, 0xB9, 0xA0,
            0x86, 0x01, 0x00, 0xFF, 0xC9, 0x75, 0xFC, 0xEB, 0xD5,
        ])
    }

    /// Writes one dword into each of the 8192 pages from 64 MiB (32 MiB), the
    /// pass count, then prints a line "." and goes again: `mov dx, 0x3f8;
    /// xor ebx, ebx; pass: mov edi, 0x4000000; mov ecx, 8192; write: mov
    /// [rdi], ebx; add edi, 4096; dec ecx; jnz write; mov al, '.'; out dx,
    /// al; mov al, 10; out dx, al; inc ebx; jmp pass`. For dirty logging: every pass dirties the same 8192 pages,
    /// and the dots count the passes. Needs at least 128 MiB of RAM.
    public static func writer() -> [UInt8] {
        elf([
            0x66, 0xBA, 0xF8, 0x03, 0x31, 0xDB, 0xBF, 0x00, 0x00, 0x00, 0x04, 0xB9, 0x00, 0x20, 0x00, 0x00, 0x89, 0x1F, 0x81, 0xC7,
            0x00, 0x10, 0x00, 0x00, 0xFF, 0xC9, 0x75, 0xF4, 0xB0, 0x2E, 0xEE, 0xB0, 0x0A, 0xEE, 0xFF, 0xC3, 0xEB, 0xE0,
        ])
    }

    /// A vmlinux ELF with `code` as its one segment, loaded and entered at 16 MiB.
    public static func elf(_ code: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 120)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: $0) }
        }
        bytes.replaceSubrange(0..<7, with: [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1])
        put(UInt16(2), 16); put(UInt16(62), 18); put(UInt32(1), 20); put(UInt64(0x100_0000), 24); put(UInt64(64), 32)
        put(UInt16(64), 52); put(UInt16(56), 54); put(UInt16(1), 56)
        put(UInt32(1), 64); put(UInt32(5), 68); put(UInt64(120), 72); put(UInt64(0x100_0000), 80); put(UInt64(0x100_0000), 88)
        put(UInt64(code.count), 96); put(UInt64(code.count), 104); put(UInt64(0x1000), 112)
        return bytes + code
    }
}
