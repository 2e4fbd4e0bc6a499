#if canImport(Glibc)
import Glibc
#endif
import HostSystem

/// Firecracker's boot timer (`--boot-timer`): a guest's one-byte write of
/// 123 at offset 0 of 0xC000_0000 (the start of the 32-bit device hole,
/// Firecracker's BOOT_DEVICE_MEM_START on x86) logs the time since the
/// device was made, at InstanceStart, in wall and CPU microseconds:
///
///     Guest-boot-time =  51234 us 51 ms,  40231 CPU us 40 CPU ms
///
/// Firecracker's own root file systems write it from their init
/// (`devmem 0xc0000000 8 123`).
public final class BootTimer: BusDevice {
    public static let address: UInt64 = 0xC000_0000
    public static let signal: UInt8 = 123
    private let startWall: Int64
    private let startCPU: Int64
    private let log: @Sendable (String) -> Void

    public init(log: @escaping @Sendable (String) -> Void) {
        startWall = HostClock.microseconds(CLOCK_MONOTONIC)
        startCPU = HostClock.microseconds(CLOCK_PROCESS_CPUTIME_ID)
        self.log = log
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 1, data[0] == Self.signal else { return }
        let wall = HostClock.microseconds(CLOCK_MONOTONIC) - startWall
        let cpu = HostClock.microseconds(CLOCK_PROCESS_CPUTIME_ID) - startCPU
        log(Self.line(wall: wall, cpu: cpu))
    }

    /// Firecracker's line, widths included.
    static func line(wall: Int64, cpu: Int64) -> String {
        func padded(_ value: Int64) -> String {
            let text = String(value)
            return String(repeating: " ", count: max(0, 6 - text.count)) + text
        }
        return "Guest-boot-time = \(padded(wall)) us \(wall / 1000) ms, \(padded(cpu)) CPU us \(cpu / 1000) CPU ms"
    }
}
