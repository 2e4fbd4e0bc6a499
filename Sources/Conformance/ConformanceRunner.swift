import Dispatch
import FoundationEssentials
import Glibc
import GuestKit
import KVM

/// Receives results as a run goes, for progress and final output.
public protocol ResultReporter: AnyObject {
    func begin(total: Int)
    func record(_ result: TestResult, index: Int, total: Int)
    func finish(_ summary: RunSummary)
}

/// Runs conformance tests: checks requirements (SKIP with the reason), runs
/// each body, and turns every error into a FAIL with its diagnosis.
public final class ConformanceRunner {
    public let host: HostProbe

    public init(host: HostProbe) {
        self.host = host
    }

    /// Tests whose id matches any of `filters` (all tests without filters).
    /// A filter matches by substring, or as a glob when it has `*` or `?`.
    public static func select(_ tests: [ConformanceTest], filters: [String]) -> [ConformanceTest] {
        guard !filters.isEmpty else { return tests }
        return tests.filter { test in filters.contains { Self.matches(test.id, filter: $0) } }
    }

    static func matches(_ id: String, filter: String) -> Bool {
        if filter.contains("*") || filter.contains("?") {
            return fnmatch(filter, id, 0) == 0
        }
        return id.contains(filter)
    }

    /// Runs one test.
    public func run(_ test: ConformanceTest) -> TestResult {
        let start = DispatchTime.now()
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9 }
        for requirement in test.requirements {
            if let reason = host.unmetReason(requirement) {
                return TestResult(id: test.id, suite: test.suite, outcome: .skip(reason), duration: elapsed(), log: [])
            }
        }
        guard let kvm = host.kvm else {
            return TestResult(id: test.id, suite: test.suite, outcome: .skip(host.unavailableReason ?? "no KVM"), duration: elapsed(), log: [])
        }
        let context = TestContext(kvm: kvm, host: host)
        let outcome: TestOutcome
        do {
            try test.body(context)
            outcome = .pass
        } catch let skip as TestSkip {
            outcome = .skip(skip.reason)
        } catch {
            outcome = .fail(String(describing: error))
        }
        return TestResult(id: test.id, suite: test.suite, outcome: outcome, duration: elapsed(), log: context.log)
    }

    /// Runs all tests in order, reporting each; returns the summary.
    @discardableResult
    public func run(_ tests: [ConformanceTest], reporters: [ResultReporter]) -> RunSummary {
        let start = DispatchTime.now()
        var summary = RunSummary()
        reporters.forEach { $0.begin(total: tests.count) }
        for (index, test) in tests.enumerated() {
            let result = run(test)
            summary.add(result.outcome)
            reporters.forEach { $0.record(result, index: index + 1, total: tests.count) }
        }
        summary.seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        reporters.forEach { $0.finish(summary) }
        return summary
    }
}
