import Glibc
import HostSystem
import Synchronization

/// virtio-blk (virtio 1.2, section 5.2) over a raw image file: read, write,
/// flush, get-ID, discard and write-zeroes, optionally read-only. With the
/// `sync` engine, requests run on the event loop's thread with
/// preadv/pwritev straight between the file and guest memory; with `async`
/// (Firecracker's `io_engine: Async`), reads, writes and flushes go to an
/// io_uring and complete when the kernel says so, several at a time. A flush
/// is fdatasync(2), so what the guest flushed is on disk when the request
/// completes.
public final class BlockDevice: VirtioDevice {
    /// Firecracker's `io_engine`.
    public enum IOEngine: String, Sendable, CaseIterable {
        case sync = "Sync", async = "Async"
    }

    public enum Feature {
        public static let segmentMaximum: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    public static let sectorSize = 512
    public static let idLength = 20
    static let queueSize: UInt16 = 256

    public let deviceType = VirtioDeviceType.block
    public let queueSizes: [UInt16] = [BlockDevice.queueSize]
    public let offeredFeatures: UInt64
    public let isReadOnly: Bool
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    private let identifier: [UInt8]
    /// struct virtio_blk_config.
    public var configurationSpace: [UInt8] { Self.configurationSpace(capacity: capacity) }
    /// The image: replaced whole by `replaceImage` (Firecracker's PATCH of
    /// `path_on_host`); a request in flight keeps the one it started with.
    private let backing: Mutex<Backing>

    /// An open, locked image and its size in sectors.
    final class Backing: Sendable {
        let fd: Int32
        let path: String
        let capacity: UInt64
        init(fd: Int32, path: String, capacity: UInt64) {
            self.fd = fd
            self.path = path
            self.capacity = capacity
        }
        deinit { close(fd) }
    }

    private let generation = Atomic<UInt32>(0)
    public var configurationGeneration: UInt32 { generation.load(ordering: .relaxed) }

    /// The image's path now.
    public var path: String { backing.withLock { $0.path } }
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    public var capacity: UInt64 { backing.withLock { $0.capacity } }
    private let context = Mutex<VirtioContext?>(nil)
    private let counts = Mutex<[String: Int]>([:])
    /// Firecracker's drive `rate_limiter` (bandwidth in bytes, operations in requests).
    public let rateLimit: LimitedQueue
    /// The engine: `async` when the device has a ring.
    public var engine: IOEngine { ring == nil ? .sync : .async }
    /// The `async` engine's ring, made with the device (before any seccomp
    /// filter: io_uring_setup and io_uring_register are set-up calls).
    private let ring: IOURing?
    /// Requests the ring holds, by tag.
    private let inFlight = Mutex<InFlight>(InFlight())

    /// What the `async` engine has handed to the ring and not yet finished.
    struct InFlight: ~Copyable {
        var requests: [UInt64: Pending] = [:]
        var nextTag: UInt64 = 1
    }

    /// A read, write or flush in the ring: the chain to finish, what a whole
    /// transfer is, the image it started with, and its iovecs (freed when it completes).
    struct Pending: @unchecked Sendable {
        // @unchecked: the iovec buffer is owned by this record alone.
        let chain: DescriptorChain
        let kind: BlockRequestHeader.Kind
        let dataLength: Int
        let expected: Int
        let image: Backing
        let vectors: UnsafeMutableBufferPointer<iovec>?
        /// The transfer's byte offset in the image.
        let offset: UInt64
    }

    /// Requests and bytes served (Firecracker's `block` fields).
    public var metricCounts: [String: Int] {
        let counted = counts.withLock { $0 }
        var fields = ["read_count", "write_count", "read_bytes", "write_bytes", "flush_count", "invalid_reqs_count"].reduce(into: [:]) {
            $0[$1] = counted[$1] ?? 0
        }
        fields["rate_limiter_throttled_events"] = rateLimit.limiter.throttledEvents
        return fields
    }

