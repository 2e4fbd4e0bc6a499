/// A long-mode guest program under construction: test code written with the
/// assembler, plus ucall and assertion helpers, plus the runtime (one IDT stub
/// per vector and a common handler) appended by `build()`.
///
/// Register use: the helpers save and restore what they touch, so test code
/// sees all registers preserved across `sync`, `print` and assertions.
public final class GuestProgram {
    public let layout: LongModeLayout
    public let assembler: Assembler

    public init(layout: LongModeLayout = LongModeLayout()) {
        self.layout = layout
        self.assembler = Assembler(origin: layout.codeAddress)
    }

    // MARK: Ucalls

    /// Emits a ucall of `kind` with up to six values and an optional message.
    public func ucall(_ kind: UcallRecord.Kind, _ values: [GuestValue] = [], message: String? = nil) {
        precondition(values.count <= UcallRecord.maximumValues, "a ucall carries at most six values")
        let a = assembler
        a.push(.rax)
        a.push(.rdx)
        a.push(.r11)
        a.mov(.r11, layout.ucallRecordAddress)
        for (position, value) in values.enumerated() {
            load(value, into: .rax, savedRAX: 16, savedRDX: 8, savedR11: 0)
            a.mov(.at(.r11, UcallRecord.valuesOffset + Int32(8 * position)), .rax)
        }
        a.mov(.rax, UInt64(values.count))
        a.mov(.at(.r11, UcallRecord.countOffset), .rax)
        if let message {
            a.lea(.rax, .rip(a.string(message)))
        } else {
            a.mov(.rax, 0)
        }
        a.mov(.at(.r11, UcallRecord.messageOffset), .rax)
        a.mov(.rax, kind.rawValue)
        a.mov(.at(.r11, UcallRecord.kindOffset), .rax)
        a.mov(.rax, layout.ucallRecordAddress)
        a.mov(.rdx, UInt64(ucallPort))
        a.outDX(size: 4)
        a.pop(.r11)
        a.pop(.rdx)
        a.pop(.rax)
    }

    /// Loads a value into `target` inside a ucall sequence, reading the saved
    /// copies of the registers the sequence itself clobbers.
    private func load(_ value: GuestValue, into target: Register64, savedRAX: Int32, savedRDX: Int32, savedR11: Int32) {
        switch value {
        case .immediate(let constant): assembler.mov(target, constant)
        case .register(.rax): assembler.mov(target, .at(.rsp, savedRAX))
        case .register(.rdx): assembler.mov(target, .at(.rsp, savedRDX))
        case .register(.r11): assembler.mov(target, .at(.rsp, savedR11))
        case .register(let register): assembler.mov(target, register)
        }
    }

    /// SYNC: the guest reached `stage`; the host checks `values` (up to five).
    public func sync(stage: UInt64, _ values: GuestValue...) {
        ucall(.sync, [.immediate(stage)] + values)
    }

    /// PRINT: a message (and values) for the host's log.
    public func print(_ message: String, _ values: GuestValue...) {
        ucall(.print, values, message: message)
    }

    /// DONE, then halt forever (the host does not resume a finished guest).
    public func done() {
        ucall(.done)
        hang()
    }

    /// `hlt` in a loop.
    public func hang() {
        let loop = assembler.here()
        assembler.hlt()
        assembler.jmp(loop)
    }

    /// Asserts `register == value`; on failure makes an ASSERT ucall carrying
    /// (actual, expected) and the message with the Swift source location.
    public func assertEqual(_ register: Register64, _ value: GuestValue, _ message: String,
                            file: StaticString = #fileID, line: UInt = #line) {
        let a = assembler
        let pass = a.newLabel()
        let scratch: Register64 = register == .rbx ? .rcx : .rbx
        a.push(scratch)
        switch value {
        case .immediate(let constant): a.mov(scratch, constant)
        case .register(let other): a.mov(scratch, other)
        }
        a.cmp(register, scratch)
        a.pop(scratch)  // pop leaves flags alone
        a.j(.equal, pass)
        ucall(.assertFailed, [.register(register), value], message: "\(message) [\(file):\(line)]")
        hang()
        a.bind(pass)
    }

    // MARK: Expected exceptions

