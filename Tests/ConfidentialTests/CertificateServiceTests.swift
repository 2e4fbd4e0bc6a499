import Confidential
import Foundation
import GuestMemory
import KVM
import Testing

@Suite(.timeLimit(.minutes(5))) struct CertificateServiceTests {
    let directory = TemporaryDirectory()
    let blob: [UInt8]
    let file: String
    let memory: GuestAddressSpace
    let mmio: Range<UInt64> = 0x8_0000..<0x9_0000  // inside the first RAM region on purpose

    init() throws {
        blob = try SNPCertificateTable([
            (.vcek, Array(repeating: 0xA1, count: 3000)), (.ask, Array(repeating: 0xA2, count: 2000)),
            (.ark, Array(repeating: 0xA3, count: 1500)),
        ]).encoded()
        file = directory.write(blob, to: "certs.bin")
        memory = try makeGuestMemory()
    }

    func responder(timeout: Duration = .milliseconds(100), log: @escaping (String) -> Void = { _ in }) -> SNPCertificateResponder {
        let service = SNPCertificateService(
            configuration: .init(certificateFile: file, lockTimeout: timeout, mmioRanges: [mmio]),
            guestMemory: memory, log: log)
        return SNPCertificateResponder(service: service)
    }

    @Test func writesTheBlobAndZeroesTheRestByteForByte() throws {
        let run = SyntheticRun()
        let handler = responder()
        let gpa: UInt64 = 0x1000
        try memory.write([UInt8](repeating: 0x5A, count: 3 * 4096), at: GuestAddress(gpa))
        try memory.write([0x77], at: GuestAddress(gpa + 3 * 4096))  // just past the buffer: must survive
        #expect(handler.handle(run.certificateExit(gpa: gpa, pages: 3), runArea: run.area) == .answered(.certificatesWritten))
        #expect(run.ret == 0)
        let written = try memory.read(at: GuestAddress(gpa), length: 3 * 4096)
        #expect(Array(written.prefix(blob.count)) == blob)
        #expect(written.dropFirst(blob.count).allSatisfy { $0 == 0 })
        #expect(try memory.read(at: GuestAddress(gpa + 3 * 4096), length: 1) == [0x77])
        // The lock is held until the firmware call completes (the EINTR of immediate_exit).
        #expect(run.immediateExit)
        #expect(handler.heldLease?.isHeld == true)
        #expect(throws: CertificateFileError.self) {
            try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .milliseconds(5))
        }
        #expect(handler.handle(.interrupted, runArea: run.area) == .completed)
        #expect(!run.immediateExit)
        #expect(handler.heldLease == nil)
        let writer = try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .milliseconds(5))
        writer.release()
        #expect(handler.statistics == .init(written: 1, completions: 1))
    }

    @Test func tooSmallBufferGetsENOSPCWithTheExactPageCount() throws {
        #expect(blob.count > 4096 && blob.count <= 2 * 4096)
        let run = SyntheticRun()
        let handler = responder()
        try memory.write([UInt8](repeating: 0x5A, count: 4096), at: 0x4000)
        #expect(handler.handle(run.certificateExit(gpa: 0x4000, pages: 1), runArea: run.area) == .answered(.bufferTooSmall(pagesNeeded: 2)))
        #expect(run.ret == 28)
        #expect(run.npages == 2)
        #expect(!run.immediateExit)
        #expect(handler.heldLease == nil)
        #expect(try memory.read(at: 0x4000, length: 4096).allSatisfy { $0 == 0x5A })  // untouched
        // Exactly the pages asked for is enough.
        #expect(handler.handle(run.certificateExit(gpa: 0x4000, pages: 2), runArea: run.area) == .answered(.certificatesWritten))
    }

    @Test(arguments: [
        (UInt64(0x1000), UInt64(0), "npages is 0"),
        (UInt64(0x1001), UInt64(1), "not 4 KiB aligned"),
        (UInt64(0xFFFF_FFFF_FFFF_F000), UInt64(2), "overflows"),
        (UInt64(0x1000), UInt64(0x0010_0000_0000_0000), "overflows"),
        (UInt64(0x1000), UInt64.max, "overflows"),
        (UInt64(0x10_0000), UInt64(1), "not inside one guest RAM region"),  // the hole
        (UInt64(0xF_F000), UInt64(2), "not inside one guest RAM region"),  // runs into the hole
        (UInt64(0x1F_F000), UInt64(2), "not inside one guest RAM region"),  // starts in the hole
        (UInt64(0x30_0000), UInt64(1), "not inside one guest RAM region"),  // past the end
        (UInt64(0x7_F000), UInt64(2), "overlaps MMIO"),
        (UInt64(0x8_0000), UInt64(1), "overlaps MMIO"),
    ])
    func badBuffersAreRefusedWithEIOAndALogLine(gpa: UInt64, pages: UInt64, reason: String) throws {
        let run = SyntheticRun()
        var lines: [String] = []
        let handler = responder { lines.append($0) }
        let before = try memory.read(at: 0, length: 1 << 20)
        #expect(handler.handle(run.certificateExit(gpa: gpa, pages: pages), runArea: run.area) == .answered(.failure))
        #expect(run.ret == 5)
        #expect(!run.immediateExit)
        #expect(lines.count == 1)
        #expect(lines.first?.contains(reason) == true, "\(lines)")
        #expect(try memory.read(at: 0, length: 1 << 20) == before)
    }

    @Test func busyWhenAnUpdateHoldsTheLock() throws {
        let run = SyntheticRun()
        var lines: [String] = []
        let handler = responder(timeout: .milliseconds(20)) { lines.append($0) }
        let update = try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .zero)
        let clock = ContinuousClock()
        let start = clock.now
        #expect(handler.handle(run.certificateExit(gpa: 0x1000, pages: 4), runArea: run.area) == .answered(.busy))
        #expect(clock.now - start >= .milliseconds(20))
        #expect(run.ret == 11)
        #expect(!run.immediateExit)
        #expect(lines.first?.contains("EAGAIN") == true)
        update.release()
        #expect(handler.handle(run.certificateExit(gpa: 0x1000, pages: 4), runArea: run.area) == .answered(.certificatesWritten))
        #expect(handler.statistics.busy == 1)
    }

    @Test func corruptOrMissingFileIsEIO() throws {
        let run = SyntheticRun()
        var lines: [String] = []
        let corrupt = directory.write(Array(blob.prefix(30)), to: "corrupt.bin")
        let service = SNPCertificateService(configuration: .init(certificateFile: corrupt), guestMemory: memory) { lines.append($0) }
        let handler = SNPCertificateResponder(service: service)
        #expect(handler.handle(run.certificateExit(gpa: 0x1000, pages: 4), runArea: run.area) == .answered(.failure))
        #expect(lines.last?.contains("terminat") == true, "\(lines)")
        let missing = SNPCertificateService(configuration: .init(certificateFile: directory.path + "/none"), guestMemory: memory) { lines.append($0) }
        #expect(SNPCertificateResponder(service: missing).handle(run.certificateExit(gpa: 0x1000, pages: 4), runArea: run.area) == .answered(.failure))
        #expect(lines.last?.contains("cannot open") == true)
    }

    @Test func otherExitsAreNotTouched() {
        let run = SyntheticRun()
        let handler = responder()
        #expect(handler.handle(.halt, runArea: run.area) == .notCertificateExit)
        #expect(handler.handle(.interrupted, runArea: run.area) == .notCertificateExit)  // nothing held
        // Exit 40 is KVM_EXIT_TDX unless compatibility was asked for.
        #expect(handler.handle(run.legacyExit(gpa: 0x1000, pages: 4), runArea: run.area) == .notCertificateExit)
        #expect(run.legacy?.returnCode == 0)
    }

    @Test func legacyFormUsesV15CodesAndTheDoneExit() throws {
        let run = SyntheticRun()
        let service = SNPCertificateService(
            configuration: .init(certificateFile: file, lockTimeout: .milliseconds(10), mmioRanges: [mmio]), guestMemory: memory)
        let handler = SNPCertificateResponder(service: service, legacyExitCompatibility: true)

        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 1), runArea: run.area) == .answered(.bufferTooSmall(pagesNeeded: 2)))
        #expect(run.legacy?.returnCode == 1)
        #expect(run.legacy?.pageCount == 2)
        #expect(run.legacy?.flags == 0)

        #expect(handler.handle(run.legacyExit(gpa: 0x2001, pages: 2), runArea: run.area) == .answered(.failure))
        #expect(run.legacy?.returnCode == 1 << 31)

        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 2), runArea: run.area) == .answered(.certificatesWritten))
        #expect(run.legacy?.returnCode == 0)
        #expect(run.legacy?.flags == 1)  // NOTIFY_DONE
        #expect(!run.immediateExit)  // the v15 form uses its own completion exit
        #expect(try memory.read(at: 0x2000, length: blob.count) == blob)
        #expect(handler.heldLease != nil)
        // While the request is in flight no update can start.
        #expect(throws: CertificateFileError.self) { try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .milliseconds(5)) }
        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 2, done: true), runArea: run.area) == .completed)

        let update = try CertificateFileLock.acquire(file, kind: .exclusive, timeout: .zero)
        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 2), runArea: run.area) == .answered(.busy))
        #expect(run.legacy?.returnCode == 2)
        update.release()

        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 2), runArea: run.area) == .answered(.certificatesWritten))
        #expect(handler.handle(run.legacyExit(gpa: 0x2000, pages: 2, done: true), runArea: run.area) == .completed)
        #expect(handler.heldLease == nil)
    }
}
