import Glibc
import HostSystem
import Testing

/// The userfaultfd wrapper on this host: a fault waits until it is filled,
/// kernel accesses (read(2) into registered memory, as KVM's are) fault
/// too, a second fill is EEXIST, and a discard arrives as a remove event.
@Suite(.enabled(if: (try? Userfault()) != nil, "needs userfaultfd(2) with kernel faults (root or vm.unprivileged_userfaultfd)"),
       .timeLimit(.minutes(1)))
struct UserfaultTests {
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// An anonymous private mapping of `pages` pages, unmapped by the caller.
    static func anonymous(pages: Int) throws -> UnsafeMutableRawPointer {
        let address = mmap(nil, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let address, address != MAP_FAILED else { throw SystemCallError.current("mmap") }
        return address
    }

    @Test func faultsWaitUntilFilledAndASecondFillIsRefused() throws {
        let userfault = try Userfault(features: Userfault.eventRemove, nonBlocking: false)
        #expect(userfault.offeredFeatures & Userfault.eventRemove != 0)
        let memory = try Self.anonymous(pages: 4)
        defer { munmap(memory, 4 * Self.page) }
        let base = UInt(bitPattern: memory)
        try userfault.registerMissing(start: base, length: 4 * Self.page)
        let source = [UInt8](repeating: 0xA5, count: Self.page)

        // Page 0 is touched from another thread by the kernel itself: read(2)
        // from a pipe into it.
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        #expect(write(pipeEnds[1], "kernel", 6) == 6)
        let reader = try POSIXThread.start { [pipeEnds] in _ = read(pipeEnds[0], UnsafeMutableRawPointer(bitPattern: base), 6) }
        let event = try userfault.nextEvent()
        #expect(event == .pageFault(address: base, write: true), "\(String(describing: event))")
        // Sound: the source array holds one page.
        let filled = try source.withUnsafeBytes { try userfault.copy(to: base, from: $0.baseAddress!, length: Self.page) }
        #expect(filled == .filled(Self.page))
        reader.join()
        #expect(memory.load(as: UInt8.self) == UInt8(ascii: "k") && memory.load(fromByteOffset: 6, as: UInt8.self) == 0xA5)

        // A page already there: EEXIST, not a second copy.
        let again = try source.withUnsafeBytes { try userfault.copy(to: base, from: $0.baseAddress!, length: Self.page) }
        #expect(again == .alreadyPresent)
        #expect(try userfault.zeroPage(start: base + UInt(Self.page), length: Self.page) == .filled(Self.page))
        #expect(memory.load(fromByteOffset: Self.page, as: UInt64.self) == 0)

        // A discard is reported before the pages go, and they fault again.
        let discarder = try POSIXThread.start { _ = madvise(UnsafeMutableRawPointer(bitPattern: base), 2 * Self.page, MADV_DONTNEED) }
        #expect(try userfault.nextEvent() == .removed(start: base, end: base + UInt(2 * Self.page)))
        discarder.join()
        #expect(try userfault.zeroPage(start: base, length: Self.page) == .filled(Self.page))
        #expect(memory.load(as: UInt8.self) == 0)
        try userfault.unregister(start: base, length: 4 * Self.page)
        // Unregistered: the kernel's own zero page, no event.
        #expect(memory.load(fromByteOffset: 3 * Self.page, as: UInt8.self) == 0)
    }

    @Test func aDescriptorSentOverAUnixSocketArrivesWithItsMessage() throws {
        var ends: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let userfault = try Userfault()
        try UnixSocket.send(Array("[{}]".utf8), descriptor: userfault.fileDescriptor, on: ends[0])
        var buffer = [UInt8](repeating: 0, count: 16)
        var control = [UInt8](repeating: 0, count: 64)
        let (count, received) = buffer.withUnsafeMutableBytes { bytes in
            control.withUnsafeMutableBytes { space in
                var vector = iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: vectorPointer, msg_iovlen: 1,
                                         msg_control: space.baseAddress, msg_controllen: space.count, msg_flags: 0)
                    let count = recvmsg(ends[1], &message, 0)
                    // The one SCM_RIGHTS header's descriptor follows its 16-byte cmsghdr.
                    return (count, space.load(fromByteOffset: 16, as: Int32.self))
                }
            }
        }
        #expect(count == 4 && Array(buffer.prefix(4)) == Array("[{}]".utf8))
        #expect(received >= 0 && received != userfault.fileDescriptor)
        // The same userfaultfd: UFFDIO_API was done, so a register works through it.
        let memory = try Self.anonymous(pages: 1)
        defer { munmap(memory, Self.page) }
        let other = Userfault(adopting: received)
        #expect(try other.registerMissing(start: UInt(bitPattern: memory), length: Self.page) != 0)
    }
}
