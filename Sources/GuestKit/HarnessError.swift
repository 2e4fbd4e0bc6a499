import KVM

/// Why a guest run did not go as the host expected. Descriptions are the
/// diagnoses conformance tests print.
public enum HarnessError: Error, CustomStringConvertible {
    /// KVM returned an exit the harness does not handle (internal error,
    /// shutdown, an unexpected port...). `rip` is the guest RIP after the exit.
    case unexpectedExit(exit: String, reason: ExitReason, rip: UInt64?, instructionBytes: [UInt8]?)
    /// The vCPU made no progress to a ucall within the time limit.
    case timeout(seconds: Double, rip: UInt64?)
    /// The vCPU was found at `rip`, the instruction the run watched, at every
    /// check for `seconds`: the instruction there never completed.
    case stalled(rip: UInt64, seconds: Double)
    /// A ucall record that cannot be decoded.
    case malformedUcall(address: UInt64, kind: UInt64)
    /// A guest assertion failed.
    case guestAssertion(message: String, values: [UInt64])
    /// The guest made a different ucall than the test expected.
    case unexpectedUcall(got: Ucall, expected: String)

    public var description: String {
        switch self {
        case .unexpectedExit(let exit, _, let rip, _):
            return "unexpected exit \(exit)" + (rip.map { " at RIP 0x" + String($0, radix: 16) } ?? "")
        case .timeout(let seconds, let rip):
            return "vCPU made no ucall within \(seconds) s (stopped by the watchdog" + (rip.map { " at RIP 0x" + String($0, radix: 16) } ?? "") + ")"
        case .stalled(let rip, let seconds):
            return "vCPU stayed at RIP 0x\(String(rip, radix: 16)) for \((seconds * 100).rounded() / 100) s: the instruction there did not complete"
        case .malformedUcall(let address, let kind):
            return "malformed ucall record at 0x\(String(address, radix: 16)) (kind \(kind))"
        case .guestAssertion(let message, let values):
            return "guest assertion failed: \(message)" + (values.count == 2 ? " (got 0x\(String(values[0], radix: 16)), expected 0x\(String(values[1], radix: 16)))" : Ucall.format(values))
        case .unexpectedUcall(let got, let expected):
            if case .exception(let exception) = got, !exception.expected {
                return "unexpected guest exception: \(exception) (expected \(expected))"
            }
            return "guest made \(got), expected \(expected)"
        }
    }

    /// The exit reason when the failure is an unexpected exit.
    public var exitReason: ExitReason? {
        if case .unexpectedExit(_, let reason, _, _) = self { return reason }
        return nil
    }
}
