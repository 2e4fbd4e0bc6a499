/// Control-register and EFER bits used to set up guests.
public enum ControlBits {
    public static let cr0ProtectionEnable: UInt64 = 1 << 0
    public static let cr0MonitorCoprocessor: UInt64 = 1 << 1
    public static let cr0ExtensionType: UInt64 = 1 << 4
    public static let cr0NumericError: UInt64 = 1 << 5
    public static let cr0WriteProtect: UInt64 = 1 << 16
    public static let cr0Paging: UInt64 = 1 << 31

    public static let cr4PhysicalAddressExtension: UInt64 = 1 << 5
    public static let cr4OSFXSR: UInt64 = 1 << 9
    public static let cr4OSXMMEXCPT: UInt64 = 1 << 10
    public static let cr4OSXSAVE: UInt64 = 1 << 18
    public static let cr4CET: UInt64 = 1 << 23
    public static let cr4FRED: UInt64 = 1 << 32

    public static let eferSystemCallEnable: UInt64 = 1 << 0
    public static let eferLongModeEnable: UInt64 = 1 << 8
    public static let eferLongModeActive: UInt64 = 1 << 10
    public static let eferNoExecuteEnable: UInt64 = 1 << 11
}
