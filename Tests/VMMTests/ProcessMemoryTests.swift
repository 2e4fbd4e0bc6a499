import Glibc
import HostSystem
import Testing
import VMM

/// These tests share one process with every other test, so each one acts on
/// its own mapping only: `releaseReadOnlyFilePages(only:)` is narrowed to the
/// test's file, and the footprint test's region sits between guard pages so
/// that the kernel cannot merge it with a neighbouring anonymous mapping.
@Suite(.timeLimit(.minutes(5))) struct ProcessMemoryTests {
    /// A 64 KiB file of known bytes, mapped privately; unmapped and removed by `close`.
    final class MappedFile {
        let path: String
        let fd: Int32
        let size = 64 << 10
        private(set) var base: UnsafeMutableRawPointer?

        init(protection: Int32) throws {
            var template = Array("/tmp/kestrel-pm-XXXXXX".utf8CString)
            fd = mkstemp(&template)
            path = String(cString: template)
            guard fd >= 0 else { throw ConfigurationError("mkstemp failed") }
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == size else { throw ConfigurationError("write failed") }
            let address = mmap(nil, size, protection, MAP_PRIVATE, fd, 0)
            guard address != MAP_FAILED else { throw ConfigurationError("mmap failed") }
            base = address
        }

        /// Reads every byte (faulting each page in) and returns them.
        func read() -> [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: size)) }

        var mapping: ProcessMemory.Mapping? {
            ProcessMemory.mappings()?.first(where: isThisFile)
        }

        func isThisFile(_ mapping: ProcessMemory.Mapping) -> Bool { mapping.start == UInt(bitPattern: base) }

        func close() {
            munmap(base, size)
            Glibc.close(fd)
            unlink(path)
        }
    }

    static let expected = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7) }

    @Test func readOnlyFilePagesAreReleasedAndReadBackUnchanged() throws {
        let file = try MappedFile(protection: PROT_READ)
        defer { file.close() }
        #expect(file.read() == Self.expected)
        let before = try #require(file.mapping)
        #expect(before.isFileBacked && before.isPrivate && !before.isWritable)
        #expect(before.residentBytes == UInt64(file.size))
        #expect(ProcessMemory.releaseReadOnlyFilePages(only: file.isThisFile) == UInt64(file.size))
        #expect(try #require(file.mapping).residentBytes == 0)
        #expect(file.read() == Self.expected)  // faults back the same bytes
    }

    @Test func mappingsWithCopyOnWritePagesAreLeftAlone() throws {
        let file = try MappedFile(protection: PROT_READ | PROT_WRITE)
        defer { file.close() }
        _ = file.read()
        file.base!.storeBytes(of: 0xEE, toByteOffset: 4096, as: UInt8.self)  // a private copy of page 1
        #expect(mprotect(file.base, file.size, PROT_READ) == 0)  // read-only now, like RELRO
        #expect(try #require(file.mapping).anonymousBytes == 4096)
        #expect(ProcessMemory.releaseReadOnlyFilePages(only: file.isThisFile) == 0)
        #expect(try #require(file.mapping).residentBytes == UInt64(file.size))
        var expected = Self.expected
        expected[4096] = 0xEE
        #expect(file.read() == expected)  // the copy survives
    }

    /// The control is a second mapping of the same kind, left registered
    /// nowhere: one fault there maps the cached pages around it too
    /// (fault-around), while in the registered mapping it maps one page.
    @Test(.enabled(if: FaultAroundSuppression.isSupported, "needs userfaultfd(2) with UFFD_FEATURE_WP_ASYNC (Linux 6.7 or later)"))
    func suppressedFaultAroundMapsOnePagePerFault() throws {
        let control = try MappedFile(protection: PROT_READ)
        defer { control.close() }
        let file = try MappedFile(protection: PROT_READ)
        defer { file.close() }
        for mapped in [control, file] {
            #expect(mapped.read() == Self.expected)  // every page in the page cache
            ProcessMemory.releaseReadOnlyFilePages(only: mapped.isThisFile)
            #expect(try #require(mapped.mapping).residentBytes == 0)
        }
        let suppression = try ProcessMemory.suppressFaultAroundInReadOnlyFileMappings(only: file.isThisFile)
        #expect(suppression.registeredBytes == UInt64(file.size))
        #expect(control.base!.load(fromByteOffset: 8192, as: UInt8.self) == Self.expected[8192])
        #expect(file.base!.load(fromByteOffset: 8192, as: UInt8.self) == Self.expected[8192])
        #expect(try #require(control.mapping).residentBytes > 4096, "fault-around maps the cached neighbours of a faulting page")
        #expect(try #require(file.mapping).residentBytes == 4096)
        #expect(file.read() == Self.expected)  // every page still reads back, one fault each
        withExtendedLifetime(suppression) {}
    }

    @Test(.enabled(if: FaultAroundSuppression.isSupported, "needs userfaultfd(2) with UFFD_FEATURE_WP_ASYNC (Linux 6.7 or later)"))
    func aRangeThatIsNotPageAlignedIsRefusedByName() throws {
        let file = try MappedFile(protection: PROT_READ)
        defer { file.close() }
        let misaligned = UInt(bitPattern: file.base) + 1
        #expect {
            try FaultAroundSuppression(ranges: [(start: misaligned, length: 8192)])
        } throws: { error in
            let error = try #require(error as? SystemCallError)
            return error.operation == "UFFDIO_REGISTER(WP, 0x\(String(misaligned, radix: 16)), 8192 bytes)" && error.errno == .invalidArgument
        }
    }

    @Test func footprintSeparatesGuestRegions() throws {
        let size = 1 << 20, guardSize = 4096
        // PROT_NONE on both sides: a neighbour with other protections cannot
        // be merged into the region's VMA, whatever else the process maps.
        let reservation = try #require(mmap(nil, size + 2 * guardSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(reservation, size + 2 * guardSize) }
        let region = reservation + guardSize
        #expect(mprotect(region, size, PROT_READ | PROT_WRITE) == 0)
        memset(region, 1, size / 2)  // touch half of it
        let footprint = try #require(ProcessMemory.footprint(guestStarts: [UInt(bitPattern: region)]))
        #expect(footprint.guest == UInt64(size / 2))
        #expect(footprint.resident == footprint.guest + footprint.fileBacked + footprint.anonymous)
        #expect(footprint.overhead == footprint.resident - footprint.guest)
        #expect(footprint.fileBacked > 0)  // at least the test binary's code
    }
}
