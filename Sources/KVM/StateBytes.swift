import CKVM

/// A KVM state struct that a snapshot keeps as the kernel's own bytes (the
/// x86-64 layout ABILayoutTests pins), so that a restore hands KVM exactly
/// what it returned, padding and fields Kestrel does not name included.
public protocol StateBytes: Sendable {
    /// How many bytes the struct has.
    static var byteCount: Int { get }
    /// The struct's bytes.
    var stateBytes: [UInt8] { get }
    /// The struct from `stateBytes`; throws unless there are exactly `byteCount`.
    init(stateBytes: [UInt8]) throws
}

/// The bytes of a C struct (a plain value: no pointers, no references).
func bytes<T>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

/// A C struct from exactly its size in bytes; `what` names it in the error.
func load<T>(_ type: T.Type, from bytes: [UInt8], initial: T, what: String) throws -> T {
    guard bytes.count == MemoryLayout<T>.size else {
        throw KVMUsageError("\(what) has \(MemoryLayout<T>.size) bytes, not \(bytes.count)")
    }
    var value = initial
    // Sound: T is a C struct of plain integers, so any bit pattern is a value,
    // and exactly MemoryLayout<T>.size bytes are copied into it.
    withUnsafeMutableBytes(of: &value) { target in target.copyBytes(from: bytes) }
    return value
}

extension Registers: StateBytes {
    public static var byteCount: Int { MemoryLayout<ckvm_regs>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws { self.init(try load(ckvm_regs.self, from: stateBytes, initial: ckvm_regs(), what: "struct kvm_regs")) }
}

extension SpecialRegisters: StateBytes {
    public static var byteCount: Int { MemoryLayout<ckvm_sregs>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws { self.init(try load(ckvm_sregs.self, from: stateBytes, initial: ckvm_sregs(), what: "struct kvm_sregs")) }
}

extension FPUState: StateBytes {
    public static var byteCount: Int { MemoryLayout<ckvm_fpu>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws { self.init(try load(ckvm_fpu.self, from: stateBytes, initial: ckvm_fpu(), what: "struct kvm_fpu")) }
}

extension VCPUEvents: StateBytes {
    public static var byteCount: Int { MemoryLayout<ckvm_vcpu_events>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws {
        self.init(try load(ckvm_vcpu_events.self, from: stateBytes, initial: ckvm_vcpu_events(), what: "struct kvm_vcpu_events"))
    }
}

extension ExtendedControlRegisters: StateBytes {
    public static var byteCount: Int { MemoryLayout<ckvm_xcrs>.size }
    public var stateBytes: [UInt8] { bytes(of: raw) }
    public init(stateBytes: [UInt8]) throws { self.init(try load(ckvm_xcrs.self, from: stateBytes, initial: ckvm_xcrs(), what: "struct kvm_xcrs")) }
}
