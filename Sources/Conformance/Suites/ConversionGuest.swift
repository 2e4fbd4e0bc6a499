import GuestKit
import KVM

/// A guest program for the private-memory tests: straight-line code that
/// fills and checks guest-physical ranges (identity-mapped) and asks the
/// host to convert them with KVM_HC_MAP_GPA_RANGE. Each helper clobbers
/// RAX, RCX, RDX and RDI only.
struct ConversionGuest {
    let program = GuestProgram()
    let instruction: HypercallInstruction

    init(instruction: HypercallInstruction) { self.instruction = instruction }

    var assembler: Assembler { program.assembler }

    /// `memset(gpa, pattern, size)` with `rep stosb`.
    func fill(_ gpa: UInt64, _ pattern: UInt8, _ size: UInt64) {
        guard size > 0 else { return }
        loadString(gpa, pattern, size)
        assembler.repStosb()
    }

    /// RDI = gpa, RCX = size, AL = pattern: the operands of the string instructions.
    private func loadString(_ gpa: UInt64, _ pattern: UInt8, _ size: UInt64) {
        assembler.mov(.rdi, gpa)
        assembler.mov(.rcx, size)
        assembler.mov(.rax, UInt64(pattern))
    }

    /// Asserts every byte of `[gpa, gpa + size)` is `pattern` (`repe scasb`);
    /// a mismatch is an ASSERT ucall with (byte found, pattern, its gpa).
    func expectFill(_ gpa: UInt64, _ pattern: UInt8, _ size: UInt64, _ what: String) {
        guard size > 0 else { return }
        let a = assembler
        loadString(gpa, pattern, size)
        a.repeScasb()
        let good = a.newLabel()
        a.j(.equal, good)
        a.dec(.rdi)  // scasb leaves RDI one past the byte that differed
        a.movzxb(.rdx, .at(.rdi))
        program.ucall(.assertFailed, [.register(.rdx), .immediate(UInt64(pattern)), .register(.rdi)],
                      message: "guest expected 0x\(String(pattern, radix: 16)) \(what)")
        program.hang()
        a.bind(good)
    }

    /// KVM_HC_MAP_GPA_RANGE(gpa, size / 4096, attributes); the host's answer
    /// must be `expected` (0 unless the test wants a refusal).
    func mapGPARange(_ gpa: UInt64, _ size: UInt64, attributes: UInt64, expected: UInt64 = 0, _ what: String) {
        program.hypercall(BasicsSuite.mapGPARange, [.immediate(gpa), .immediate(size / PrivateMemorySuite.page), .immediate(attributes)],
                          using: instruction)
        program.assertEqual(.rax, .immediate(expected), "MAP_GPA_RANGE \(what) returned")
    }

    /// The guest's SYNC ucall.
    func sync(_ stage: UInt64, _ values: UInt64...) {
        program.ucall(.sync, [.immediate(stage)] + values.map { .immediate($0) })
    }
}

/// The failure for a guest ASSERT: a fill mismatch names the byte found and
/// its address; any other assertion is given as the harness words it.
func guestAssertionFailure(_ message: String, _ values: [UInt64]) -> TestFailure {
    guard values.count == 3, message.hasPrefix("guest expected") else {
        return TestFailure(HarnessError.guestAssertion(message: message, values: values).description)
    }
    return TestFailure("\(message): found 0x\(String(values[0], radix: 16)) at gpa 0x\(String(values[2], radix: 16))")
}
