/// A small x86-64 assembler for guest programs: the instructions Kestrel's
/// guests need, labels with 32-bit relative fixups, and pooled string data.
///
/// Code is assembled for a fixed load address (`origin`) so that absolute
/// addresses of labels are known. Operand size is 64 bits unless a method's
/// name says otherwise (`movl` 32, `movb` 8).
public final class Assembler {
    /// Guest address where byte 0 of the output will be loaded.
    public let origin: UInt64
    /// The code emitted so far (fixups not yet applied).
    public internal(set) var bytes: [UInt8] = []

    private var labelOffsets: [Int: Int] = [:]
    private var labelCount = 0
    private var fixups: [Fixup] = []
    private var strings: [(label: Label, text: String)] = []
    private var stringLabels: [String: Label] = [:]
    private var errors: [String] = []

    private enum Fixup {
        /// 32-bit displacement at `position`, relative to `end` (next instruction).
        case relative32(position: Int, end: Int, label: Label)
        /// 64-bit absolute address at `position`.
        case absolute64(position: Int, label: Label)
    }

    public init(origin: UInt64) {
        self.origin = origin
    }

    /// Current output offset.
    public var offset: Int { bytes.count }
    /// Guest address of the next byte.
    public var currentAddress: UInt64 { origin + UInt64(bytes.count) }

    // MARK: Labels

    public func newLabel() -> Label {
        labelCount += 1
        return Label(id: labelCount)
    }

    /// Binds a label to the current position.
    public func bind(_ label: Label) {
        if labelOffsets[label.id] != nil { errors.append("label \(label.id) bound twice") }
        labelOffsets[label.id] = bytes.count
    }

    /// A new label bound here.
    public func here() -> Label {
        let label = newLabel()
        bind(label)
        return label
    }

    /// Guest address of a bound label.
    public func address(of label: Label) throws -> UInt64 {
        guard let offset = labelOffsets[label.id] else {
            throw AssemblerError(message: "label \(label.id) is not bound")
        }
        return origin + UInt64(offset)
    }

    /// A label for a NUL-terminated string placed after the code.
    public func string(_ text: String) -> Label {
        if let label = stringLabels[text] { return label }
        let label = newLabel()
        strings.append((label, text))
        stringLabels[text] = label
        return label
    }

    /// Appends the string pool, applies fixups and returns the machine code.
    public func assemble() throws -> [UInt8] {
        for (label, text) in strings where labelOffsets[label.id] == nil {
            bind(label)
            bytes.append(contentsOf: Array(text.utf8) + [0])
        }
        guard errors.isEmpty else { throw AssemblerError(message: errors.joined(separator: "; ")) }
        var output = bytes
        for fixup in fixups {
            switch fixup {
            case .relative32(let position, let end, let label):
                guard let target = labelOffsets[label.id] else {
                    throw AssemblerError(message: "jump or reference to label \(label.id), which is never bound")
                }
                let delta = target - end
                guard let displacement = Int32(exactly: delta) else {
                    throw AssemblerError(message: "label \(label.id) is out of rel32 range")
                }
                withUnsafeBytes(of: displacement.littleEndian) { output.replaceSubrange(position..<position + 4, with: $0) }
            case .absolute64(let position, let label):
                guard let target = labelOffsets[label.id] else {
                    throw AssemblerError(message: "address of label \(label.id), which is never bound")
                }
                let address = origin + UInt64(target)
                withUnsafeBytes(of: address.littleEndian) { output.replaceSubrange(position..<position + 8, with: $0) }
            }
        }
        return output
    }

    // MARK: Raw data

    /// Emits raw bytes (instructions the assembler does not model, or data).
    public func emit(_ raw: [UInt8]) { bytes.append(contentsOf: raw) }
    public func emit(_ raw: UInt8...) { bytes.append(contentsOf: raw) }

    /// Emits a little-endian 64-bit value.
    public func quad(_ value: UInt64) { append(value, 8) }

    /// Pads with `nop` (0x90) to a multiple of `alignment`.
    public func align(_ alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0x90) }
    }

    // MARK: Encoding helpers

    func append<T: FixedWidthInteger>(_ value: T, _ count: Int) {
        var v = value
        for _ in 0..<count {
            bytes.append(UInt8(truncatingIfNeeded: v))
            v = v >> 8
        }
    }

    /// REX prefix with W and the fourth bits of the reg and rm/base fields;
    /// emitted when any bit is set or `force` (byte access to SPL..DIL).
    func rex(w: Bool, reg: UInt8 = 0, rm: UInt8 = 0, force: Bool = false) {
        let value: UInt8 = 0x40 | (w ? 8 : 0) | ((reg >> 3) & 1) << 2 | ((rm >> 3) & 1)
        if value != 0x40 || force { bytes.append(value) }
    }

    func modrm(_ mod: UInt8, _ reg: UInt8, _ rm: UInt8) {
        bytes.append(mod << 6 | (reg & 7) << 3 | (rm & 7))
    }

    /// REX, opcode and ModRM (+SIB, displacement) for a memory operand.
    /// `trailing` is the number of immediate bytes that follow, needed for
    /// RIP-relative displacements.
    func memoryInstruction(w: Bool, opcode: [UInt8], reg: UInt8, _ memory: MemoryOperand,
                           trailing: Int = 0, forceREX: Bool = false) {
        switch memory.base {
        case .ripRelative(let label):
            rex(w: w, reg: reg, force: forceREX)
            bytes.append(contentsOf: opcode)
            modrm(0, reg, 5)
            let position = bytes.count
            append(UInt32(0), 4)
            fixups.append(.relative32(position: position, end: position + 4 + trailing, label: label))
        case .register(let base):
            rex(w: w, reg: reg, rm: base.rawValue, force: forceREX)
            bytes.append(contentsOf: opcode)
            let displacement = memory.displacement
            let mod: UInt8
            if displacement == 0 && base.low3 != 5 { mod = 0 }
            else if Int8(exactly: displacement) != nil { mod = 1 }
            else { mod = 2 }
            modrm(mod, reg, base.low3)
            if base.low3 == 4 { bytes.append(0x24) }  // SIB: base only, no index
            if mod == 1 { bytes.append(UInt8(bitPattern: Int8(displacement))) }
            if mod == 2 { append(displacement, 4) }
        }
    }

    /// An instruction with a register-direct ModRM.
    func registerInstruction(w: Bool, opcode: [UInt8], reg: UInt8, rm: Register64) {
        rex(w: w, reg: reg, rm: rm.rawValue)
        bytes.append(contentsOf: opcode)
        modrm(3, reg, rm.low3)
    }

    /// A branch with a 32-bit displacement to `label`.
    func branch(_ opcode: [UInt8], to label: Label) {
        bytes.append(contentsOf: opcode)
        let position = bytes.count
        append(UInt32(0), 4)
        fixups.append(.relative32(position: position, end: position + 4, label: label))
    }

    func recordAbsolute(_ label: Label) {
        let position = bytes.count
        append(UInt64(0), 8)
        fixups.append(.absolute64(position: position, label: label))
    }
}
