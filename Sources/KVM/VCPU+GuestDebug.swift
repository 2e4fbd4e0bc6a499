import CKVM

/// KVM_GUESTDBG_* flags: what the VMM debugs in the guest (x86 values).
public struct GuestDebugControl: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let enable = GuestDebugControl(rawValue: 0x1)
    public static let singleStep = GuestDebugControl(rawValue: 0x2)
    /// INT3 in the guest exits to the VMM (KVM intercepts #BP).
    public static let useSoftwareBreakpoints = GuestDebugControl(rawValue: 0x1_0000)
    /// The host's DR0-DR3 and DR7 below are loaded while the guest runs.
    public static let useHardwareBreakpoints = GuestDebugControl(rawValue: 0x2_0000)
    public static let injectDB = GuestDebugControl(rawValue: 0x4_0000)
    public static let injectBP = GuestDebugControl(rawValue: 0x8_0000)
    public static let blockIRQ = GuestDebugControl(rawValue: 0x10_0000)
}

extension VCPU {
    /// Enables or changes guest debugging: with `.useHardwareBreakpoints`,
    /// `debugRegisters` are DR0-DR7 as the host wants them while the guest
    /// runs (DR4 and DR5 unused), and a debug event they cause exits with
    /// KVM_EXIT_DEBUG instead of reaching the guest. The corresponding ioctl
    /// is KVM_SET_GUEST_DEBUG.
    public func setGuestDebug(_ control: GuestDebugControl, debugRegisters: [UInt64] = []) throws {
        guard debugRegisters.count <= 8 else { throw KVMUsageError("KVM_SET_GUEST_DEBUG takes at most 8 debug registers, not \(debugRegisters.count)") }
        var debug = ckvm_guest_debug()
        debug.control = control.rawValue
        // Sound: debugreg is a fixed array of eight UInt64, and at most eight are written.
        withUnsafeMutableBytes(of: &debug.debugreg) { raw in
            for (index, value) in debugRegisters.enumerated() { raw.storeBytes(of: value, toByteOffset: 8 * index, as: UInt64.self) }
        }
        _ = try SystemCall.ioctl(fileDescriptor, KVMRequest.setGuestDebug, &debug)
    }
}
