/// The PVH boot structures (xen/include/public/arch-x86/hvm/start_info.h):
/// `hvm_start_info` (56 bytes), module entries (32 bytes) and memory-map
/// entries (24 bytes), version 1.
public enum PVHStartInfo {
    public static let magic: UInt32 = 0x336E_C578
    public static let size = 56
    public static let moduleEntrySize = 32
    public static let memoryMapEntrySize = 24

    public static func startInfo(commandLine: UInt64, modules: Int, moduleList: UInt64, memoryMap: UInt64, memoryMapEntries: Int, rsdp: UInt64 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.setLittleEndian(magic, at: 0)
        bytes.setLittleEndian(UInt32(1), at: 4)  // version
        bytes.setLittleEndian(UInt32(0), at: 8)  // flags
        bytes.setLittleEndian(UInt32(modules), at: 12)
        bytes.setLittleEndian(modules > 0 ? moduleList : 0, at: 16)
        bytes.setLittleEndian(commandLine, at: 24)
        bytes.setLittleEndian(rsdp, at: 32)
        bytes.setLittleEndian(memoryMap, at: 40)
        bytes.setLittleEndian(UInt32(memoryMapEntries), at: 48)
        return bytes
    }

    public static func module(_ range: Range<UInt64>) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: moduleEntrySize)
        bytes.setLittleEndian(range.lowerBound, at: 0)
        bytes.setLittleEndian(UInt64(range.count), at: 8)
        return bytes
    }

    public static func memoryMap(_ entries: [E820Entry]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: memoryMapEntrySize * entries.count)
        for (index, entry) in entries.enumerated() {
            bytes.setLittleEndian(entry.address, at: index * memoryMapEntrySize)
            bytes.setLittleEndian(entry.size, at: index * memoryMapEntrySize + 8)
            bytes.setLittleEndian(entry.kind.rawValue, at: index * memoryMapEntrySize + 16)
        }
        return bytes
    }
}
