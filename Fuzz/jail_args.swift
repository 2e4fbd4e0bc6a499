// Fuzz target: the jailer's command line. The input is split at NUL bytes
// into arguments; a parse either refuses with a message or gives arguments
// whose chroot and cgroup paths stay under their roots.
import Jail

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJailArguments(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let arguments = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    do {
        let parsed = try JailArguments.parse(arguments)
        // The base directory is the administrator's; what the jail adds under it never climbs out.
        let added = parsed.chrootDirectory.dropFirst(parsed.chrootBaseDirectory == "/" ? 0 : parsed.chrootBaseDirectory.count)
        precondition(!added.split(separator: "/").contains("..") && !added.split(separator: "/").contains("."), "the chroot escapes its base")
        precondition(!parsed.cgroupPath.split(separator: "/").contains(".."), "the cgroup escapes its parent")
        precondition(parsed.cgroups.allSatisfy { !$0.file.contains("/") }, "a cgroup file names a path")
    } catch {
        precondition(!error.description.isEmpty)
    }
    return 0
}
