import Glibc
import SystemPackage
import GuestKit
import KVM
import TextFormat

/// How this KVM runs guest code, measured: a long-mode guest counts down a
/// register (`dec rcx; jnz`) twice, for a short and a long count, and the
/// difference gives loop iterations per second without the setup and exit costs.
///
/// Hardware virtualization runs such a loop at about the host CPU's speed
/// (10^8-10^9 iterations/s). KVM backends that run guest instructions through
/// an emulator (kvm_pvm on our machines) reach about 10^6, and every verdict
/// and timing on such a host says more about the emulator than about KVM.
public struct GuestExecutionProbe: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// At or near hardware speed.
        case native
        /// Slower than hardware but far faster than an instruction emulator
        /// (nested virtualization on an emulated or translated CPU).
        case translated
        /// Instruction by instruction in software.
        case emulated
    }

    public let iterationsPerSecond: Double
    public let kind: Kind
    /// Whether this host is itself a virtual machine (CPUID.1:ECX bit 31, the
    /// "hypervisor" flag in /proc/cpuinfo): its "hardware" may be emulated
    /// too, as in the lab's L1 under QEMU TCG.
    public var hostIsVirtual: Bool = false

    /// The boundaries, in loop iterations per second.
    public static let nativeFloor = 100_000_000.0
    public static let emulatedCeiling = 20_000_000.0

    public static func classify(_ rate: Double) -> Kind {
        rate >= nativeFloor ? .native : rate < emulatedCeiling ? .emulated : .translated
    }

    public var summary: String {
        let rate = "\(Self.scientific(iterationsPerSecond)) loop iterations/s"
        let how: String
        switch kind {
        case .native: how = "runs at hardware-virtualization speed (the CPU runs it, no instruction emulator): \(rate)"
        case .translated: how = "runs by translation or nested emulation, slower than hardware: \(rate)"
        case .emulated: how = "emulates guest instructions in software, about 1000x slower than hardware: \(rate)"
        }
        return how + (hostIsVirtual ? "; this host is itself a virtual machine (CPUID hypervisor bit)" : "")
    }

    static func scientific(_ value: Double) -> String {
        guard value > 0, value.isFinite else { return "0" }
        var exponent = 0, mantissa = value
        while mantissa >= 10 { mantissa /= 10; exponent += 1 }
        while mantissa < 1 { mantissa *= 10; exponent -= 1 }
        let tenths = Int((mantissa * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)e\(exponent)"
    }

    /// Measures with `short` and `long` iterations (each run bounded by the watchdog).
    public static func measure(kvm: KVMSystem, short: UInt64 = 20_000, long: UInt64 = 220_000) throws -> GuestExecutionProbe {
        func seconds(_ count: UInt64) throws -> Double {
            let program = GuestProgram()
            let a = program.assembler
            let loop = a.newLabel()
            a.mov(.rcx, count)
            a.bind(loop)
            a.dec(.rcx)
            a.j(.notEqual, loop)
            program.sync(stage: 1, .reg(.rcx))
            program.done()
            let machine = try GuestMachine(kvm: kvm)
            try machine.loadLongMode(program)
            let start = ContinuousClock.now
            _ = try machine.expectSync(stage: 1, timeout: 30)
            let elapsed = ContinuousClock.now - start
            try machine.expectDone()
            return elapsed.inSeconds
        }
        _ = try seconds(short)  // warm up: page faults, first entry
        let difference = max(try seconds(long) - seconds(short), 1e-9)
        let rate = Double(long - short) / difference
        let flags = (try? String(decoding: readAll("/proc/cpuinfo"), as: UTF8.self)) ?? ""
        let virtual = flags.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("hypervisor") ?? false
        return GuestExecutionProbe(iterationsPerSecond: rate, kind: classify(rate), hostIsVirtual: virtual)
    }
}

/// The bytes of a small file such as /proc/cpuinfo (whose size stat reports as 0).
func readAll(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemCallError.current("open(\(path))") }
    defer { close(fd) }
    var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { return bytes }
        bytes += chunk[0..<count]
    }
}
