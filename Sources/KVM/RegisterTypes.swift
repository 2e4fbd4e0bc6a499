import CKVM

// Swift values for the x86 vCPU state structs of the KVM ABI. Each converts to
// and from its C struct inside this module only (`init(_:)` and `raw`), so no C
// type appears in KVM's public API. Field names follow the kernel's, in Swift
// case. Sizes and offsets of the C structs are pinned by ABILayoutTests.

/// General-purpose registers (struct kvm_regs).
public struct Registers: Equatable, Sendable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0, rflags: UInt64 = 0

    public init() {}

    init(_ raw: ckvm_regs) {
        (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp) = (raw.rax, raw.rbx, raw.rcx, raw.rdx, raw.rsi, raw.rdi, raw.rsp, raw.rbp)
        (r8, r9, r10, r11, r12, r13, r14, r15) = (raw.r8, raw.r9, raw.r10, raw.r11, raw.r12, raw.r13, raw.r14, raw.r15)
        (rip, rflags) = (raw.rip, raw.rflags)
    }

    var raw: ckvm_regs {
        ckvm_regs(rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
                  r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15, rip: rip, rflags: rflags)
    }
}

/// One segment register as KVM describes it (struct kvm_segment). The flag
/// fields hold 0 or 1, as in the ABI.
public struct Segment: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    public var type: UInt8
    public var present: UInt8, dpl: UInt8, db: UInt8, s: UInt8, l: UInt8, g: UInt8, avl: UInt8
    public var unusable: UInt8

    public init(base: UInt64 = 0, limit: UInt32 = 0, selector: UInt16 = 0, type: UInt8 = 0, present: UInt8 = 0, dpl: UInt8 = 0,
                db: UInt8 = 0, s: UInt8 = 0, l: UInt8 = 0, g: UInt8 = 0, avl: UInt8 = 0, unusable: UInt8 = 0) {
        (self.base, self.limit, self.selector, self.type) = (base, limit, selector, type)
        (self.present, self.dpl, self.db, self.s, self.l, self.g, self.avl, self.unusable) = (present, dpl, db, s, l, g, avl, unusable)
    }

    init(_ raw: ckvm_segment) {
        self.init(base: raw.base, limit: raw.limit, selector: raw.selector, type: raw.type, present: raw.present, dpl: raw.dpl,
                  db: raw.db, s: raw.s, l: raw.l, g: raw.g, avl: raw.avl, unusable: raw.unusable)
    }

    var raw: ckvm_segment {
        ckvm_segment(base: base, limit: limit, selector: selector, type: type, present: present, dpl: dpl, db: db, s: s,
                     l: l, g: g, avl: avl, unusable: unusable, padding: 0)
    }
}

/// A descriptor-table register, GDTR or IDTR (struct kvm_dtable).
public struct DescriptorTable: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt16

    public init(base: UInt64 = 0, limit: UInt16 = 0) {
        self.base = base
        self.limit = limit
    }

    init(_ raw: ckvm_dtable) { self.init(base: raw.base, limit: raw.limit) }
    var raw: ckvm_dtable { ckvm_dtable(base: base, limit: limit, padding: (0, 0, 0)) }
}

/// Segment, control and descriptor-table registers (struct kvm_sregs).
public struct SpecialRegisters: Equatable, Sendable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment(), gs = Segment(), ss = Segment()
    public var tr = Segment(), ldt = Segment()
    public var gdt = DescriptorTable(), idt = DescriptorTable()
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0
    /// One bit per interrupt vector pending injection (256 bits).
    public var interruptBitmap: [UInt64] = [0, 0, 0, 0]

    public init() {}

    init(_ raw: ckvm_sregs) {
        (cs, ds, es, fs, gs, ss) = (Segment(raw.cs), Segment(raw.ds), Segment(raw.es), Segment(raw.fs), Segment(raw.gs), Segment(raw.ss))
        (tr, ldt, gdt, idt) = (Segment(raw.tr), Segment(raw.ldt), DescriptorTable(raw.gdt), DescriptorTable(raw.idt))
        (cr0, cr2, cr3, cr4, cr8, efer, apicBase) = (raw.cr0, raw.cr2, raw.cr3, raw.cr4, raw.cr8, raw.efer, raw.apic_base)
        interruptBitmap = withUnsafeBytes(of: raw.interrupt_bitmap) { Array($0.bindMemory(to: UInt64.self)) }
    }

    var raw: ckvm_sregs {
        var raw = ckvm_sregs()
        (raw.cs, raw.ds, raw.es, raw.fs, raw.gs, raw.ss) = (cs.raw, ds.raw, es.raw, fs.raw, gs.raw, ss.raw)
        (raw.tr, raw.ldt, raw.gdt, raw.idt) = (tr.raw, ldt.raw, gdt.raw, idt.raw)
        (raw.cr0, raw.cr2, raw.cr3, raw.cr4, raw.cr8, raw.efer, raw.apic_base) = (cr0, cr2, cr3, cr4, cr8, efer, apicBase)
        withUnsafeMutableBytes(of: &raw.interrupt_bitmap) { bytes in
            for (index, word) in interruptBitmap.prefix(4).enumerated() { bytes.storeBytes(of: word, toByteOffset: index * 8, as: UInt64.self) }
        }
        return raw
    }
}

