import Glibc
import GuestMemory
import HostSystem
import Synchronization
import Testing
@testable import VMM

/// The live copy against a writer thread of this process: the file holds
/// the memory exactly as it was at the instant (`protect`), although the
/// writer went on rewriting every page meanwhile, and a write to a page
/// not copied yet waited for its copy. No KVM is involved; KVM's writes
/// reach the same faults (the API process test and the lab cover them).
@Suite(.enabled(if: (try? Userfault(features: Userfault.writeProtectShared)) != nil,
                "needs userfaultfd(2) with write protection of shared memory (root or vm.unprivileged_userfaultfd; Linux 5.19)"),
       .timeLimit(.minutes(1)))
struct LiveMemoryCopyTests {
    static let page = MemoryMapping.pageSize

    /// Writes pass numbers into the first 8 bytes of pages [0, pages) over
    /// and over, and parks between two pages when asked.
    final class Writer: Sendable {
        struct Control { var pause = false, parked = false, stop = false, pages = 0 }
        let control = Mutex(Control())
        let passes = Atomic<Int>(0)

        func run(_ base: UnsafeMutableRawPointer, pages: Int) {
            var pass: UInt64 = 2
            control.withLock { $0.pages = pages }
            while true {
                for index in 0..<control.withLock({ $0.pages }) {
                    while true {
                        let (pause, stop) = control.withLock { state -> (Bool, Bool) in
                            state.parked = state.pause
                            return (state.pause, state.stop)
                        }
                        if stop { return }
                        if !pause { break }
                        usleep(100)
                    }
                    // Sound: index < pages, and the mapping holds them.
                    (base + index * page).storeBytes(of: pass, as: UInt64.self)
                }
                pass += 1
                passes.add(1, ordering: .relaxed)
            }
        }
    }

    /// Protected at the pause only, or mostly ahead of it (the writer runs
    /// meanwhile, through protected pages and into holes, which the pause
    /// then protects).
    @Test(arguments: [false, true]) func theFileHoldsTheInstantWhileAWriterGoesOn(ahead: Bool) throws {
        let size = 16 << 20
        let mapping = try MemoryMapping(sharedMemorySize: size, name: "kestrel-live-test")
        // Data in the first 8 MiB (and 15 to 16 MiB, discarded ahead of the instant), holes after; the writer
        // rewrites the first 12 MiB.
        memset(mapping.baseAddress, 1, 8 << 20)
        memset(mapping.baseAddress + (15 << 20), 1, 1 << 20)
        let writer = Writer()
        let base = UInt(bitPattern: mapping.baseAddress)
        let thread = try POSIXThread.start { writer.run(UnsafeMutableRawPointer(bitPattern: base)!, pages: (12 << 20) / Self.page) }
        defer {
            writer.control.withLock { $0.stop = true }
            thread.join()
        }
        #expect(Self.waitFor { writer.passes.load(ordering: .relaxed) >= 1 })

        let copy = try LiveMemoryCopy(regions: [(mapping, 0)])
        defer { copy.release() }
        if ahead {
            // Some holes are data by the instant: the writer now covers 14 MiB.
            writer.control.withLock { $0.pages = (14 << 20) / Self.page }
            try copy.protectAhead()
            // Two whole passes over 14 MiB (one may have begun over 12) through the protected pages, and a
            // discard (from another thread: it waits until its remove event is read).
            let before = writer.passes.load(ordering: .relaxed)
            let discarder = try POSIXThread.start { _ = madvise(UnsafeMutableRawPointer(bitPattern: base + (15 << 20)), 1 << 20, MADV_REMOVE) }
            #expect(Self.waitFor(step: 50) { (try? copy.serveAhead()) != nil && writer.passes.load(ordering: .relaxed) >= before + 2 })
            discarder.join()
        }
        writer.control.withLock { $0.pause = true }
        #expect(Self.waitFor(step: 50) { (try? copy.serveAhead()) != nil && writer.control.withLock { $0.parked } })
        // Read from the memfd, not the mapping: a read through the mapping would allocate the holes.
        var instant = [UInt8](repeating: 0xEE, count: size)
        // Sound: the array holds `size` bytes.
        #expect(instant.withUnsafeMutableBytes { pread(mapping.sharedMemoryFile!, $0.baseAddress, size, 0) } == size)
        let data = try copy.protect()
        writer.control.withLock { $0.pause = false }
        usleep(50_000)  // the writer reaches a protected page and waits there

        let path = "/tmp/kestrel-live-\(getpid()).mem"
        let file = try AtomicFile(creating: path, what: "test memory file")
        defer { file.abandon() }
        try copy.copy(into: file)
        copy.release()
        let dataAtInstant = ahead ? 14 << 20 : 13 << 20
        #expect(data == UInt64(dataAtInstant), "the data extents at the instant: \(data) bytes")
        #expect(copy.counts.bytesWritten == data)
        #expect(copy.counts.faults >= 1, "the writer never waited for a copy")
        let passesAfter = writer.passes.load(ordering: .relaxed)
        #expect(Self.waitFor { writer.passes.load(ordering: .relaxed) > passesAfter + 1 }, "the writer stopped after the copy")

        var written = [UInt8](repeating: 0xEE, count: size)
        // Sound: the array holds `size` bytes.
        let got = written.withUnsafeMutableBytes { pread(file.fd, $0.baseAddress, size, 0) }
        #expect(got == (ahead ? 14 << 20 : 16 << 20), "the file's size before finish: its last data byte")
        for index in (got > 0 ? got : 0)..<size { written[index] = 0 }
        let firstDifference = written.indices.first { written[$0] != instant[$0] }
        #expect(firstDifference == nil, "the file differs from the instant at byte \(firstDifference ?? 0)")
    }

    @Test func rangeArithmetic() {
        #expect(LiveMemoryCopy.merge([8..<12, 0..<4, 4..<6, 10..<16, 20..<20]) == [0..<6, 8..<16])
        #expect(LiveMemoryCopy.subtract([0..<10, 20..<30], [2..<4, 8..<22, 29..<40]) == [0..<2, 4..<8, 22..<29])
        #expect(LiveMemoryCopy.subtract([0..<10], []) == [0..<10])
    }

    /// Whether `condition` holds within 20 s, tried every `step` µs.
    static func waitFor(step: UInt32 = 5000, _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(step)
        }
        return false
    }
}