    /// Opens `path` (read-write unless `readOnly`) and takes an OFD lock on it,
    /// exclusive or shared, so two VMs never write one image. `identifier` is
    /// what GET_ID returns (at most 20 bytes are used). Without `flush` the
    /// device offers no VIRTIO_BLK_F_FLUSH (Firecracker's "Unsafe" cache type):
    /// the guest then treats the disk as write-through and never asks.
    public init(path: String, readOnly: Bool, identifier: String, flush: Bool = true,
                bandwidth: TokenBucket? = nil, operations: TokenBucket? = nil, engine: IOEngine = .sync) throws {
        rateLimit = try LimitedQueue(bandwidth: bandwidth, operations: operations)
        ring = engine == .async ? try IOURing(entries: UInt32(Self.queueSize)) : nil
        backing = Mutex(try Self.open(path, readOnly: readOnly))
        isReadOnly = readOnly
        self.identifier = Array(identifier.utf8.prefix(Self.idLength))
        var features = Feature.segmentMaximum | Feature.blockSize | (flush ? Feature.flush : 0)
        features |= readOnly ? Feature.readOnly : Feature.discard | Feature.writeZeroes
        offeredFeatures = features
    }

    /// Opens `path` (read-write unless `readOnly`), takes an OFD lock on it,
    /// exclusive or shared, so two VMs never write one image, and reads its size.
    static func open(_ path: String, readOnly: Bool) throws -> Backing {
        // Non-blocking open, then only a regular file is kept: a FIFO would block open(2).
        let fd = try HostFile.open(path, readOnly ? O_RDONLY : O_RDWR, allowed: [.regular], what: "the drive")
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let error = SystemCallError.current("fstat(\(path))")
            close(fd)
            throw error
        }
        do {
            try OFDLock.set(readOnly ? .shared : .exclusive, on: fd)
        } catch {
            close(fd)
            throw SystemCallError(operation: "lock \(path) (another process uses the image)", errno: (error as? SystemCallError)?.errno ?? .resourceTemporarilyUnavailable)
        }
        return Backing(fd: fd, path: path, capacity: UInt64(info.st_size) / UInt64(sectorSize))
    }

    /// Serves the guest from the image at `path` from now on (Firecracker's
    /// `PATCH /drives/{id}` with `path_on_host`): opened and locked as the
    /// first one was, with the device's read-only setting; then the driver is
    /// told the configuration changed, so it reads the new capacity. A path
    /// that cannot be opened changes nothing.
    public func replaceImage(with path: String) throws {
        let current = backing.withLock { $0 }
        var old = stat(), new = stat()
        let replacement: Backing
        if fstat(current.fd, &old) == 0, stat(path, &new) == 0, old.st_dev == new.st_dev, old.st_ino == new.st_ino {
            // The same file (resized, say): its open description keeps the lock; only the size is read again.
            let fd = dup(current.fd)
            guard fd >= 0 else { throw SystemCallError.current("dup(\(path))") }
            replacement = Backing(fd: fd, path: path, capacity: UInt64(max(new.st_size, 0)) / UInt64(Self.sectorSize))
        } else {
            replacement = try Self.open(path, readOnly: isReadOnly)
        }
        backing.withLock { $0 = replacement }
        generation.wrappingAdd(1, ordering: .relaxed)
        context.withLock { $0 }?.interrupt.raise(.configurationChange)
    }

