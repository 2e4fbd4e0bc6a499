/// Where a long-mode test guest keeps its pieces in guest-physical memory
/// (identity-mapped, so these are also its virtual addresses).
///
/// ```
/// 0x0000_1000  PML4            0x0000_9000  GDT
/// 0x0000_2000  PDPT            0x0000_A000  IDT (256 gates)
/// 0x0000_3000  PD for 0-1 GiB  0x0000_B000  ucall record (256 bytes per vCPU)
/// 0x0000_4000  PDs for further GiB ranges, up to 0x8FFF
/// 0x0001_0000  code (program, then runtime: exception stubs, handler, strings)
/// 0x0010_0000  scratch data for tests, up to the stack
/// memorySize-0x1000  initial stack top
/// ```
public struct LongModeLayout: Sendable {
    public let memorySize: UInt64

    public let pml4Address: UInt64 = 0x1000
    public let pdptAddress: UInt64 = 0x2000
    public let firstPageDirectoryAddress: UInt64 = 0x3000
    /// Page directories for extra 1 GiB identity ranges come from here on.
    public let extraPageDirectoryArea: ClosedRange<UInt64> = 0x4000...0x8000
    public let gdtAddress: UInt64 = 0x9000
    public let idtAddress: UInt64 = 0xA000
    public let ucallRecordAddress: UInt64 = 0xB000
    /// Where the exception handler looks for a resume address (0: none armed).
    public let exceptionFixupAddress: UInt64 = 0xBF00
    public let codeAddress: UInt64 = 0x10000
    public let scratchAddress: UInt64 = 0x100000

    /// Selectors of the flat segments in the GDT.
    public let codeSelector: UInt16 = 0x08
    public let dataSelector: UInt16 = 0x10

    /// An address that no page table maps (PML4 entry 1 is not present).
    public let unmappedAddress: UInt64 = 0x80_0000_0000

    public var stackTop: UInt64 { memorySize - 0x1000 }

    public init(memorySize: UInt64 = 4 << 20) {
        precondition(memorySize >= 2 << 20 && memorySize <= 1 << 30, "test guests use 2 MiB to 1 GiB of memory")
        self.memorySize = memorySize
    }
}

/// The port a guest writes its ucall record address to (32-bit OUT).
public let ucallPort: UInt16 = 0xE000
