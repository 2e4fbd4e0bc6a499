import Confidential
import Foundation
import GuestMemory
import KestrelTesting
import KVM

// kestrel-bench snp-load | snp-fuzz: the certificate service under a concurrent
// writer process, and the certificate-table parser under random input.

/// Parses `--name value` pairs into integers with defaults.
struct NamedIntegers {
    var values: [String: Int]
    var flags: Set<String> = []

    init(_ arguments: [String], defaults: [String: Int], flags allowed: Set<String> = [], usage: String) throws {
        values = defaults
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            if argument == "-h" || argument == "--help" { print(usage); exit(0) }
            if allowed.contains(argument) { flags.insert(argument); continue }
            let name = String(argument.drop { $0 == "-" })
            guard argument.hasPrefix("--"), defaults[name] != nil else { throw BenchError("unknown argument \(argument); see --help") }
            guard let text = iterator.next(), let number = Int(text), number >= 0 else {
                throw BenchError("\(argument) needs a whole number")
            }
            values[name] = number
        }
    }

    subscript(_ name: String) -> Int { values[name]! }
}

/// The writer process: rewrites the certificate file in place, in small chunks,
/// under an exclusive lock (or without one, for the control run), until told
/// to stop by the duration. Prints the number of updates.
func snpWriter(_ arguments: [String]) throws {
    guard let file = arguments.first else { throw BenchError("snp-writer needs the certificate file") }
    let options = try NamedIntegers(
        Array(arguments.dropFirst()), defaults: ["duration-ms": 3000, "hold-max-us": 3000, "chunk": 256],
        flags: ["--no-lock"], usage: "usage: kestrel-bench snp-writer FILE [--duration-ms N] [--hold-max-us N] [--chunk N] [--no-lock]")
    var random = SplitMix64(seed: UInt64(getpid()))
    let deadline = ContinuousClock.now + .milliseconds(options["duration-ms"])
    var version: UInt32 = 1
    var waits: [Double] = []
    while ContinuousClock.now < deadline {
        let blob = VersionedCertificates.blob(version: version)
        if options.flags.contains("--no-lock") {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
            try handle.truncate(atOffset: 0)
            for start in stride(from: 0, to: blob.count, by: max(options["chunk"], 1)) {
                try handle.write(contentsOf: Data(blob[start..<min(start + max(options["chunk"], 1), blob.count)]))
            }
            try handle.close()
        } else {
            let asked = ContinuousClock.now
            let lease = try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .seconds(5))
            let waited = ContinuousClock.now - asked
            waits.append(Double(waited.components.seconds) * 1e6 + Double(waited.components.attoseconds) / 1e12)
            try lease.replaceContents(with: blob, chunkSize: options["chunk"])
            // The firmware update the lock covers takes a while now and then.
            if options["hold-max-us"] > 0 { usleep(UInt32(random.next() % UInt64(options["hold-max-us"] + 1))) }
            lease.release()
        }
        version += 1
        usleep(UInt32(random.next() % 500))
    }
    let sorted = waits.sorted()
    print("updates \(version - 1) wait-median-us \(sorted.isEmpty ? 0 : Int(sorted[sorted.count / 2])) wait-max-us \(Int(sorted.last ?? 0))")
}

/// One vCPU's share of the load: synthetic certificate exits against real guest memory.
// @unchecked Sendable: each reader is driven by exactly one load thread, and
// its counters are read only after that thread has finished (group.wait()).
final class LoadReader: @unchecked Sendable {
    let responder: SNPCertificateResponder?
    let memory: GuestAddressSpace
    let file: String
    let gpa: UInt64
    let pages: UInt64
    var served = 0, busy = 0, refused = 0, mismatches = 0
    var versions = Set<UInt32>()
    let area = RunArea.simulated()

    init(service: SNPCertificateService?, memory: GuestAddressSpace, file: String, gpa: UInt64) {
        responder = service.map { SNPCertificateResponder(service: $0) }
        self.memory = memory
        self.file = file
        self.gpa = gpa
        pages = UInt64((VersionedCertificates.maximumSize + 4095) / 4096)
    }

    func check(_ buffer: [UInt8]) {
        if let version = VersionedCertificates.version(in: buffer) { versions.insert(version) } else { mismatches += 1 }
    }

    /// One request through the service, then the firmware's turn, then the release.
    func requestWithService(_ firmwareMicroseconds: UInt32) throws {
        let exit = area.simulate(.snpRequestCertificates(address: gpa, pages: pages))
        switch responder!.handle(exit, runArea: area) {
        case .answered(.certificatesWritten):
            served += 1
            check(try memory.read(at: GuestAddress(gpa), length: Int(pages) * 4096))
            usleep(firmwareMicroseconds)  // the firmware makes the report under the shared lock
            _ = responder!.handle(.interrupted, runArea: area)
        case .answered(.busy): busy += 1
        default: refused += 1
        }
    }

    /// The control: read the file with no lock at all.
    func requestWithoutLock() {
        guard let data = FileManager.default.contents(atPath: file) else { refused += 1; return }
        served += 1
        check([UInt8](data) + [UInt8](repeating: 0, count: max(0, Int(pages) * 4096 - data.count)))
    }
}



