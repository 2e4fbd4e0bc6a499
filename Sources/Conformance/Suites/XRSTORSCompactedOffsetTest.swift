import GuestKit
import GuestMemory
import KVM
import X86

/// `cet_msrs.xrstors_compacted_offsets`: XRSTORS finds the CET_U component
/// (U_CET, then PL3_SSP) at the offset the image's XCOMP_BV gives it, also
/// when XCOMP_BV holds a component before it that the instruction does not
/// restore. In the compacted format every component set in XCOMP_BV takes
/// its space, restored or not (SDM Vol. 1, 13.4.3).
///
/// Linux restores a KVM guest's FPU state with a mask that leaves out PKRU,
/// so a CPU that skipped unrestored components would load the guest's CET
/// state from the wrong place whenever the host kernel has PKRU in XCR0.
/// The three images here show it without PKU: AVX is the gap.
enum XRSTORSCompactedOffsetTest {
    static let cetUserComponent = 11
    static let avxComponent = 2
    static let pkruComponent = 9
    /// ENDBR_EN | NO_TRACK_EN: the U_CET value CET_U's slot holds.
    static let cetValue: UInt64 = CETControl.endbranchEnable.rawValue | (1 << 4)
    /// ENDBR_EN alone: what the first quadword of the AVX slot holds, so a
    /// misplaced load is a valid U_CET that tells where it came from.
    static let gapValue: UInt64 = CETControl.endbranchEnable.rawValue

    /// One XRSTORS: the components in the image and the ones requested.
    struct Case {
        let name: String
        let components: [Int]
        let requested: [Int]
    }

    static let cases = [
        Case(name: "CET_U alone", components: [cetUserComponent], requested: [cetUserComponent]),
        Case(name: "AVX and CET_U in the image, CET_U requested", components: [avxComponent, cetUserComponent], requested: [cetUserComponent]),
        Case(name: "AVX and CET_U in the image, both requested", components: [avxComponent, cetUserComponent],
             requested: [avxComponent, cetUserComponent]),
    ]

    /// The gap KVM's own restore leaves: PKRU in the image, not requested.
    /// Run only when the vCPU has PKU (not in an L1 booted with nopku,
    /// whose KVM does not offer it).
    static let pkruCase = Case(name: "PKRU and CET_U in the image, CET_U requested", components: [pkruComponent, cetUserComponent],
                               requested: [cetUserComponent])

    /// Whether the vCPU can put PKRU in XCR0: CPUID PKU and XSAVE component 9.
    static func offersPKRU(_ cpuid: CPUIDTable) -> Bool {
        (cpuid.entry(function: 7)?.ecx ?? 0) & (1 << 3) != 0 && (cpuid.entry(function: 0xD)?.eax ?? 0) & (1 << 9) != 0
    }

    static let test = ConformanceTest(
        suite: CETMSRSuite.name, name: "xrstors_compacted_offsets",
        summary: "XRSTORS loads U_CET from CET_U's compacted offset, also when XCOMP_BV holds an AVX component it does not restore",
        requires: [.cpuFeature(.xsaves), .cpuFeature(.avx), .cpuFeature(.indirectBranchTracking)]
    ) { context in try run(context) }

    /// Where component `index` starts in a compacted image holding `components`
    /// (ascending): after the legacy area and the header (576 bytes), each
    /// component in turn, aligned to 64 bytes where CPUID.(0xD, i):ECX[1] says so.
    static func offsets(of components: [Int], cpuid: CPUIDTable) throws -> [Int: Int] {
        var offset = 576
        var result: [Int: Int] = [:]
        for component in components.sorted() {
            guard let entry = cpuid.entry(function: 0xD, index: UInt32(component)), entry.eax > 0 else {
                throw TestFailure("CPUID.(0xD, \(component)) gives no size for XSAVE component \(component)")
            }
            if entry.ecx & 0x2 != 0 { offset = (offset + 63) & ~63 }
            result[component] = offset
            offset += Int(entry.eax)
        }
        return result
    }

    static func mask(_ components: [Int]) -> UInt64 { components.reduce(0) { $0 | (1 << UInt64($1)) } }

