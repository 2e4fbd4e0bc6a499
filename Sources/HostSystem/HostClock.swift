#if canImport(Glibc)
import Glibc
#endif

/// A clock's reading in whole microseconds (clock_gettime(2)):
/// CLOCK_MONOTONIC for elapsed time, CLOCK_PROCESS_CPUTIME_ID for CPU time,
/// CLOCK_REALTIME for wall-clock timestamps.
public enum HostClock {
    public static func microseconds(_ clock: clockid_t) -> Int64 {
        var now = timespec()
        clock_gettime(clock, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
    }
}