func snpLoad(_ arguments: [String]) throws {
    let options = try NamedIntegers(
        arguments, defaults: ["duration-ms": 3000, "vcpus": 2, "lock-timeout-us": 1000, "firmware-us": 50, "hold-max-us": 3000, "think-max-us": 1000],
        flags: ["--no-lock"],
        usage: """
            usage: kestrel-bench snp-load [--duration-ms N (3000)] [--vcpus N (2)] [--lock-timeout-us N (1000)]
                                          [--firmware-us N (50)] [--hold-max-us N (3000)] [--think-max-us N (1000)]
                                          [--no-lock]
            A writer process rewrites the certificate file under an exclusive lock while the service
            answers certificate requests; every blob a guest receives must be one complete version.
            Each vCPU waits a random 0..think-max-us between requests (guests do other work between
            attestations; with no pause at all, overlapping shared locks can starve the writer).
            --no-lock is the control run: neither side locks, and mixes are expected.
            """)
    let noLock = options.flags.contains("--no-lock")
    let directory = NSTemporaryDirectory() + "kestrel-snp-load-\(getpid())"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let file = directory + "/certs.bin"
    _ = FileManager.default.createFile(atPath: file, contents: Data(VersionedCertificates.blob(version: 0)))

    let memory = GuestAddressSpace()
    try memory.add(try MemoryMapping(anonymousSize: 4 << 20), at: 0)
    let service = noLock ? nil : SNPCertificateService(
        configuration: .init(certificateFile: file, lockTimeout: .microseconds(options["lock-timeout-us"])), guestMemory: memory)
    let readers = (0..<max(options["vcpus"], 1)).map {
        LoadReader(service: service, memory: memory, file: file, gpa: UInt64($0) * 0x10_0000)
    }

    let writer = Process()
    writer.executableURL = URL(fileURLWithPath: "/proc/self/exe")
    writer.arguments = ["snp-writer", file, "--duration-ms", String(options["duration-ms"]), "--hold-max-us", String(options["hold-max-us"])]
        + (noLock ? ["--no-lock"] : [])
    let pipe = Pipe()
    writer.standardOutput = pipe
    try writer.run()

    let start = ContinuousClock.now
    let group = DispatchGroup()
    for reader in readers {
        group.enter()
        Thread {
            defer { group.leave() }
            var random = SplitMix64(seed: reader.gpa)
            while writer.isRunning {
                if options["think-max-us"] > 0 { usleep(UInt32(random.next() % UInt64(options["think-max-us"] + 1))) }
                if noLock { reader.requestWithoutLock() } else { try? reader.requestWithService(UInt32(options["firmware-us"])) }
            }
        }.start()
    }
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    writer.waitUntilExit()
    group.wait()
    let elapsed = ContinuousClock.now - start
    guard writer.terminationStatus == 0 else { throw BenchError("the writer process failed with status \(writer.terminationStatus)") }
    let words = String(decoding: output, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
    func figure(_ name: String) -> Int { words.firstIndex(of: Substring(name)).flatMap { Int(words[$0 + 1]) } ?? -1 }
    let updates = figure("updates")

    let served = readers.reduce(0) { $0 + $1.served }
    let busy = readers.reduce(0) { $0 + $1.busy }
    let refused = readers.reduce(0) { $0 + $1.refused }
    let mismatches = readers.reduce(0) { $0 + $1.mismatches }
    let versions = readers.reduce(into: Set<UInt32>()) { $0.formUnion($1.versions) }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print("SNP certificate service under a concurrent writer process (\(noLock ? "CONTROL: no locks" : "shared/exclusive OFD locks"))")
    print("  \(readers.count) vCPU threads, \(format(seconds, 2)) s, writer process pid \(writer.processIdentifier)")
    print("  requests served:   \(served) (\(Int(Double(served) / seconds))/s)")
    print("  updates made:      \(updates)" + (noLock ? "" : "  (writer's wait for the exclusive lock: median \(figure("wait-median-us")) us, max \(figure("wait-max-us")) us)"))
    print("  EAGAIN (busy):     \(busy)")
    print("  EIO (refused):     \(refused)")
    print("  distinct versions: \(versions.count)")
    print("  mismatches:        \(mismatches)   \(noLock ? "(expected > 0 without locks: shows the check can fail)" : "goal: 0")")
    if !noLock && (mismatches != 0 || refused != 0) { throw BenchError("\(mismatches) mismatches, \(refused) refusals") }
}

func snpFuzz(_ arguments: [String]) throws {
    let options = try NamedIntegers(
        arguments, defaults: ["inputs": 1_000_000, "seed": 1],
        usage: "usage: kestrel-bench snp-fuzz [--inputs N (1000000)] [--seed N (1)]")
    var fuzzer = CertificateTableFuzzer(seed: UInt64(options["seed"]))
    let start = ContinuousClock.now
    fuzzer.run(count: options["inputs"])
    let elapsed = ContinuousClock.now - start
    print("certificate-table parser fuzz, seed \(options["seed"]): \(fuzzer.report)")
    print("  time \(elapsed)")
    for violation in fuzzer.report.violations.prefix(10) { print("  VIOLATION: \(violation)") }
    if !fuzzer.report.violations.isEmpty { throw BenchError("\(fuzzer.report.violations.count) invariant violations") }
}
