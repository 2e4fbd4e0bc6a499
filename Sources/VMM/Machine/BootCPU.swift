import Boot
import KVM

/// Register state at the kernel's entry, for the boot vCPU.
enum BootCPU {
    static func segment(selector: UInt16, type: UInt8, longMode: Bool, defaultSize: Bool) -> Segment {
        Segment(base: 0, limit: 0xFFFF_FFFF, selector: selector, type: type, present: 1, dpl: 0,
                db: defaultSize ? 1 : 0, s: 1, l: longMode ? 1 : 0, g: 1, avl: 0, unusable: 0)
    }

    /// `pageTableRoot` is CR3 for the 64-bit entry (with SEV's C-bit for an SNP guest).
    static func prepare(_ vcpu: VCPU, entry: KernelEntry, pageTableRoot: UInt64 = GuestLayout.pml4Address) throws {
        var special = try vcpu.specialRegisters()
        var registers = Registers()
        registers.rflags = 0x2
        special.gdt.base = GuestLayout.gdtAddress
        special.gdt.limit = UInt16(BootGDT.entries.count * 8 - 1)
        special.idt.base = 0
        special.idt.limit = 0
        let data = segment(selector: BootGDT.dataSelector, type: 0x3, longMode: false, defaultSize: true)
        special.ds = data
        special.es = data
        special.fs = data
        special.gs = data
        special.ss = data
        switch entry {
        case .longMode(let rip, let zeroPage):
            special.cs = segment(selector: BootGDT.codeSelector64, type: 0xB, longMode: true, defaultSize: false)
            special.cr3 = pageTableRoot
            special.cr4 = 0x20                    // PAE
            special.cr0 = 0x8000_0011             // PG, ET, PE
            special.efer = 0x500                  // LME, LMA
            registers.rip = rip
            registers.rsi = zeroPage
        case .pvh(let eip, let startInfo):
            special.cs = segment(selector: BootGDT.codeSelector32, type: 0xB, longMode: false, defaultSize: true)
            special.cr0 = 0x11                    // ET, PE
            special.cr4 = 0
            special.efer = 0
            registers.rip = UInt64(eip)
            registers.rbx = startInfo
        }
        try vcpu.setSpecialRegisters(special)
        try vcpu.setRegisters(registers)
        var fpu = try vcpu.fpu()
        fpu.controlWord = 0x37F
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
    }

    /// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves them.
    static func configureLocalInterrupts(_ vcpu: VCPU) throws {
        var apic = try vcpu.localAPIC()
        func set(_ offset: Int, _ value: UInt32) {
            for index in 0..<4 { apic[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
        }
        set(0x350, 0x700)  // LVT LINT0: delivery mode ExtINT
        set(0x360, 0x400)  // LVT LINT1: delivery mode NMI
        try vcpu.setLocalAPIC(apic)
    }
}