    /// Runs `body` with a resume address armed: if it raises an exception, the
    /// handler reports it to the host (as an expected exception) and resumes
    /// after `body` instead of halting. Returns the resume label (the address
    /// right after `body`).
    @discardableResult
    public func expectingException(_ body: () -> Void) -> Label {
        let a = assembler
        let resume = a.newLabel()
        a.push(.rax)
        a.push(.r11)
        a.mov(.r11, layout.exceptionFixupAddress)
        a.lea(.rax, .rip(resume))
        a.mov(.at(.r11), .rax)
        a.pop(.r11)
        a.pop(.rax)
        body()
        a.bind(resume)
        // Disarm, whether or not an exception consumed the fixup.
        a.push(.r11)
        a.mov(.r11, layout.exceptionFixupAddress)
        a.mov(.at(.r11), immediate: 0)
        a.pop(.r11)
        return resume
    }

    // MARK: Build

    /// Appends the runtime, assembles, and returns the image with the address
    /// of every IDT stub.
    public func build() throws -> AssembledGuest {
        let a = assembler
        let common = a.newLabel()
        var stubs: [Label] = []
        for vector in 0...255 {
            let stub = a.here()
            stubs.append(stub)
            if !GuestException.vectorsWithErrorCode.contains(UInt8(vector)) { a.push(immediate: 0) }
            a.push(immediate: Int32(vector))
            a.jmp(common)
        }
        a.bind(common)
        emitCommonHandler()
        let code = try a.assemble()
        let stubAddresses = try stubs.map { try a.address(of: $0) }
        return AssembledGuest(layout: layout, code: code, entry: layout.codeAddress,
                              stubAddresses: stubAddresses, assembler: a)
    }

    /// The handler every stub jumps to. Stack on entry: vector, error code,
    /// then the CPU's frame (RIP, CS, RFLAGS, RSP, SS).
    private func emitCommonHandler() {
        let a = assembler
        a.push(.rax)
        a.push(.rdx)
        a.push(.r11)
        // Offsets from RSP now: r11 0, rdx 8, rax 16, vector 24, error 32, rip 40.
        a.mov(.r11, layout.ucallRecordAddress)
        a.mov(.rax, .at(.rsp, 24))
        a.mov(.at(.r11, UcallRecord.valuesOffset), .rax)
        a.mov(.rax, .at(.rsp, 32))
        a.mov(.at(.r11, UcallRecord.valuesOffset + 8), .rax)
        a.mov(.rax, .at(.rsp, 40))
        a.mov(.at(.r11, UcallRecord.valuesOffset + 16), .rax)
        a.mov(.rax, .cr2)
        a.mov(.at(.r11, UcallRecord.valuesOffset + 24), .rax)
        a.mov(.rax, layout.exceptionFixupAddress)
        a.mov(.rax, .at(.rax))
        a.mov(.at(.r11, UcallRecord.valuesOffset + 32), .rax)
        a.mov(.rax, 5)
        a.mov(.at(.r11, UcallRecord.countOffset), .rax)
        a.mov(.rax, 0)
        a.mov(.at(.r11, UcallRecord.messageOffset), .rax)
        a.mov(.rax, UcallRecord.Kind.exception.rawValue)
        a.mov(.at(.r11, UcallRecord.kindOffset), .rax)
        a.mov(.rax, layout.ucallRecordAddress)
        a.mov(.rdx, UInt64(ucallPort))
        a.outDX(size: 4)
        // Resume at the armed fixup, or halt forever.
        let unarmed = a.newLabel()
        a.mov(.rax, layout.exceptionFixupAddress)
        a.mov(.rdx, .at(.rax))
        a.test(.rdx, .rdx)
        a.j(.equal, unarmed)
        a.mov(.at(.rax), immediate: 0)
        a.mov(.at(.rsp, 40), .rdx)
        a.pop(.r11)
        a.pop(.rdx)
        a.pop(.rax)
        a.add(.rsp, 16)
        a.iretq()
        a.bind(unarmed)
        hang()
    }
}

/// A built guest: machine code, where it loads, and where its stubs are.
public struct AssembledGuest {
    public let layout: LongModeLayout
    public let code: [UInt8]
    public let entry: UInt64
    /// Address of the IDT stub of each vector, 0 through 255.
    public let stubAddresses: [UInt64]
    let assembler: Assembler

    /// Address of a label of the program (e.g. to compare with a reported RIP).
    public func address(of label: Label) throws -> UInt64 { try assembler.address(of: label) }
}