    /// struct virtio_blk_config, up to write_zeroes_may_unmap.
    static func configurationSpace(capacity: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        bytes.storeLittleEndian(capacity, at: 0)
        bytes.storeLittleEndian(UInt32(queueSize - 2), at: 12)   // seg_max
        bytes.storeLittleEndian(UInt32(sectorSize), at: 20)      // blk_size
        bytes.storeLittleEndian(UInt32(1) << 22, at: 36)         // max_discard_sectors: 2 GiB per range
        bytes.storeLittleEndian(UInt32(1), at: 40)               // max_discard_seg
        bytes.storeLittleEndian(UInt32(8), at: 44)               // discard_sector_alignment: 4 KiB
        bytes.storeLittleEndian(UInt32(1) << 22, at: 48)         // max_write_zeroes_sectors
        bytes.storeLittleEndian(UInt32(1), at: 52)               // max_write_zeroes_seg
        bytes[56] = 1                                            // write_zeroes_may_unmap
        return bytes
    }

    public func activate(_ context: VirtioContext) throws {
        self.context.withLock { $0 = context }
        try rateLimit.activate(context) { [weak self] () throws(QueueFault) in try self?.process(queue: 0) }
        if let ring {
            try context.watch(ring.completions.fileDescriptor) { [weak self] _ throws(QueueFault) in
                guard let self else { return }
                _ = ring.completions.drain()
                self.finishCompletions(context, waitForAll: false)
            }
        }
    }

    /// Forgets the driver; requests still in the ring are waited for and
    /// dropped (their memory and chains belong to the driver being reset).
    public func reset() {
        context.withLock { $0 = nil }
        dropInFlight()
    }

    /// Before the device's loop parks (a pause, a snapshot): every request in
    /// the ring completes and is given back, so no saved queue holds one
    /// that would never end. Runs on the loop's thread.
    public func quiesce() {
        guard ring != nil, let context = context.withLock({ $0 }) else { return }
        finishCompletions(context, waitForAll: true)
    }

    /// Makes everything written so far durable (fdatasync), as at power-off,
    /// once the ring has nothing left in flight.
    public func synchronize() throws {
        dropInFlight()
        let image = backing.withLock { $0 }
        try SystemCallError.check(fdatasync(image.fd), "fdatasync(\(image.path))")
    }

    public func process(queue: Int) throws(QueueFault) {
        guard let context = context.withLock({ $0 }), queue == 0 else { return }
        let requests = context.queues[0]
        defer { context.notifyIfNeeded(requests) }
        var queued = false
        while rateLimit.mayServe(), let chain = try requests.nextOrEnableNotification() {
            if let written = try handle(chain, context) {
                requests.complete(chain.head, written: written)
            } else {
                queued = true
            }
            // The data moved: what follows the 16-byte header one way, all but the status byte the other.
            rateLimit.limiter.consume(bytes: max(chain.readableLength - BlockRequestHeader.size, 0) + max(chain.writableLength - 1, 0))
        }
        if queued, let ring {
            // The kernel took none of them (out of memory): the device faults,
            // and its reset waits for what the ring holds.
            do { try ring.submit() } catch { throw QueueFault("virtio-blk: \(error)") }
        }
    }

    /// Serves one request; returns the bytes written into the chain, or nil
    /// when the request went to the ring and completes later.
    func handle(_ chain: DescriptorChain, _ context: VirtioContext) throws(QueueFault) -> Int? {
        let writableLength = chain.writableLength
        guard writableLength >= 1 else {
            throw QueueFault("virtio-blk request \(chain.head) has no device-writable status byte")
        }
        var reader = ChainReader(chain, memory: context.memory)
        var writer = ChainWriter(chain, memory: context.memory)
        let dataLength = writableLength - 1
        var status = BlockStatus.ioError
        if let header = reader.readBytes(BlockRequestHeader.size).flatMap(BlockRequestHeader.init) {
            let remaining = reader.remaining
            let image = backing.withLock { $0 }
            switch ring == nil ? nil : queue(header, chain, &reader, &writer, dataLength: dataLength, image: image) {
            case .queued?: return nil
            case .served(let done)?: status = done
            case nil: status = serve(header, &reader, &writer, dataLength: dataLength, image: image)
            }
            count(header.kind, status, bytes: header.kind == .read ? dataLength : remaining)
        } else {
            counts.withLock { $0["invalid_reqs_count", default: 0] += 1 }
        }
        // The data part may be partly filled on an error; the status goes last.
        let filled = writer.written
        writer.skip(to: dataLength)
        writer.write([status.rawValue])
        return min(filled, dataLength) + 1
    }

