/// Minimal ACPI tables for a Linux guest without firmware: RSDP (revision 2),
/// XSDT, a hardware-reduced FADT (revision 6) whose sleep control register is
/// an I/O port, a DSDT with the `\_S5` sleep package (so the guest can power
/// off) and the COM1 device, and a MADT listing every vCPU's local APIC, the
/// IOAPIC and the ISA timer override (so every vCPU comes up).
///
/// COM1 must be in the DSDT: on a hardware-reduced platform Linux sets up no
/// legacy ISA interrupts (`nr_legacy_irqs()` is 0), so the 8250 driver's
/// `request_irq(4)` for the legacy port fails, the tty is marked TTY_IO_ERROR
/// and every userspace write to the console fails with EIO, while the
/// kernel's polled console output still appears. The PNP0501 device's `_CRS`
/// makes the ACPI PNP layer register GSI 4 for it. The i8042 (PS2K, PNP0303:
/// ports 0x60 and 0x64, IRQ 1) is there for the same reason: without it
/// Linux probes the ports directly, `request_irq(1)` fails with EINVAL and
/// atkbd never sees the keyboard.
public enum ACPITables {
    public static let rsdpAddress: UInt64 = 0xF0000
    static let xsdtAddress: UInt64 = 0xF0040
    static let fadtAddress: UInt64 = 0xF0100
    static let madtAddress: UInt64 = 0xF0300
    static let dsdtAddress: UInt64 = 0xF0800
    /// The FADT's SLEEP_CONTROL_REG: a one-byte I/O port (SLP_TYP in bits 4:2, SLP_EN in bit 5).
    public static let sleepControlPort: UInt16 = 0x3C0
    /// The SLP_TYP `\_S5` announces.
    public static let softOffSleepType: UInt8 = 5
    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000

    /// A virtio-mmio device for the DSDT: Linux's virtio_mmio driver binds to
    /// `_HID "LNRO0005"` with one memory window and one interrupt. (Debian's
    /// kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so `virtio_mmio.device=`
    /// would not reach them.)
    public struct MMIODevice: Equatable, Sendable {
        public var base: UInt32
        public var length: UInt32
        public var gsi: UInt32

        public init(base: UInt32, length: UInt32, gsi: UInt32) {
            self.base = base
            self.length = length
            self.gsi = gsi
        }
    }

    /// The tables as (guest address, bytes) for `vcpuCount` vCPUs (APIC ids
    /// 0..<count) and the virtio-mmio `devices`.
    public static func build(vcpuCount: Int, devices: [MMIODevice] = []) -> [(address: UInt64, bytes: [UInt8])] {
        let dsdt = table("DSDT", revision: 2, body: softOffPackage + systemBus(devices: devices))
        let fadt = table("FACP", revision: 6, body: fadtBody())
        let madt = table("APIC", revision: 5, body: madtBody(vcpuCount: vcpuCount))
        var xsdtBody: [UInt8] = []
        for address in [fadtAddress, madtAddress] { xsdtBody += littleEndian(address) }
        let xsdt = table("XSDT", revision: 1, body: xsdtBody)
        return [(rsdpAddress, rsdp()), (xsdtAddress, xsdt), (fadtAddress, fadt), (madtAddress, madt), (dsdtAddress, dsdt)]
    }

    /// AML: Name (\_S5, Package (4) { 5, 0, 0, 0 }).
    static let softOffPackage: [UInt8] = [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, softOffSleepType, 0x00, 0x00, 0x00]