/// x87 and SSE state (struct kvm_fpu). Kept whole, as KVM returns it, so that
/// a snapshot restores exactly what it captured; the fields a VMM sets are
/// named.
public struct FPUState: Equatable, Sendable {
    var raw = ckvm_fpu()

    public init() {}
    init(_ raw: ckvm_fpu) { self.raw = raw }

    /// The x87 control word.
    public var controlWord: UInt16 {
        get { raw.fcw }
        set { raw.fcw = newValue }
    }

    /// The SSE control and status register.
    public var mxcsr: UInt32 {
        get { raw.mxcsr }
        set { raw.mxcsr = newValue }
    }

    public static func == (left: FPUState, right: FPUState) -> Bool { sameBytes(left.raw, right.raw) }
}

/// Pending exceptions, interrupts, NMI and SMI state (struct kvm_vcpu_events),
/// kept whole for save and restore; the fields read by Kestrel are named.
public struct VCPUEvents: Equatable, Sendable {
    var raw = ckvm_vcpu_events()

    public init() {}
    init(_ raw: ckvm_vcpu_events) { self.raw = raw }

    /// The `flags` word (KVM_VCPUEVENT_VALID_*).
    public var flags: UInt32 {
        get { raw.flags }
        set { raw.flags = newValue }
    }

    /// Whether an exception is pending or injected, and its vector.
    public var exception: (pending: Bool, injected: Bool, vector: UInt8) {
        (raw.exception.pending != 0, raw.exception.injected != 0, raw.exception.nr)
    }

    /// The exception payload (CR2 or DR6), valid when `exceptionHasPayload`.
    public var exceptionPayload: UInt64 { raw.exception_payload }
    public var exceptionHasPayload: Bool { raw.exception_has_payload != 0 }

    public static func == (left: VCPUEvents, right: VCPUEvents) -> Bool { sameBytes(left.raw, right.raw) }
}

/// Extended control registers (struct kvm_xcrs).
public struct ExtendedControlRegisters: Equatable, Sendable {
    var raw = ckvm_xcrs()

    public init() {}
    init(_ raw: ckvm_xcrs) { self.raw = raw }

    /// The registers KVM reported: (XCR index, value).
    public var entries: [(index: UInt32, value: UInt64)] {
        withUnsafeBytes(of: raw.xcrs) { bytes in
            let all = bytes.bindMemory(to: ckvm_xcr.self)
            return all.prefix(Int(min(raw.nr_xcrs, 16))).map { (index: $0.xcr, value: $0.value) }
        }
    }

    public static func == (left: ExtendedControlRegisters, right: ExtendedControlRegisters) -> Bool { sameBytes(left.raw, right.raw) }
}

/// Byte equality of two C structs (which Swift does not compare).
private func sameBytes<T>(_ left: T, _ right: T) -> Bool {
    withUnsafeBytes(of: left) { a in withUnsafeBytes(of: right) { b in a.elementsEqual(b) } }
}

/// One CPUID leaf as KVM describes it (struct kvm_cpuid_entry2).
public struct CPUIDEntry: Equatable, Sendable {
    public var function: UInt32
    public var index: UInt32
    /// KVM_CPUID_FLAG_* bits.
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        (self.function, self.index, self.flags) = (function, index, flags)
        (self.eax, self.ebx, self.ecx, self.edx) = (eax, ebx, ecx, edx)
    }

    init(_ raw: ckvm_cpuid_entry2) {
        self.init(function: raw.function, index: raw.index, flags: raw.flags, eax: raw.eax, ebx: raw.ebx, ecx: raw.ecx, edx: raw.edx)
    }

    var raw: ckvm_cpuid_entry2 {
        ckvm_cpuid_entry2(function: function, index: index, flags: flags, eax: eax, ebx: ebx, ecx: ecx, edx: edx, padding: (0, 0, 0))
    }
}