    /// Firecracker's `block` counts for a request that ended with `status`.
    private func count(_ kind: BlockRequestHeader.Kind, _ status: BlockStatus, bytes: Int) {
        counts.withLock { counts in
            switch (kind, status) {
            case (.read, .ok): counts["read_count", default: 0] += 1; counts["read_bytes", default: 0] += bytes
            case (.write, .ok): counts["write_count", default: 0] += 1; counts["write_bytes", default: 0] += bytes
            case (.flush, .ok): counts["flush_count", default: 0] += 1
            case (_, .ok): break
            default: counts["invalid_reqs_count", default: 0] += 1
            }
        }
    }

    /// What the `async` engine did with a request.
    enum AsyncOutcome {
        /// In the ring: it completes later.
        case queued
        /// The ring was full even after handing it over (a queue no longer than
        /// the ring cannot fill it): served synchronously instead, with this status.
        case served(BlockStatus)
    }

    /// The `async` engine: a well-formed read or write with data, or a flush,
    /// goes to the ring. Anything else, and any request the sync path would
    /// refuse, is left to `serve` (nil).
    private func queue(_ header: BlockRequestHeader, _ chain: DescriptorChain, _ reader: inout ChainReader, _ writer: inout ChainWriter,
                       dataLength: Int, image: Backing) -> AsyncOutcome? {
        guard let ring else { return nil }
        let pieces: [UnsafeMutableRawBufferPointer], write: Bool
        switch header.kind {
        case .read, .write:
            // A refused or empty transfer is `serve`'s (nothing was taken from the chain).
            guard let data = dataPieces(header, &reader, &writer, dataLength: dataLength, image: image), !data.pieces.isEmpty else { return nil }
            (pieces, write) = data
        case .flush:
            pieces = []
            write = false
        default:
            return nil
        }
        let expected = pieces.reduce(0) { $0 + $1.count }
        let isFlush = header.kind == .flush
        let vectors = isFlush ? nil : UnsafeMutableBufferPointer<iovec>.allocate(capacity: pieces.count)
        // Sound: `vectors` has room for every piece; each names checked guest RAM, mapped for the VM's life.
        for (index, piece) in pieces.enumerated() { vectors?[index] = iovec(iov_base: piece.baseAddress, iov_len: piece.count) }
        let offset = header.sector * UInt64(Self.sectorSize)
        let pending = Pending(chain: chain, kind: header.kind, dataLength: dataLength, expected: expected, image: image,
                              vectors: vectors, offset: offset)
        let queued = inFlight.withLock { state in
            let tag = state.nextTag
            func put() -> Bool {
                if let vectors {
                    return ring.queue(UnsafePointer(vectors.baseAddress!), count: vectors.count, file: image.fd, offset: offset, write: write, tag: tag)
                }
                return ring.queueDataSync(file: image.fd, tag: tag)
            }
            // A full submission queue is handed to the kernel, and the entry tried again.
            guard put() || ((try? ring.submit()) != nil && put()) else { return false }
            state.nextTag += 1
            state.requests[tag] = pending
            return true
        }
        if queued { return .queued }
        vectors?.deallocate()
        if isFlush { return .served(fdatasync(image.fd) == 0 ? .ok : .ioError) }
        return .served(transferNow(pieces, write: write, at: header.sector, &writer, image: image))
    }