    /// AML: Scope (\_SB) { Device (COM1) { _HID PNP0501, _UID 1, _CRS { IO 0x3F8/8, IRQNoFlags {4} } },
    /// Device (PS2K) { _HID PNP0303, _UID 0, _CRS { IO 0x60/1, IO 0x64/1, IRQNoFlags {1} } },
    /// and per virtio device Device (VRnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed, Interrupt } } }.
    static func systemBus(devices: [MMIODevice]) -> [UInt8] {
        let serial = AML.device("COM1", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(1)),
            AML.name("_CRS", AML.resourceTemplate([.ioPorts(base: 0x3F8, length: 8), .isaInterrupt(4)])),
        ])
        let keyboard = AML.device("PS2K", [
            AML.name("_HID", AML.eisaID("PNP0303")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([.ioPorts(base: 0x60, length: 1), .ioPorts(base: 0x64, length: 1), .isaInterrupt(1)])),
        ])
        let virtio = devices.enumerated().map { index, device in
            AML.device("VR" + String(String(index, radix: 16, uppercase: true).suffix(2)).leftPadded(to: 2), [
                AML.name("_HID", AML.string("LNRO0005")),
                AML.name("_UID", AML.integer(UInt64(index))),
                AML.name("_CRS", AML.resourceTemplate([.memory32(base: device.base, length: device.length), .edgeInterrupt(device.gsi)])),
            ])
        }
        return AML.scope("_SB", [serial, keyboard] + virtio)
    }

    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    /// Makes `bytes` sum to zero (mod 256) by setting the byte at `offset`.
    static func checksum(_ bytes: inout [UInt8], at offset: Int, over range: Range<Int>? = nil) {
        bytes[offset] = 0
        let sum = bytes[range ?? 0..<bytes.count].reduce(UInt8(0), &+)
        bytes[offset] = 0 &- sum
    }

    /// A table: the 36-byte header, then `body`, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8) + littleEndian(UInt32(36 + body.count)) + [revision, 0]
        bytes += Array("KSTREL".utf8) + Array("KESTREL ".utf8) + littleEndian(UInt32(1))
        bytes += Array("KSTR".utf8) + littleEndian(UInt32(1))
        bytes += body
        checksum(&bytes, at: 9)
        return bytes
    }

    static func rsdp() -> [UInt8] {
        var bytes = Array("RSD PTR ".utf8) + [0] + Array("KSTREL".utf8) + [2]
        bytes += littleEndian(UInt32(0)) + littleEndian(UInt32(36)) + littleEndian(xsdtAddress) + [0, 0, 0, 0]
        checksum(&bytes, at: 8, over: 0..<20)
        checksum(&bytes, at: 32)
        return bytes
    }

    /// A generic address structure for an I/O port of `width` bytes.
    static func ioPort(_ port: UInt16, width: UInt8) -> [UInt8] {
        [1, width * 8, 0, width] + littleEndian(UInt64(port))
    }

    static func fadtBody() -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ bytes: [UInt8], at offset: Int) { body.replaceSubrange((offset - 36)..<(offset - 36 + bytes.count), with: bytes) }
        put(littleEndian(UInt32(truncatingIfNeeded: dsdtAddress)), at: 40)  // DSDT
        put(littleEndian(UInt16(0x0026)), at: 109)                          // IAPC_BOOT_ARCH: 8042 present, no VGA, no CMOS RTC
        put(littleEndian(UInt32(1 << 20 | 1 << 4 | 1 << 5)), at: 112)       // HW_REDUCED_ACPI, PWR_BUTTON and SLP_BUTTON absent
        body[131 - 36] = 5                                                  // FADT minor version (6.5)
        put(littleEndian(dsdtAddress), at: 140)                             // X_DSDT
        put(ioPort(sleepControlPort, width: 1), at: 244)                    // SLEEP_CONTROL_REG
        put(ioPort(sleepControlPort + 1, width: 1), at: 256)                // SLEEP_STATUS_REG
        put(Array("KESTREL\0".utf8), at: 268)                               // hypervisor vendor identity
        return body
    }

    static func madtBody(vcpuCount: Int) -> [UInt8] {
        var body = littleEndian(localAPICAddress) + littleEndian(UInt32(1))  // PCAT_COMPAT: 8259s present
        for index in 0..<vcpuCount {
            body += [0, 8, UInt8(index), UInt8(index)] + littleEndian(UInt32(1))  // processor local APIC, enabled
        }
        body += [1, 12, UInt8(vcpuCount), 0] + littleEndian(ioAPICAddress) + littleEndian(UInt32(0))  // IOAPIC, GSI base 0
        body += [2, 10, 0, 0] + littleEndian(UInt32(2)) + littleEndian(UInt16(0))   // ISA IRQ 0 -> GSI 2
        body += [4, 6, 0xFF] + littleEndian(UInt16(0)) + [1]                        // NMI on LINT1 of every CPU
        return body
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
