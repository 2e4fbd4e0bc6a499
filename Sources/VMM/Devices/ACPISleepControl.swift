import Boot

/// The hardware-reduced ACPI sleep control and status registers the FADT
/// announces: writing SLP_EN with the `\_S5` sleep type powers the machine off.
public final class ACPISleepControl: BusDevice {
    private let powerOff: @Sendable () -> Void

    public init(powerOff: @escaping @Sendable () -> Void) { self.powerOff = powerOff }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        for index in data.indices { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard offset == 0, let value = data.first else { return }
        let sleepEnable = value & 0x20 != 0
        let sleepType = (value >> 2) & 0x7
        if sleepEnable && sleepType == ACPITables.softOffSleepType { powerOff() }
    }
}
