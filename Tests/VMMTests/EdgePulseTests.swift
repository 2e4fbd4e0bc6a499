import Synchronization
import Testing
@testable import VMM

/// Pulses raised from two threads at once reach the line whole: high, low,
/// high, low, never two highs in a row (which the irqchip would take as one edge).
@Suite(.timeLimit(.minutes(5))) struct EdgePulseTests {
    @Test func pulsesFromTwoThreadsNeverInterleave() async {
        let states = Mutex<[Bool]>([])
        let pulse = EdgePulse { active in states.withLock { $0.append(active) } }
        let perThread = 20_000
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<2 { group.addTask { for _ in 0..<perThread { pulse.pulse() } } }
        }
        let recorded = states.withLock { $0 }
        #expect(recorded.count == 4 * perThread)
        let interleaved = recorded.indices.filter { recorded[$0] != ($0 % 2 == 0) }.count
        #expect(interleaved == 0, "each high is followed by its own low")
    }
}
