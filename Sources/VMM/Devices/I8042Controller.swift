import Synchronization

/// Enough of the i8042 keyboard controller for Linux to probe it and to reset
/// the machine through it (command 0xFE pulses the CPU reset line).
public final class I8042Controller: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: every `var` below is read and written only while
    // holding `lock`.
    /// Ports 0x60 (data) and 0x64 (status/command).
    public static let dataPort: UInt64 = 0x60
    public static let commandPort: UInt64 = 0x64

    private let lock = Mutex(())
    private let reset: @Sendable () -> Void
    private var outputQueue: [UInt8] = []
    private var controlByte: UInt8 = 0x45
    private var pendingCommand: UInt8?

    public init(reset: @escaping @Sendable () -> Void) { self.reset = reset }

    /// Bus offsets: 0 is port 0x60, 4 is port 0x64 (the device spans 0x60..<0x65).
    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let value: UInt8 = lock.withLock { _ in
            switch offset {
            case 0: return outputQueue.isEmpty ? 0 : outputQueue.removeFirst()
            case 4: return (outputQueue.isEmpty ? 0 : 0x01) | 0x04  // output buffer full, system flag
            default: return 0xFF
            }
        }
        data[0] = value
        for index in data.indices.dropFirst() { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var resetRequested = false
        lock.withLock { _ in
            switch offset {
            case 4:
                switch value {
                case 0x20: outputQueue.append(controlByte)        // read control byte
                case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: pendingCommand = value  // next data byte is an argument
                case 0xAA: outputQueue.append(0x55)             // controller self-test passed
                case 0xA9, 0xAB: outputQueue.append(0x00)       // port tests passed
                case 0xFE: resetRequested = true                 // pulse the reset line
                default: break                                   // enable/disable ports and others
                }
            case 0:
                switch pendingCommand {
                case 0x60: controlByte = value
                case 0xD1: if value & 0x01 == 0 { resetRequested = true }  // output port with reset low
                case 0xD2, 0xD3: outputQueue.append(value)        // echo as if from the device
                default: outputQueue.append(0xFE)                  // keyboard: resend (no device)
                }
                pendingCommand = nil
            default: break
            }
        }
        if resetRequested { reset() }
    }
}
