import Synchronization

/// The i8042 keyboard controller with an AT keyboard behind it: enough for
/// Linux's i8042 and atkbd drivers to probe both, for the host to type
/// Ctrl+Alt+Del (Firecracker's SendCtrlAltDel), and for the guest to reset
/// the machine (command 0xFE pulses the CPU reset line).
///
/// Bytes for the guest wait in one output queue. A byte from the keyboard
/// raises IRQ 1 when it reaches the output buffer and the control byte
/// enables keyboard interrupts, as the real part does: on the enqueue that
/// fills an empty buffer, and on each read that leaves another byte behind.
/// Answers to controller commands are polled by the guest and raise nothing.
public final class I8042Controller: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: every `var` below is read and written only while
    // holding `lock`.
    /// Ports 0x60 (data) and 0x64 (status/command).
    public static let dataPort: UInt64 = 0x60
    public static let commandPort: UInt64 = 0x64
    /// The ISA interrupt of the keyboard.
    public static let keyboardInterrupt: UInt32 = 1

    /// Control byte bits.
    static let keyboardInterruptEnable: UInt8 = 0x01
    static let translate: UInt8 = 0x40
    /// Keyboard answers.
    static let acknowledge: UInt8 = 0xFA
    static let selfTestPassed: UInt8 = 0xAA
    /// Bytes the output queue holds at most (a keyboard's buffer is smaller);
    /// bytes past it are dropped, so a guest that never reads costs nothing.
    public static let queueLimit = 64

    /// What a snapshot keeps: the control byte, the queue, the keyboard's
    /// scanning flag and a keyboard command waiting for its parameter.
    public struct SavedState: Equatable, Sendable {
        public var controlByte: UInt8
        public var outputQueue: [UInt8]
        public var scanning: Bool
        public var pendingControllerCommand: UInt8?
        public var pendingKeyboardCommand: UInt8?

        public init(controlByte: UInt8 = 0x45, outputQueue: [UInt8] = [], scanning: Bool = true,
                    pendingControllerCommand: UInt8? = nil, pendingKeyboardCommand: UInt8? = nil) {
            self.controlByte = controlByte
            self.outputQueue = outputQueue
            self.scanning = scanning
            self.pendingControllerCommand = pendingControllerCommand
            self.pendingKeyboardCommand = pendingKeyboardCommand
        }
    }

    /// One queued byte, and whether it came from the keyboard (and so may
    /// raise IRQ 1) or answers a controller command.
    private struct QueuedByte {
        let value: UInt8
        let fromKeyboard: Bool
    }

    private let lock = Mutex(())
    private let reset: @Sendable () -> Void
    private let interrupt: @Sendable () -> Void
    private var queue: [QueuedByte] = []
    private var controlByte: UInt8 = 0x45
    private var scanning = true
    private var pendingCommand: UInt8?
    private var pendingKeyboardCommand: UInt8?

    /// `reset` runs when the guest pulses the reset line; `interrupt` raises
    /// an edge on IRQ 1. Both are called without the device's lock held.
    public init(reset: @escaping @Sendable () -> Void, interrupt: @escaping @Sendable () -> Void = {}) {
        self.reset = reset
        self.interrupt = interrupt
    }

    /// Bus offsets: 0 is port 0x60, 4 is port 0x64 (the device spans 0x60..<0x65).
    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        var raise = false
        let value: UInt8 = lock.withLock { _ in
            switch offset {
            case 0:
                guard !queue.isEmpty else { return 0 }
                let byte = queue.removeFirst()
                raise = queue.first.map(interrupts) ?? false
                return byte.value
            case 4: return (queue.isEmpty ? 0 : 0x01) | 0x04 | 0x10  // output buffer full, system flag, keyboard not locked
            default: return 0xFF
            }
        }
        data[0] = value
        for index in data.indices.dropFirst() { data[index] = 0 }
        if raise { interrupt() }
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        var resetRequested = false, raise = false
        lock.withLock { _ in
            switch offset {
            case 4:
                switch value {
                case 0x20: raise = enqueue([controlByte], fromKeyboard: false)  // read control byte
                case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: pendingCommand = value  // next data byte is an argument
                case 0xAA: raise = enqueue([0x55], fromKeyboard: false)     // controller self-test passed
                case 0xA9, 0xAB: raise = enqueue([0x00], fromKeyboard: false)  // port tests passed
                case 0xFE: resetRequested = true                 // pulse the reset line
                default: break                                   // enable/disable ports and others
                }
            case 0:
                switch pendingCommand {
                case 0x60: controlByte = value
                case 0xD1: if value & 0x01 == 0 { resetRequested = true }  // output port with reset low
                case 0xD2: raise = enqueue([value], fromKeyboard: true)    // as if typed
                case 0xD3: raise = enqueue([value], fromKeyboard: false)   // as if from the (absent) mouse
                case 0xD4: raise = enqueue([0xFE], fromKeyboard: false)    // mouse: resend (no device)
                default: raise = enqueue(keyboardAnswer(to: value), fromKeyboard: true)
                }
                pendingCommand = nil
            default: break
            }
        }
        if resetRequested { reset() }
        if raise { interrupt() }
    }

    /// Types Ctrl+Alt+Del: presses and releases, in scan code set 1 when the
    /// controller translates (the usual case) and set 2 when it does not.
    /// Returns false, typing nothing, while the keyboard is not scanning or
    /// its buffer is full (the guest is not reading it).
    @discardableResult
    public func typeControlAltDelete() -> Bool {
        let raise: Bool? = lock.withLock { _ in
            guard scanning, queue.count + 11 <= Self.queueLimit else { return nil }
            let codes: [UInt8] = controlByte & Self.translate != 0
                ? [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]
                : [0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14]
            return enqueue(codes, fromKeyboard: true)
        }
        guard let raise else { return false }
        if raise { interrupt() }
        return true
    }

    /// The device's state, for a snapshot.
    public var savedState: SavedState {
        lock.withLock { _ in
            SavedState(controlByte: controlByte, outputQueue: queue.map(\.value), scanning: scanning,
                       pendingControllerCommand: pendingCommand, pendingKeyboardCommand: pendingKeyboardCommand)
        }
    }

    /// Puts a snapshot's state back (before any vCPU runs). It raises
    /// nothing: an interrupt the guest had not taken yet is in the
    /// irqchip's own saved state.
    public func restore(_ state: SavedState) {
        lock.withLock { _ in
            controlByte = state.controlByte
            queue = state.outputQueue.map { QueuedByte(value: $0, fromKeyboard: true) }
            scanning = state.scanning
            pendingCommand = state.pendingControllerCommand
            pendingKeyboardCommand = state.pendingKeyboardCommand
        }
    }

    // MARK: - Under the lock

    /// Appends `bytes`; true when the first of them reached an empty output
    /// buffer and raises IRQ 1.
    private func enqueue(_ bytes: [UInt8], fromKeyboard: Bool) -> Bool {
        let wasEmpty = queue.isEmpty
        guard queue.count + bytes.count <= Self.queueLimit else { return false }
        queue += bytes.map { QueuedByte(value: $0, fromKeyboard: fromKeyboard) }
        return wasEmpty && queue.first.map(interrupts) == true
    }

    private func interrupts(_ byte: QueuedByte) -> Bool {
        byte.fromKeyboard && controlByte & Self.keyboardInterruptEnable != 0
    }

    /// What the keyboard answers to a byte the guest sends it (atkbd's
    /// commands): ACK, and for some commands more bytes after it.
    private func keyboardAnswer(to byte: UInt8) -> [UInt8] {
        if pendingKeyboardCommand != nil {
            // The parameter of set-LEDs, set-typematic or select-scan-set.
            defer { pendingKeyboardCommand = nil }
            if pendingKeyboardCommand == 0xF0 && byte == 0 { return [Self.acknowledge, controlByte & Self.translate != 0 ? 0x41 : 0x02] }
            return [Self.acknowledge]
        }
        switch byte {
        case 0xFF:  // reset: ACK, then the self-test result; scanning on
            scanning = true
            return [Self.acknowledge, Self.selfTestPassed]
        case 0xF2:  // identify: an MF2 keyboard (0x83 reads as 0x41 through translation)
            return [Self.acknowledge, 0xAB, controlByte & Self.translate != 0 ? 0x41 : 0x83]
        case 0xED, 0xF3, 0xF0:  // a parameter follows
            pendingKeyboardCommand = byte
            return [Self.acknowledge]
        case 0xF4: scanning = true; return [Self.acknowledge]
        case 0xF5: scanning = false; return [Self.acknowledge]
        case 0xF6: scanning = true; return [Self.acknowledge]
        case 0xEE: return [0xEE]  // echo
        case 0xFE: return []  // resend: nothing was lost
        default: return [Self.acknowledge]
        }
    }
}
