#if canImport(Glibc)
import Glibc
#endif
import HostSystem

/// This process's memory as /proc/self/smaps describes it: what Kestrel's own
/// overhead is next to the guest's RAM, and the one way it trims it.
public enum ProcessMemory {
    /// One mapping of /proc/self/smaps with the fields Kestrel uses.
    public struct Mapping: Equatable, Sendable {
        public var start: UInt
        public var end: UInt
        /// "r-xp" and the like.
        public var permissions: String
        /// The file, or "" for anonymous memory, or a name such as "[heap]".
        public var path: String
        public var residentBytes: UInt64
        /// Resident anonymous pages, including copy-on-write copies of file pages.
        public var anonymousBytes: UInt64

        public var isFileBacked: Bool { path.hasPrefix("/") }
        public var isWritable: Bool { permissions.dropFirst().first == "w" }
        public var isPrivate: Bool { permissions.last == "p" }
        /// A private, read-only mapping of a file: the executable's code and constants.
        public var isPrivateReadOnlyFile: Bool { isFileBacked && isPrivate && !isWritable }
    }

    /// The mappings of this process, or nil when /proc/self/smaps cannot be read.
    public static func mappings() -> [Mapping]? {
        // procfs files report size 0, so read line by line to the end.
        guard let file = fopen("/proc/self/smaps", "r") else { return nil }
        defer { fclose(file) }
        var result: [Mapping] = []
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let fields = String(cString: line).split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if first.hasSuffix(":") {
                guard !result.isEmpty, fields.count >= 2, let kilobytes = UInt64(fields[1]) else { continue }
                if first == "Rss:" { result[result.count - 1].residentBytes = kilobytes * 1024 }
                if first == "Anonymous:" { result[result.count - 1].anonymousBytes = kilobytes * 1024 }
            } else if let dash = first.firstIndex(of: "-"), fields.count >= 5,
                      let start = UInt(first[..<dash], radix: 16), let end = UInt(first[first.index(after: dash)...], radix: 16) {
                let path = fields.dropFirst(5).joined(separator: " ").filter { $0 != "\n" }
                result.append(Mapping(start: start, end: end, permissions: String(fields[1]), path: path, residentBytes: 0, anonymousBytes: 0))
            }
        }
        return result
    }

    /// Resident memory split into the guest's RAM (the mappings starting at
    /// `guestStarts`) and everything else.
    public static func footprint(guestStarts: Set<UInt>) -> MemoryFootprint? {
        guard let mappings = mappings() else { return nil }
        var footprint = MemoryFootprint()
        for mapping in mappings {
            footprint.resident += mapping.residentBytes
            if guestStarts.contains(mapping.start) {
                footprint.guest += mapping.residentBytes
            } else if mapping.isFileBacked {
                footprint.fileBacked += mapping.residentBytes - mapping.anonymousBytes
                footprint.anonymous += mapping.anonymousBytes
            } else {
                footprint.anonymous += mapping.residentBytes
            }
        }
        return footprint
    }

    /// Drops this process's page-table entries for read-only file pages (the
    /// code and constants of the executable and its libraries) so that only
    /// what runs afterwards becomes resident again: start-up code (argument
    /// parsing, kernel loading and decompression, table building) stops
    /// counting towards the resident set, the way the kernel frees its own
    /// init sections after boot. The pages stay in the page cache.
    ///
    /// Only private, non-writable, file-backed mappings without anonymous
    /// pages are touched. In those every resident page is an unmodified page
    /// of the file, so MADV_DONTNEED loses nothing: the next access maps the
    /// same bytes again. Mappings holding copy-on-write copies (relocated
    /// RELRO data, debugger breakpoints) are skipped, and since the mappings
    /// are not writable no such copy can appear between the check and the call.
    /// `only` narrows the mappings further (tests release their own file's
    /// pages and nothing else, so that they can run beside each other).
    /// Returns the resident bytes released.
    @discardableResult
    public static func releaseReadOnlyFilePages(only include: (Mapping) -> Bool = { _ in true }) -> UInt64 {
        let eligible = (mappings() ?? []).filter {
            $0.isPrivateReadOnlyFile && $0.anonymousBytes == 0 && $0.residentBytes > 0 && include($0)
        }
        // Collected first, so that the loop below, which drops this very code
        // from the page tables, runs little besides madvise itself.
        let ranges = eligible.map { (start: $0.start, length: Int($0.end - $0.start), resident: $0.residentBytes) }
        var released: UInt64 = 0
        for range in ranges {
            // Sound: the range is a whole mapping the kernel just listed, and
            // MADV_DONTNEED on clean private file pages only drops PTEs.
            if madvise(UnsafeMutableRawPointer(bitPattern: range.start), range.length, MADV_DONTNEED) == 0 {
                released += range.resident
            }
        }
        return released
    }

    /// Turns fault-around off in the private, read-only file mappings (the
    /// executable's code and constants), so that from now on a fault there
    /// makes one page resident instead of the 64 KiB window around it
    /// (`FaultAroundSuppression`). Called before `releaseReadOnlyFilePages`,
    /// it makes the code that runs afterwards come back page by page. Holds
    /// while the result lives. Throws when the kernel cannot do it (before
    /// Linux 6.7, or where userfaultfd(2) is refused); nothing changes then.
    /// `only` narrows the mappings as for `releaseReadOnlyFilePages`.
    public static func suppressFaultAroundInReadOnlyFileMappings(only include: (Mapping) -> Bool = { _ in true }) throws -> FaultAroundSuppression {
        let eligible = (mappings() ?? []).filter { $0.isPrivateReadOnlyFile && include($0) }
        return try FaultAroundSuppression(ranges: eligible.map { (start: $0.start, length: Int($0.end - $0.start)) })
    }
}

/// Resident memory of the process by kind, in bytes.
public struct MemoryFootprint: Equatable, Sendable {
    /// Everything resident (the process's RSS).
    public var resident: UInt64 = 0
    /// The guest's RAM that the guest has touched.
    public var guest: UInt64 = 0
    /// Pages of the executable and libraries as read from their files.
    public var fileBacked: UInt64 = 0
    /// Heap, stacks and other private memory outside guest RAM.
    public var anonymous: UInt64 = 0

    /// What Kestrel costs beyond the guest's RAM.
    public var overhead: UInt64 { resident - guest }
}
