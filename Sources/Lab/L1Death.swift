import Glibc

/// What went wrong in one L1 boot, decided from its console before the lab
/// boots it again: whether the kernel died or logged a trace, where, and
/// whether a retry may follow. A lab that retries past a failure it has not
/// classified can pass a KVM crash that Kestrel triggered, so only the two
/// classes FINDINGS.md section 6 ties to the emulator under the L1 are retried;
/// every other death, and every trace in KVM or in a Kestrel process, is a
/// failure, and its console is kept.
public struct L1Death: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable {
        /// A trace whose frames or warning site are in kvm, kvm_amd or
        /// kvm_intel. A failure, whatever else happened, and never retried:
        /// the trace is what tells a KVM crash apart from a corrupted L1.
        case kvmTrace = "kvm-trace"
        /// A trace in a Kestrel process (`Comm: kestrel` or a `k-` thread):
        /// the kernel failed while Kestrel drove it. A failure, never retried.
        case kestrelTrace = "kestrel-trace"
        /// An Oops or panic while the L1 booted, before the command or KVM
        /// ran, outside KVM and Kestrel: the emulator killing the L1
        /// (section 6). Retried. A WARNING alone is not a death.
        case bootCorruption = "boot-corruption"
        /// The L1's heartbeat went silent while the command ran, with no
        /// kernel message (section 6). Retried.
        case frozen
        /// Any other end without a status: a trace while the command ran
        /// outside KVM and Kestrel, or QEMU ending with no kernel message. A
        /// failure, not retried.
        case unclassified

        /// Whether the lab may boot the L1 again after this.
        public var retried: Bool { self == .bootCorruption || self == .frozen }

