import Confidential
import Foundation
import GuestMemory
import KestrelTesting
import KVM
import Testing

@Suite(.timeLimit(.minutes(5))) struct FuzzAndLoadTests {
    @Test func parserSurvivesRandomAndMutatedBlobs() {
        var fuzzer = CertificateTableFuzzer(seed: 0x5EED)
        fuzzer.run(count: 20_000)
        let report = fuzzer.report
        #expect(report.inputs == 20_000)
        #expect(report.violations.isEmpty, "\(report.violations.prefix(5))")
        // The mutations reach both verdicts and most refusal kinds.
        #expect(report.accepted > 1000)
        #expect(report.refusedByReason.keys.count >= 6, "\(report)")
    }

    @Test func fuzzerNoticesAnInvariantBreak() {
        // A hand-made table whose entry data does not match the blob it claims to
        // come from must be reported: the check is not vacuous.
        let table = try! SNPCertificateTable([(.vcek, [1, 2, 3])])
        #expect(CertificateTableFuzzer.violation(table, blob: [UInt8](repeating: 0, count: 51)) != nil)
    }

    @Test func versionedBlobsDetectMixes() {
        let first = VersionedCertificates.blob(version: 7)
        let second = VersionedCertificates.blob(version: 8)
        #expect(VersionedCertificates.version(in: first + [0, 0, 0]) == 7)
        #expect(VersionedCertificates.version(in: first + [1]) == nil)  // garbage after the blob
        var mixed = first
        let half = min(first.count, second.count) / 2
        mixed.replaceSubrange(half..<min(first.count, second.count), with: second[half..<min(first.count, second.count)])
        #expect(VersionedCertificates.version(in: mixed + [UInt8](repeating: 0, count: 4096)) == nil)
        #expect(first.count <= VersionedCertificates.maximumSize)
    }

    /// A writer on its own open file description (OFD locks conflict between
    /// descriptions even inside one process) rewrites the file in small chunks
    /// while the service answers requests: every delivered blob is one version.
    @Test func servedBlobsAreAlwaysOneCompleteVersion() throws {
        let directory = TemporaryDirectory()
        let file = directory.write(VersionedCertificates.blob(version: 0), to: "certs.bin")
        let memory = try makeGuestMemory()
        let service = SNPCertificateService(
            configuration: .init(certificateFile: file, lockTimeout: .milliseconds(1)), guestMemory: memory)
        let responder = SNPCertificateResponder(service: service)
        let stop = ManagedFlag()
        let updates = ManagedCounter()
        let writer = Thread {
            var version: UInt32 = 1
            while !stop.isSet {
                guard let lease = try? CertificateFileLock.acquire(file, kind: .exclusive, timeout: .seconds(1)) else { continue }
                try? lease.replaceContents(with: VersionedCertificates.blob(version: version), chunkSize: 256)
                if version % 4 == 0 { usleep(2000) }  // now and then a long update
                lease.release()
                updates.increment()
                version += 1
            }
        }
        writer.start()
        defer { stop.set() }

        let run = SyntheticRun()
        var served = 0, busy = 0, mismatches = 0
        var versions = Set<UInt32>()
        let pages = UInt64((VersionedCertificates.maximumSize + 4095) / 4096)
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline || updates.value < 20 || served < 50 {
            usleep(200)  // the guest does other work between requests (back-to-back shared locks starve a writer)
            switch responder.handle(run.certificateExit(gpa: 0x10000, pages: pages), runArea: run.area) {
            case .answered(.certificatesWritten):
                served += 1
                let buffer = try memory.read(at: 0x10000, length: Int(pages) * 4096)
                if let version = VersionedCertificates.version(in: buffer) { versions.insert(version) } else { mismatches += 1 }
                _ = responder.handle(.interrupted, runArea: run.area)  // firmware done: release
            case .answered(.busy): busy += 1
            case let other: Issue.record("unexpected \(other)")
            }
            if ContinuousClock.now > deadline + .seconds(30) { break }  // a loaded machine: give up, and the checks below say why
        }
        stop.set()
        while !writer.isFinished { usleep(1000) }
        #expect(mismatches == 0)
        #expect(served >= 50)
        #expect(updates.value >= 20)
        #expect(versions.count >= 2, "served \(served), versions \(versions.count), busy \(busy), updates \(updates.value)")
    }
}

/// Thread-safe helpers for the writer thread.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func increment() { lock.withLock { count += 1 } }
}
