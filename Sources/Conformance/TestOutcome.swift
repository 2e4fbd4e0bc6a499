/// How a conformance test ended.
public enum TestOutcome: Equatable, Sendable {
    case pass
    /// The host or KVM did not do what it promises; the diagnosis says what happened.
    case fail(String)
    /// A requirement is missing on this host; the reason names it.
    case skip(String)

    public var label: String {
        switch self {
        case .pass: return "PASS"
        case .fail: return "FAIL"
        case .skip: return "SKIP"
        }
    }

    /// The diagnosis or the skip reason.
    public var detail: String? {
        switch self {
        case .pass: return nil
        case .fail(let diagnosis): return diagnosis
        case .skip(let reason): return reason
        }
    }
}

/// One test's result.
public struct TestResult: Sendable {
    public let id: String
    public let suite: String
    public let outcome: TestOutcome
    /// Wall time of the test body, in seconds.
    public let duration: Double
    /// Messages the test (or its guest, via PRINT) logged.
    public let log: [String]
}

/// Counts of a run.
public struct RunSummary: Sendable, Equatable {
    public var passed = 0
    public var failed = 0
    public var skipped = 0
    public var seconds: Double = 0

    public var total: Int { passed + failed + skipped }

    mutating func add(_ outcome: TestOutcome) {
        switch outcome {
        case .pass: passed += 1
        case .fail: failed += 1
        case .skip: skipped += 1
        }
    }
}
