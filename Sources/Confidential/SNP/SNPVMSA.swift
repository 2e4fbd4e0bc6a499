/// The VMSA page of an SEV-ES/SNP vCPU (AMD APM Vol. 2, "VMSA layout, save
/// area for SEV-ES guests"; Linux's `struct sev_es_save_area`): 4096 bytes
/// of register state. KVM builds it from the vCPU's state at
/// SNP_LAUNCH_FINISH and the firmware measures it as a VMSA page, so a VMM
/// that wants to print the launch measurement beforehand must build the
/// same bytes. Only the fields a VMM's initial state sets are modelled; the
/// rest stay zero.
public struct SNPVMSA: Equatable, Sendable {
    public static let size = 4096

    /// A segment as the VMCB holds it: selector, packed attributes, limit, base.
    public struct Segment: Equatable, Sendable {
        public var selector: UInt16
        /// type (bits 3:0), S (4), DPL (6:5), P (7), AVL (8), L (9), D/B (10), G (11).
        public var attributes: UInt16
        public var limit: UInt32
        public var base: UInt64

        public init(selector: UInt16, attributes: UInt16, limit: UInt32, base: UInt64) {
            self.selector = selector
            self.attributes = attributes
            self.limit = limit
            self.base = base
        }
    }

    public var es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr: Segment
    public var efer: UInt64 = 0, cr4: UInt64 = 0, cr3: UInt64 = 0, cr0: UInt64 = 0
    public var dr7: UInt64 = 0x400, dr6: UInt64 = 0xFFFF_0FF0, rflags: UInt64 = 0x2, rip: UInt64 = 0, rsp: UInt64 = 0
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0, rsi: UInt64 = 0, rdi: UInt64 = 0, rbp: UInt64 = 0
    /// The guest PAT (reset value 0x0007040600070406).
    public var guestPAT: UInt64 = 0x0007_0406_0007_0406
    public var sevFeatures: UInt64 = 0
    public var xcr0: UInt64 = 0x1
    public var mxcsr: UInt32 = 0x1F80
    public var x87ControlWord: UInt16 = 0x37F

    public init(es: Segment, cs: Segment, ss: Segment, ds: Segment, fs: Segment, gs: Segment,
                gdtr: Segment, ldtr: Segment, idtr: Segment, tr: Segment) {
        (self.es, self.cs, self.ss, self.ds, self.fs, self.gs) = (es, cs, ss, ds, fs, gs)
        (self.gdtr, self.ldtr, self.idtr, self.tr) = (gdtr, ldtr, idtr, tr)
    }

    /// Field offsets in the save area.
    enum Offset {
        static let segments = 0x000  // es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr: 16 bytes each
        static let efer = 0x0D0, cr4 = 0x148, cr3 = 0x150, cr0 = 0x158, dr7 = 0x160, dr6 = 0x168
        static let rflags = 0x170, rip = 0x178, rsp = 0x1D8, rax = 0x1F8, guestPAT = 0x268
        static let rcx = 0x308, rdx = 0x310, rbx = 0x318, rbp = 0x328, rsi = 0x330, rdi = 0x338
        static let sevFeatures = 0x3B0, xcr0 = 0x3E8, mxcsr = 0x408, x87ControlWord = 0x410
    }

    /// The page.
    public var bytes: [UInt8] {
        var page = [UInt8](repeating: 0, count: Self.size)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            for index in 0..<MemoryLayout<T>.size { page[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        for (index, segment) in [es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr].enumerated() {
            let offset = Offset.segments + 16 * index
            put(segment.selector, at: offset)
            put(segment.attributes, at: offset + 2)
            put(segment.limit, at: offset + 4)
            put(segment.base, at: offset + 8)
        }
        put(efer, at: Offset.efer)
        put(cr4, at: Offset.cr4)
        put(cr3, at: Offset.cr3)
        put(cr0, at: Offset.cr0)
        put(dr7, at: Offset.dr7)
        put(dr6, at: Offset.dr6)
        put(rflags, at: Offset.rflags)
        put(rip, at: Offset.rip)
        put(rsp, at: Offset.rsp)
        put(rax, at: Offset.rax)
        put(guestPAT, at: Offset.guestPAT)
        put(rcx, at: Offset.rcx)
        put(rdx, at: Offset.rdx)
        put(rbx, at: Offset.rbx)
        put(rbp, at: Offset.rbp)
        put(rsi, at: Offset.rsi)
        put(rdi, at: Offset.rdi)
        put(sevFeatures, at: Offset.sevFeatures)
        put(xcr0, at: Offset.xcr0)
        put(mxcsr, at: Offset.mxcsr)
        put(x87ControlWord, at: Offset.x87ControlWord)
        return page
    }
}

extension SNPVMSA {
    /// The page KVM builds for a vCPU it leaves in the x86 reset state: CS
    /// based at `eip`'s 64 KiB segment with IP its low 16 bits, RDX the CPUID
    /// signature (leaf 1 EAX), EFER.SVME and the host's CR4.MCE added by KVM,
    /// CR0.CD/NW cleared. An SNP launch measures this for every vCPU the VMM
    /// does not set up itself (the APs of a direct Linux boot).
    public static func resetState(eip: UInt64, sevFeatures: UInt64, signature: UInt64) -> SNPVMSA {
        let data = Segment(selector: 0, attributes: 0x93, limit: 0xFFFF, base: 0)
        var vmsa = SNPVMSA(es: data, cs: Segment(selector: 0xF000, attributes: 0x9B, limit: 0xFFFF, base: eip & 0xFFFF_0000),
                           ss: data, ds: data, fs: data, gs: data, gdtr: Segment(selector: 0, attributes: 0, limit: 0xFFFF, base: 0),
                           ldtr: Segment(selector: 0, attributes: 0x82, limit: 0xFFFF, base: 0),
                           idtr: Segment(selector: 0, attributes: 0, limit: 0xFFFF, base: 0),
                           tr: Segment(selector: 0, attributes: 0x8B, limit: 0xFFFF, base: 0))
        vmsa.efer = 0x1000  // EFER.SVME
        vmsa.cr4 = 0x40     // CR4.MCE, from the host
        vmsa.cr0 = 0x10     // ET; KVM clears CD and NW
        vmsa.rip = eip & 0xFFFF
        vmsa.rdx = signature
        vmsa.sevFeatures = sevFeatures
        return vmsa
    }
}
