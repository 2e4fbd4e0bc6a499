/// Kestrel's exit device: a guest write of one byte to its MMIO address ends the
/// run with that byte as the exit status (for example `busybox devmem 0xd0000000
/// 8 3`). It gives a guest without ACPI power-off support a way to stop and to
/// report a command's status.
public final class ExitDevice: BusDevice {
    public static let address: UInt64 = 0xD000_0000
    private let exit: @Sendable (UInt8) -> Void

    public init(exit: @escaping @Sendable (UInt8) -> Void) { self.exit = exit }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset == 0, let status = data.first { exit(status) }
    }
}