    /// Finishes the requests whose completions are waiting (all of those in
    /// flight with `waitForAll`): the status byte, the used ring, the interrupt.
    private func finishCompletions(_ context: VirtioContext, waitForAll: Bool) {
        guard let ring else { return }
        let requests = context.queues[0]
        inFlight.withLock { state in
            while !state.requests.isEmpty, let (tag, result) = ring.nextCompletion(wait: waitForAll) {
                guard let pending = state.requests.removeValue(forKey: tag) else { continue }
                requests.complete(pending.chain.head, written: finish(pending, result: result, context))
            }
        }
        context.notifyIfNeeded(requests)
    }

    /// Writes `pending`'s status from the ring's `result`; returns the bytes
    /// written into its chain. A read or write the ring moved only in part
    /// (the kernel may stop short, or answer EAGAIN or EINTR) is finished
    /// here with preadv/pwritev, so that it fails only as the sync engine would.
    private func finish(_ pending: Pending, result ringResult: Int32, _ context: VirtioContext) -> Int {
        var result = ringResult
        if pending.kind != .flush, let vectors = pending.vectors, Int(result) != pending.expected,
           result >= 0 || result == -EAGAIN || result == -EINTR {
            result = Int32(Self.transfer(Array(vectors), at: pending.offset, moved: max(Int(result), 0),
                                         write: pending.kind == .write, pending.image.fd))
        }
        pending.vectors?.deallocate()
        let ok = pending.kind == .flush ? result == 0 : Int(result) == pending.expected
        let status: BlockStatus = ok ? .ok : .ioError
        count(pending.kind, status, bytes: pending.expected)
        var writer = ChainWriter(pending.chain, memory: context.memory)
        let filled = pending.kind == .read ? min(max(Int(result), 0), pending.dataLength) : 0
        writer.skip(to: pending.dataLength)
        writer.write([status.rawValue])
        return filled + 1
    }

    /// Waits for every request in the ring and drops it (a reset, the end).
    /// Should the kernel refuse to take or finish them, their iovecs are kept
    /// (it may still hold them) and the requests forgotten.
    private func dropInFlight() {
        guard let ring else { return }
        inFlight.withLock { state in
            while !state.requests.isEmpty, let (tag, _) = ring.nextCompletion(wait: true) {
                state.requests.removeValue(forKey: tag)?.vectors?.deallocate()
            }
            state.requests.removeAll()
        }
    }

    private func serve(_ header: BlockRequestHeader, _ reader: inout ChainReader, _ writer: inout ChainWriter,
                       dataLength: Int, image: Backing) -> BlockStatus {
        switch header.kind {
        case .read, .write:
            guard let (pieces, write) = dataPieces(header, &reader, &writer, dataLength: dataLength, image: image) else { return .ioError }
            return transferNow(pieces, write: write, at: header.sector, &writer, image: image)
        case .flush:
            return fdatasync(image.fd) == 0 ? .ok : .ioError
        case .getID:
            guard dataLength >= Self.idLength else { return .ioError }
            writer.write(identifier + [UInt8](repeating: 0, count: Self.idLength - identifier.count))
            return .ok
        case .discard, .writeZeroes:
            guard !isReadOnly else { return .ioError }
            guard reader.remaining == BlockRange.size, let bytes = reader.readBytes(BlockRange.size),
                  let range = BlockRange(bytes[...]) else { return .unsupported }
            guard range.flags & ~1 == 0, header.kind == .writeZeroes || range.flags == 0 else { return .unsupported }
            let length = Int(range.sectorCount) * Self.sectorSize
            guard inRange(range.sector, bytes: length, image) else { return .ioError }
            return zero(offset: Int(range.sector) * Self.sectorSize, length: length, deallocate: header.kind == .discard || range.flags & 1 == 1, image.fd)
        case .unsupported:
            return .unsupported
        }
    }

