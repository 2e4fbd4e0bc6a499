import CHost

/// fallocate(2) modes and the call itself (glibc declares it only under
/// _GNU_SOURCE, which Swift's Glibc module lacks).
public enum FileSpace {
    /// The `mode` argument of fallocate(2).
    public struct Mode: OptionSet, Sendable, CustomStringConvertible {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        /// FALLOC_FL_KEEP_SIZE: allocate without changing the file size.
        public static let keepSize = Mode(rawValue: 0x01)
        /// FALLOC_FL_PUNCH_HOLE: deallocate (needs keepSize).
        public static let punchHole = Mode(rawValue: 0x02)
        /// FALLOC_FL_ZERO_RANGE: make the range read as zeros, allocated.
        public static let zeroRange = Mode(rawValue: 0x10)
        public var description: String { "0x" + String(rawValue, radix: 16) }
    }

    /// Allocates (or with `.punchHole` frees) `length` bytes at `offset` of
    /// `fd`. The corresponding call is fallocate(2).
    public static func allocate(_ fd: Int32, mode: Mode, offset: Int, length: Int) throws {
        try SystemCallError.check(chost_fallocate(fd, mode.rawValue, offset, length),
                                  "fallocate(mode \(mode), offset \(offset), length \(length))")
    }
}

/// copy_file_range(2) (declared only under _GNU_SOURCE).
public enum FileCopy {
    /// Copies up to `length` bytes from `source` at `sourceOffset` to
    /// `target` at `targetOffset`, in the kernel (a reflink where the file
    /// system shares extents); neither file position moves. Returns the
    /// bytes copied (0 at the source's end), or -1 with errno set: EXDEV,
    /// EINVAL or EOPNOTSUPP where the files cannot be copied this way.
    public static func copyRange(from source: Int32, at sourceOffset: Int, to target: Int32, at targetOffset: Int, length: Int) -> Int {
        chost_copy_file_range(source, sourceOffset, target, targetOffset, length)
    }
}

/// The C library's heap.
public enum ProcessHeap {
    /// Returns freed heap memory to the system; the corresponding call is
    /// malloc_trim(3) (malloc.h is not in Swift's Glibc module).
    public static func trim() { _ = chost_malloc_trim() }
}

/// Open-file-description locks on a whole file (F_OFD_SETLK), never waiting.
public enum OFDLock {
    public enum Kind: Int32, Sendable {
        case shared = 0, exclusive = 1, unlock = 2
    }

    /// Takes (or drops) a lock of `kind` on all of `fd`'s file, however it grows.
    /// Throws EAGAIN or EACCES when another description holds a conflicting lock.
    /// The corresponding call is fcntl(2) with F_OFD_SETLK.
    public static func set(_ kind: Kind, on fd: Int32) throws {
        try SystemCallError.check(chost_ofd_lock(fd, kind.rawValue), "fcntl(F_OFD_SETLK)")
    }
}
