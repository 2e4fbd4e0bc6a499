import Confidential
import GuestKit
import KVM
import TextFormat

/// Conversion throughput on a `ConvertibleMachine`: a guest converts ranges
/// of one size to private and back with KVM_HC_MAP_GPA_RANGE, touching every
/// page after each conversion (so each discard frees real pages), and the
/// host answers through the conversion manager. The baseline is the same
/// guest with the host answering 0 without converting: the hypercall exit
/// and the touches alone.
public enum ConversionThroughput {
    public struct Sample: Sendable {
        public let conversions: Int
        public let pagesPerConversion: UInt64
        public let seconds: Double
        public var conversionsPerSecond: Double { Double(conversions) / seconds }
        public var pagesPerSecond: Double { conversionsPerSecond * Double(pagesPerConversion) }
    }

    /// Runs `conversions` conversions (rounded up to an even number) of
    /// `rangeSize` bytes, cycling over the machine's RAM; `convert` false
    /// gives the baseline.
    public static func measure(kvm: KVMSystem, rangeSize: UInt64, conversions: Int, convert: Bool) throws -> Sample {
        let page: UInt64 = 4096
        guard rangeSize % page == 0, rangeSize > 0, rangeSize <= ConvertibleMachine.ramSize, conversions > 0 else {
            throw TestFailure("a conversion range is whole pages within \(ConvertibleMachine.ramSize) bytes, and at least one is made")
        }
        let setup = try ConvertibleMachine(kvm: kvm)
        let pages = rangeSize / page, pairs = (conversions + 1) / 2
        let base = ConvertibleMachine.ramAddress
        let end = base + ConvertibleMachine.ramSize / rangeSize * rangeSize
        let program = GuestProgram()
        let a = program.assembler
        let instruction = try setup.instruction
        func touch() {
            a.mov(.rdi, .r13)
            a.mov(.rcx, pages)
            let loop = a.here()
            a.movb(.at(.rdi), immediate: 1)
            a.add(.rdi, Int32(page))
            a.dec(.rcx)
            a.j(.notEqual, loop)
        }
        a.mov(.r13, base)
        a.mov(.r14, end)
        a.mov(.r12, UInt64(pairs))
        let loop = a.here()
        for attributes in [ConversionManager.mapGPARangeEncrypted, 0] {
            program.hypercall(ConversionManager.mapGPARangeHypercall, [.register(.r13), .immediate(pages), .immediate(attributes)],
                              using: instruction)
            program.assertEqual(.rax, .immediate(0), "MAP_GPA_RANGE returned")
            touch()
        }
        let next = a.newLabel()
        a.mov(.rax, rangeSize)
        a.add(.r13, .rax)
        a.cmp(.r13, .r14)
        a.j(.notEqual, next)
        a.mov(.r13, base)
        a.bind(next)
        a.dec(.r12)
        a.j(.notEqual, loop)
        program.sync(stage: 1)
        program.done()
        try setup.machine.loadLongMode(program)

        var outcomes: [ConversionManager.Outcome] = []
        var exits = 0
        let start = ContinuousClock.now
        let ucall = try setup.machine.runUntilUcall(timeout: 600) { exit in
            exits += 1
            if convert { return setup.serve(exit, outcomes: &outcomes) }
            guard case .hypercall(let call) = exit else { return false }
            call.setReturnValue(0)
            return true
        }
        let elapsed = ContinuousClock.now - start
        if case .assertFailed(let message, let values) = ucall { throw TestFailure(HarnessError.guestAssertion(message: message, values: values).description) }
        guard case .sync(1, _) = ucall else { throw GuestMachine.mismatch(ucall, expected: "SYNC(stage 1)") }
        if convert {
            let changed = outcomes.filter { $0 == .converted(changed: rangeSize) }.count
            guard changed == 2 * pairs else { throw TestFailure("\(changed) of \(2 * pairs) conversions changed the whole range: \(setup.log.lines.prefix(3))") }
        }
        return Sample(conversions: 2 * pairs, pagesPerConversion: pages, seconds: elapsed.inSeconds)
    }
}