    /// The image for `testCase`: MXCSR at its reset value, XSTATE_BV and
    /// XCOMP_BV (bit 63: compacted) for its components, `gapValue` at the
    /// start of the AVX slot and `cetValue` at the start of CET_U's.
    static func image(for testCase: Case, cpuid: CPUIDTable) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        func store(_ value: UInt64, at offset: Int) {
            for byte in 0..<8 { bytes[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(byte))) }
        }
        store(0x1F80, at: 24)
        store(mask(testCase.components), at: 512)
        store(mask(testCase.components) | (1 << 63), at: 520)
        let offsets = try offsets(of: testCase.components, cpuid: cpuid)
        for gap in [avxComponent, pkruComponent] { if let offset = offsets[gap] { store(gapValue, at: offset) } }
        store(cetValue, at: offsets[cetUserComponent]!)
        return bytes
    }

    static func run(_ context: TestContext) throws {
        let cpuid = context.host.supportedCPUID
        let pkru = offersPKRU(cpuid)
        let cases = Self.cases + (pkru ? [pkruCase] : [])
        if !pkru { context.note("the vCPU has no PKU (KVM does not offer it, as in an L1 booted with nopku): the PKRU case did not run") }
        let machine = try GuestMachine(kvm: context.kvm, cpuid: cpuid)
        let program = GuestProgram()
        let a = program.assembler
        let imageBase = program.layout.scratchAddress
        // CR4.OSXSAVE, XCR0 = x87 | SSE | AVX (| PKRU), IA32_XSS = CET_U.
        a.mov(.rax, .cr4)
        a.mov(.rdx, ControlBits.cr4OSXSAVE)
        a.or(.rax, .rdx)
        a.mov(.cr4, .rax)
        a.mov(.rcx, 0)
        a.mov(.rdx, 0)
        a.mov(.rax, pkru ? 0x207 : 0x7)
        a.xsetbv()
        a.mov(.rcx, UInt64(ModelSpecificRegister.xss.index))
        a.mov(.rdx, 0)
        a.mov(.rax, 1 << UInt64(cetUserComponent))
        a.wrmsr()
        for (stage, testCase) in cases.enumerated() {
            // U_CET = 0, XRSTORS the image, then report U_CET.
            a.mov(.rcx, UInt64(ModelSpecificRegister.userCET.index))
            a.mov(.rax, 0)
            a.mov(.rdx, 0)
            a.wrmsr()
            a.mov(.rdi, imageBase + UInt64(stage) * 0x1000)
            a.mov(.rax, mask(testCase.requested))
            a.mov(.rdx, 0)
            program.expectingException { a.xrstors64(.at(.rdi)) }
            a.mov(.rcx, UInt64(ModelSpecificRegister.userCET.index))
            a.rdmsr()
            a.shl(.rdx, 32)
            a.or(.rax, .rdx)
            program.sync(stage: UInt64(stage), .reg(.rax))
        }
        program.done()
        for stage in cases.indices {
            try machine.memory.write(try image(for: cases[stage], cpuid: cpuid), at: GuestAddress(imageBase + UInt64(stage) * 0x1000))
        }
        try machine.loadLongMode(program)

        var loaded: [UInt64] = []
        for (stage, testCase) in cases.enumerated() {
            let (exception, values) = try machine.runToSync(stage: UInt64(stage))
            if let exception {
                throw TestFailure("XRSTORS (\(testCase.name)) raised \(exception)")
            }
            loaded.append(values.first ?? 0)
        }
        try machine.expectDone()
        let hex = { (value: UInt64) in "0x" + String(value, radix: 16) }
        let offsets = try offsets(of: [avxComponent, cetUserComponent], cpuid: cpuid)
        let wrong = cases.indices.filter { loaded[$0] != cetValue }
        guard !wrong.isEmpty else { return }
        let each = cases.indices.map { "\(cases[$0].name): \(hex(loaded[$0]))" }.joined(separator: "; ")
        var text = "XRSTORS loaded U_CET wrongly (want \(hex(cetValue)) each time): \(each)"
        let gapped = cases.indices.filter { cases[$0].components.count > cases[$0].requested.count }
        if wrong == gapped && gapped.allSatisfy({ loaded[$0] == gapValue }) {
            text += ". With AVX in XCOMP_BV but not requested, U_CET came from the AVX slot (offset \(offsets[avxComponent]!)),"
                + " not CET_U's (offset \(offsets[cetUserComponent]!)): the CPU advanced the compacted offset only past the"
                + " components it restored, while the same image restores right with AVX requested too, and CET_U alone"
                + " restores right" + (pkru ? "; PKRU left out of the restore misplaces it the same way" : "")
                + ". Bochs 3.0's XRSTOR/XRSTORS does this (FINDINGS.md section 18); KVM's own XRSTORS of a"
                + " guest's FPU state without PKRU then loads CET state from the wrong place, which is why the lab's Bochs L1s boot with nopku"
        }
        throw TestFailure(text)
    }
}
