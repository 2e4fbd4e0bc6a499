import CURing
import Glibc
import HostSystem

/// An io_uring (liburing's io_uring_queue_init) whose completions signal an
/// eventfd, for a device's event loop to watch: requests are queued, handed
/// to the kernel in one io_uring_enter by `submit`, and come back by tag
/// from `nextCompletion`. Used from one thread at a time (the device's loop,
/// or a caller that has stopped it).
final class IOURing: @unchecked Sendable {
    // @unchecked: the ring is a C object with no locking of its own; the owner serialises its calls.
    private let ring: OpaquePointer
    /// Readable when completions are waiting.
    let completions: EventNotifier

    /// A ring of `entries` submissions (and twice as many completions).
    init(entries: UInt32) throws {
        completions = try EventNotifier()
        guard let ring = curing_create(entries, completions.fileDescriptor) else {
            throw SystemCallError.current("io_uring_queue_init(\(entries))")
        }
        self.ring = ring
    }

    deinit { curing_destroy(ring) }

    /// Queues a readv (or, with `write`, a writev) of `vectors` at `offset`
    /// in `file`, tagged `tag`; false when the submission queue is full.
    /// The vectors and the memory they name must stay valid until the
    /// completion comes back.
    func queue(_ vectors: UnsafePointer<iovec>, count: Int, file: Int32, offset: UInt64, write: Bool, tag: UInt64) -> Bool {
        (write ? curing_queue_writev(ring, file, vectors, UInt32(count), offset, tag)
               : curing_queue_readv(ring, file, vectors, UInt32(count), offset, tag)) == 0
    }

    /// Queues an fdatasync of `file`, tagged `tag`; false when the queue is full.
    func queueDataSync(file: Int32, tag: UInt64) -> Bool { curing_queue_fdatasync(ring, file, tag) == 0 }

    /// Hands everything queued to the kernel (io_uring_enter), until none is left.
    func submit() throws {
        while curing_unsubmitted(ring) > 0 {
            let result = curing_submit(ring)
            if result == -EINTR || result > 0 { continue }
            errno = result < 0 ? -result : EAGAIN
            throw SystemCallError.current("io_uring_submit")
        }
    }

    /// The next completion's tag and result (bytes moved, or -errno); nil
    /// when none is waiting, unless `wait`, which hands over anything still
    /// queued and blocks for one (nil then only when the kernel refuses).
    func nextCompletion(wait: Bool = false) -> (tag: UInt64, result: Int32)? {
        var tag: UInt64 = 0, result: Int32 = 0
        while true {
            let status = curing_next_completion(ring, wait ? 1 : 0, &tag, &result)
            if status == -EINTR { continue }
            return status == 1 ? (tag, result) : nil
        }
    }
}