        /// What the kind means, for a person reading the result.
        public var explanation: String {
            switch self {
            case .kvmTrace: return "a kernel trace in KVM (a failure; not booted again)"
            case .kestrelTrace: return "a kernel trace in a Kestrel process (a failure; not booted again)"
            case .bootCorruption: return "an Oops or panic while booting, outside KVM (the emulator under the L1, FINDINGS.md section 6)"
            case .frozen: return "the L1 stopped responding (no heartbeat for the lab's limit), with no kernel message (FINDINGS.md section 6)"
            case .unclassified: return "an end without a status that matches no known class (a failure; not booted again)"
            }
        }
    }

    public var kind: Kind
    /// 1 for the first boot of a run.
    public var boot: Int
    /// Whether the command had started (the L1 reported "ready").
    public var whileCommandRan: Bool
    /// The first problem line, or what ended the boot when there is none.
    public var firstLine: String
    /// The trace's lines (from the first problem line to its end marker), if any.
    public var trace: [String]
    /// Where the boot's whole console was kept.
    public var keptConsole: String?

    /// One line for results and the matrix legend.
    /// For a freeze, how long the heartbeat had been silent when the lab
    /// stopped the L1 (`LabMachine.heartbeatSilenceLimit`), when known.
    public var silentSeconds: Double?

    /// Whether the L1's clock crawls while its CPU is busy (under Bochs), so
    /// that a silent heartbeat means a frozen L1 or one busy all that time.
    public var clockCrawlsWhenBusy = false

    public var summary: String {
        let what = kind == .frozen && silentSeconds != nil
            ? (clockCrawlsWhenBusy
                ? "the L1's heartbeat was silent for \(Int(silentSeconds!)) s, with no kernel message: the L1 froze, or its CPU was busy "
                    + "all that time (under Bochs the L1's clock nearly stops while it is busy; LabMachine.frozenAfterSecondsUnderBochs)"
                : "the L1 stopped responding (no heartbeat for \(Int(silentSeconds!)) s), with no kernel message (FINDINGS.md section 6)")
            : kind.explanation
        return "boot \(boot) \(whileCommandRan ? "while the command ran" : "while booting"): \(what): \(firstLine)"
            + (keptConsole.map { "; console kept at \($0)" } ?? "")
    }

    /// Classifies one boot from its console and how it ended. Nil when the
    /// boot reported a status and its kernel logged no trace in KVM or in a
    /// Kestrel process.
    public static func classify(console: String, statusReported: Bool, froze: Bool, whileCommandRan: Bool, boot: Int) -> L1Death? {
        let lines = consoleLines(console)
        let problems = LabHostDescription.kernelProblems(in: console)
        let trace = Self.trace(in: lines)
        let kvmLines = lines.filter(isKVMFrame)
        let kestrelTrace = Self.kestrelTrace(in: lines)
        func death(_ kind: Kind, _ first: String?) -> L1Death {
            L1Death(kind: kind, boot: boot, whileCommandRan: whileCommandRan, firstLine: first ?? "no kernel message", trace: trace, keptConsole: nil)
        }
        if !kvmLines.isEmpty {
            return death(.kvmTrace, problems.first.map { "\($0) (in KVM: \(Self.message(kvmLines[0])))" } ?? kvmLines[0])
        }
        if let kestrelTrace { return death(.kestrelTrace, "\(kestrelTrace.problem) (task \(kestrelTrace.task))") }
        if statusReported { return nil }
        if froze && problems.isEmpty { return death(.frozen, nil) }
        let died = problems.contains { $0.contains("Oops") || $0.contains("Kernel panic") }
        if died && !whileCommandRan { return death(.bootCorruption, problems[0]) }
        return death(.unclassified, problems.first ?? (froze ? "the heartbeat stopped after a kernel message" : nil))
    }

    /// A backtrace frame or warning site in KVM: a symbol in the kvm,
    /// kvm_amd or kvm_intel module (`name+0x1a/0x40 [kvm_amd]`), or a WARNING
    /// at a KVM source file. Module tags appear only in kernel backtraces.
    static func isKVMFrame(_ line: String) -> Bool {
        for module in ["[kvm]", "[kvm_amd]", "[kvm_intel]"] {
            guard let range = line.firstRange(of: module) else { continue }
            // "sym+0x12/0x34 [kvm]", with the module tag right after the offset.
            let before = line[..<range.lowerBound]
            if before.hasSuffix(" "), before.dropLast().split(separator: " ").last?.contains("/0x") == true { return true }
        }
        return line.contains("WARNING:") && (line.contains(" at arch/x86/kvm/") || line.contains(" at virt/kvm/"))
    }

    /// A console line without its printk timestamp ("[   45.125300] ") and leading spaces.
    static func message(_ line: String) -> Substring {
        var text = Substring(line)
        if text.hasPrefix("["), let end = text.firstIndex(of: "]") { text = text[text.index(after: end)...] }
        return text.trimmingPrefix(while: { $0 == " " })
    }

    /// The first trace whose task is a Kestrel process (`kestrel`, or a `k-`
    /// thread): its problem line and the task. A trace names its task in the
    /// "CPU: 0 PID: 123 Comm: kestrel ..." line a few lines after its first.
    static func kestrelTrace(in lines: [String]) -> (problem: String, task: String)? {
        for (index, line) in lines.enumerated() where LabHostDescription.isProblem(line) {
            for following in lines[(index + 1)...].prefix(8) {
                guard let task = task(inLine: following) else { continue }
                if task == "kestrel" || task.hasPrefix("k-") { return (line, task) }
                break
            }
        }
        return nil
    }

    /// The task named in a trace's "CPU: 0 PID: 123 Comm: kestrel ..." line.
    static func task(inLine line: String) -> String? {
        guard line.contains(" PID: "), let range = line.firstRange(of: " Comm: ") else { return nil }
        return line[range.upperBound...].split(separator: " ").first.map(String.init)
    }

    /// The first trace: from the first problem line to "---[ end trace" (or
    /// "end Kernel panic"), at most 80 lines.
    static func trace(in lines: [String]) -> [String] {
        guard let start = lines.firstIndex(where: { LabHostDescription.isProblem($0) }) else { return [] }
        var trace: [String] = []
        for line in lines[start...].prefix(80) {
            trace.append(line)
            if line.contains("---[ end trace") || line.contains("---[ end Kernel panic") { break }
        }
        return trace
    }

    /// Copies the console of a failed boot into `directory` (created if
    /// needed) as `<time>-<kernel>-<pid>-boot<N>.console.log`; returns its path.
    /// Crash traces are never deleted by the lab.
    public static func keep(console path: String, kernel: String, boot: Int, in directory: String) throws -> String {
        try makeDirectories(directory)
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        strftime(&buffer, buffer.count, "%Y%m%dT%H%M%SZ", &parts)
        let stamp = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let name = "\(stamp)-\(kernel.replacing("/", with: "_"))-\(getpid())-boot\(boot).console.log"
        let target = directory + "/" + name
        try writeFileAtomically((try? readBytes(path)) ?? Array("(the L1 wrote no console)\n".utf8), to: target)
        return target
    }
}
