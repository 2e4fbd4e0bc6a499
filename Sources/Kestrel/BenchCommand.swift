import ArgumentParser
import Conformance
import KVM
import TextFormat

/// `kestrel bench`: measurements that need a KVM host and run where `kestrel`
/// runs, in the lab's L1s too (kestrel-bench is not built for them).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure Kestrel against this host's KVM (medians, with a baseline from the same run).",
        subcommands: [ConversionsBench.self, SnapshotBench.self, DirtyLogBench.self])
}

/// `kestrel bench conversions`: private/shared conversion throughput.
struct ConversionsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conversions",
        abstract: "Private/shared conversion throughput through Kestrel's conversion manager, for 4 KiB and 2 MiB ranges.",
        discussion: """
            A guest on a KVM_X86_SW_PROTECTED_VM converts ranges to private and back with \
            KVM_HC_MAP_GPA_RANGE and touches every page after each conversion; Kestrel answers \
            with KVM_SET_MEMORY_ATTRIBUTES and discards the old backing (a hole punched in the \
            guest_memfd, MADV_REMOVE on shared pages). The baseline is the same guest with the \
            hypercall answered without converting. Needs KVM_X86_SW_PROTECTED_VM (the lab's \
            6.12-sw-protected kernel: kestrel lab run --kernel 6.12-sw-protected -- kestrel bench conversions).
            """)

    @Option(help: "Rounds per range size; the median is reported.")
    var rounds = 5

    @Option(name: .customLong("conversions-4k"), help: "Conversions per round for 4 KiB ranges.")
    var conversions4K = 2000

    @Option(name: .customLong("conversions-2m"), help: "Conversions per round for 2 MiB ranges.")
    var conversions2M = 100

    func validate() throws {
        guard rounds >= 1, conversions4K >= 2, conversions2M >= 2 else {
            throw ValidationError("--rounds must be at least 1 and each conversion count at least 2")
        }
    }

    func run() throws {
        let kvm = try KVMSystem()
        let types = VMType.types(inMask: try kvm.checkExtension(.vmTypes))
        guard types.contains(.softwareProtected) else {
            printError("kestrel bench conversions: this host's KVM does not offer \(VMType.softwareProtected.name) "
                + "(KVM_CAP_VM_TYPES: \(types.map(\.name).joined(separator: ", "))); the lab's 6.12-sw-protected kernel does")
            throw ExitCode(2)
        }
        print("range    conversions/s  pages/s     baseline exits/s  conversion cost (ratio)")
        for (size, count, label) in [(UInt64(4096), conversions4K, "4 KiB"), (UInt64(2 << 20), conversions2M, "2 MiB")] {
            var measured: [Double] = [], baseline: [Double] = []
            var pages: UInt64 = 0
            for round in 0..<rounds {
                // Interleaved, so drift on a noisy host hits both alike.
                let sample = try ConversionThroughput.measure(kvm: kvm, rangeSize: size, conversions: count, convert: true)
                let control = try ConversionThroughput.measure(kvm: kvm, rangeSize: size, conversions: count, convert: false)
                measured.append(sample.conversionsPerSecond)
                baseline.append(control.conversionsPerSecond)
                pages = sample.pagesPerConversion
                printError("bench: \(label) round \(round + 1)/\(rounds): \(sample.conversionsPerSecond.text(places: 0)) conversions/s, "
                    + "baseline \(control.conversionsPerSecond.text(places: 0))/s")
            }
            let median = Self.median(measured), control = Self.median(baseline)
            let columns: [(String, Int)] = [
                (label, 9), (median.text(places: 0), 15), ((median * Double(pages)).text(places: 0), 12), (control.text(places: 0), 18),
                ((control / median).text(places: 2) + "x", 0),
            ]
            print(columns.map { $0.0.padded(to: $0.1) }.joined())
        }
        print("(medians of \(rounds) rounds; \(conversions4K) and \(conversions2M) conversions per round, half to private and half back)")
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
