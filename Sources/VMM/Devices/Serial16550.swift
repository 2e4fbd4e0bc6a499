import Synchronization

/// A 16550A UART (the PC's COM ports): transmit goes to `output`, bytes given
/// to `receive` are read by the guest, and interrupts are raised through
/// `interrupt` (an edge on the UART's IRQ line).
public final class Serial16550: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: every `var` below is read and written only while
    // holding `lock` (vCPU threads and the console reader both call in).
    public static let com1Base: UInt64 = 0x3F8
    public static let com1Interrupt: UInt32 = 4

    private let lock = Mutex(())
    private let output: @Sendable (UInt8) -> Void
    private let interrupt: @Sendable () -> Void

    private var interruptEnable: UInt8 = 0
    private var lineControl: UInt8 = 0x03
    private var modemControl: UInt8 = 0x08  // OUT2
    private var scratch: UInt8 = 0
    private var divisorLow: UInt8 = 0x0C
    private var divisorHigh: UInt8 = 0
    private var fifoEnabled = false
    private var transmitInterruptPending = false
    private var input: [UInt8] = []
    private var inputStart = 0

    public init(output: @escaping @Sendable (UInt8) -> Void, interrupt: @escaping @Sendable () -> Void) {
        self.output = output
        self.interrupt = interrupt
    }

    private var dlab: Bool { lineControl & 0x80 != 0 }
    private var loopback: Bool { modemControl & 0x10 != 0 }
    private var hasInput: Bool { inputStart < input.count }

    /// The registers a snapshot keeps (bytes the guest has not read yet included).
    public struct SavedState: Equatable, Sendable {
        public var interruptEnable: UInt8, lineControl: UInt8, modemControl: UInt8, scratch: UInt8
        public var divisorLow: UInt8, divisorHigh: UInt8
        public var fifoEnabled: Bool, transmitInterruptPending: Bool
        public var unreadInput: [UInt8]

        public init(interruptEnable: UInt8 = 0, lineControl: UInt8 = 0x03, modemControl: UInt8 = 0x08, scratch: UInt8 = 0,
                    divisorLow: UInt8 = 0x0C, divisorHigh: UInt8 = 0, fifoEnabled: Bool = false, transmitInterruptPending: Bool = false,
                    unreadInput: [UInt8] = []) {
            (self.interruptEnable, self.lineControl, self.modemControl, self.scratch) = (interruptEnable, lineControl, modemControl, scratch)
            (self.divisorLow, self.divisorHigh) = (divisorLow, divisorHigh)
            (self.fifoEnabled, self.transmitInterruptPending) = (fifoEnabled, transmitInterruptPending)
            self.unreadInput = unreadInput
        }
    }

    /// The UART's state now (for a snapshot, with the vCPUs paused).
    public var savedState: SavedState {
        lock.withLock { _ in
            SavedState(interruptEnable: interruptEnable, lineControl: lineControl, modemControl: modemControl, scratch: scratch,
                       divisorLow: divisorLow, divisorHigh: divisorHigh, fifoEnabled: fifoEnabled,
                       transmitInterruptPending: transmitInterruptPending, unreadInput: Array(input[inputStart...]))
        }
    }

    /// Puts the UART into a snapshot's state (before any vCPU runs).
    public func restore(_ saved: SavedState) {
        lock.withLock { _ in
            // The masks the register writes apply (IER 4 bits, MCR 5).
            (interruptEnable, lineControl, modemControl, scratch) = (saved.interruptEnable & 0x0F, saved.lineControl, saved.modemControl & 0x1F, saved.scratch)
            (divisorLow, divisorHigh) = (saved.divisorLow, saved.divisorHigh)
            (fifoEnabled, transmitInterruptPending) = (saved.fifoEnabled, saved.transmitInterruptPending)
            input = saved.unreadInput
            inputStart = 0
        }
    }

    /// Queues bytes for the guest to read (from the terminal).
    public func receive(_ bytes: [UInt8]) {
        let raise: Bool = lock.withLock { _ in
            if inputStart > 4096 { input.removeFirst(inputStart); inputStart = 0 }
            input.append(contentsOf: bytes)
            return interruptEnable & 0x01 != 0
        }
        if raise { interrupt() }
    }

    /// IIR: the highest-priority pending interrupt.
    private func identification() -> UInt8 {
        let fifo: UInt8 = fifoEnabled ? 0xC0 : 0
        if interruptEnable & 0x01 != 0 && hasInput { return fifo | 0x04 }
        if interruptEnable & 0x02 != 0 && transmitInterruptPending { return fifo | 0x02 }
        return fifo | 0x01
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        let value: UInt8 = lock.withLock { _ in
            switch offset {
            case 0:
                if dlab { return divisorLow }
                guard hasInput else { return 0 }
                let byte = input[inputStart]
                inputStart += 1
                return byte
            case 1: return dlab ? divisorHigh : interruptEnable
            case 2:
                let identification = identification()
                if identification & 0x0F == 0x02 { transmitInterruptPending = false }  // reading IIR clears THRE
                return identification
            case 3: return lineControl
            case 4: return modemControl
            case 5: return 0x60 | (hasInput ? 0x01 : 0)  // THR empty, transmitter empty, data ready
            case 6:
                if loopback {
                    let mcr = modemControl
                    return ((mcr & 0x08) << 4) | ((mcr & 0x04) << 4) | ((mcr & 0x01) << 5) | ((mcr & 0x02) << 3)
                }
                return 0xB0  // DCD, DSR, CTS
            case 7: return scratch
            default: return 0xFF
            }
        }
        data[0] = value
        for index in data.indices.dropFirst() { data[index] = 0 }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var emitted: UInt8?
        let raise: Bool = lock.withLock { _ in
            switch offset {
            case 0:
                if dlab { divisorLow = value; return false }
                if loopback {
                    input.append(value)
                } else {
                    emitted = value
                }
                transmitInterruptPending = true
                return interruptEnable & 0x02 != 0 || (loopback && interruptEnable & 0x01 != 0)
            case 1:
                if dlab { divisorHigh = value; return false }
                let enablingTransmit = value & 0x02 != 0 && interruptEnable & 0x02 == 0
                interruptEnable = value & 0x0F
                if enablingTransmit { transmitInterruptPending = true }
                return (enablingTransmit) || (value & 0x01 != 0 && hasInput)
            case 2:
                fifoEnabled = value & 0x01 != 0
                if value & 0x02 != 0 { input.removeAll(); inputStart = 0 }
                return false
            case 3: lineControl = value; return false
            case 4: modemControl = value & 0x1F; return false
            case 7: scratch = value; return false
            default: return false
            }
        }
        if let emitted { output(emitted) }
        if raise { interrupt() }
    }
}