    /// A read's or write's guest memory, taken from the chain (the writable
    /// data for a read, the readable data after the header for a write), or
    /// nil for one that is refused: not whole sectors, past the end, or a
    /// write to a read-only disk. Nothing is taken from a refused request.
    private func dataPieces(_ header: BlockRequestHeader, _ reader: inout ChainReader, _ writer: inout ChainWriter,
                            dataLength: Int, image: Backing) -> (pieces: [UnsafeMutableRawBufferPointer], write: Bool)? {
        let write = header.kind == .write
        let length = write ? reader.remaining : dataLength
        guard !(write && isReadOnly), length % Self.sectorSize == 0, inRange(header.sector, bytes: length, image) else { return nil }
        return (write ? reader.take(length) : writer.take(length), write)
    }

    /// Moves `pieces` now (preadv/pwritev); a short read gives back what it
    /// did not fill.
    private func transferNow(_ pieces: [UnsafeMutableRawBufferPointer], write: Bool, at sector: UInt64, _ writer: inout ChainWriter,
                             image: Backing) -> BlockStatus {
        let expected = pieces.reduce(0) { $0 + $1.count }
        let done = Self.transfer(pieces.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) },
                                 at: sector * UInt64(Self.sectorSize), write: write, image.fd)
        if !write { writer.unwrite(expected - done) }
        return done == expected ? .ok : .ioError
    }

    private func inRange(_ sector: UInt64, bytes: Int, _ image: Backing) -> Bool {
        let sectors = UInt64(bytes / Self.sectorSize)
        return sector <= image.capacity && sectors <= image.capacity - sector
    }

    /// preadv/pwritev between the file at byte `start` and the memory
    /// `vectors` name, of which the first `moved` bytes are already done (an
    /// io_uring transfer that stopped short); returns all the bytes moved,
    /// `moved` included (short only on an error or end of file).
    static func transfer(_ vectors: [iovec], at start: UInt64, moved: Int = 0, write: Bool, _ file: Int32) -> Int {
        var vectors = vectors
        let total = vectors.reduce(0) { $0 + $1.iov_len }
        var first = 0
        // Drops the vectors `count` bytes finish, and trims the one they stop in.
        func advance(_ count: Int) {
            var left = count
            while left > 0, first < vectors.count {
                if left >= vectors[first].iov_len { left -= vectors[first].iov_len; first += 1; continue }
                // Sound: trimmed within the vector's own length, inside checked guest RAM.
                vectors[first].iov_base += left
                vectors[first].iov_len -= left
                left = 0
            }
        }
        var done = moved
        advance(done)
        while done < total {
            let offset = off_t(Int(start) + done)
            // Sound: the iovecs cover checked guest RAM, from `first` to the end of the array.
            let result = vectors.withUnsafeMutableBufferPointer { buffer in
                let base = buffer.baseAddress! + first
                let count = Int32(min(buffer.count - first, 1024))  // IOV_MAX
                return write ? pwritev(file, base, count, offset) : preadv(file, base, count, offset)
            }
            if result < 0 { if errno == EINTR { continue } else { break } }
            if result == 0 { break }
            done += result
            advance(result)
        }
        return done
    }

    private func zero(offset: Int, length: Int, deallocate: Bool, _ file: Int32) -> BlockStatus {
        guard length > 0 else { return .ok }
        if deallocate, (try? FileSpace.allocate(file, mode: [.punchHole, .keepSize], offset: offset, length: length)) != nil { return .ok }
        if (try? FileSpace.allocate(file, mode: .zeroRange, offset: offset, length: length)) != nil { return .ok }
        if (try? FileSpace.allocate(file, mode: [.punchHole, .keepSize], offset: offset, length: length)) != nil { return .ok }
        let chunk = [UInt8](repeating: 0, count: 1 << 16)
        var done = 0
        while done < length {
            let count = min(chunk.count, length - done)
            let result = chunk.withUnsafeBytes { pwrite(file, $0.baseAddress, count, off_t(offset + done)) }
            if result < 0 { if errno == EINTR { continue } else { return .ioError } }
            done += result
        }
        return .ok
    }
}
