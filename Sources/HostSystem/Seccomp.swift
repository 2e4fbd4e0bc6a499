import CHost
#if canImport(Glibc)
import Glibc
#endif

/// x86-64 system call numbers by name (arch/x86/entry/syscalls/syscall_64.tbl),
/// for the calls Kestrel's allow-lists name.
public enum SystemCallNumber {
    public static let x86_64: [String: UInt32] = [
        "read": 0, "write": 1, "close": 3, "stat": 4, "fstat": 5, "lstat": 6, "poll": 7, "lseek": 8, "mmap": 9,
        "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16,
        "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "access": 21, "sched_yield": 24, "mremap": 25, "mincore": 27, "madvise": 28,
        "dup": 32, "nanosleep": 35, "getpid": 39, "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45,
        "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "setsockopt": 54, "getsockopt": 55, "clone": 56, "exit": 60,
        "uname": 63, "fcntl": 72, "fsync": 74, "fdatasync": 75, "ftruncate": 77, "getcwd": 79, "rename": 82, "unlink": 87,
        "readlink": 89, "getuid": 102, "sigaltstack": 131, "fstatfs": 138, "prctl": 157, "gettid": 186, "futex": 202,
        "sched_getaffinity": 204, "getdents64": 217, "restart_syscall": 219, "fadvise64": 221, "clock_gettime": 228,
        "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232, "epoll_ctl": 233, "tgkill": 234, "openat": 257,
        "newfstatat": 262, "unlinkat": 263, "renameat": 264, "faccessat": 269, "ppoll": 271, "set_robust_list": 273,
        "epoll_pwait": 281, "fallocate": 285, "accept4": 288, "eventfd2": 290, "epoll_create1": 291, "pipe2": 293,
        "timerfd_settime": 286, "preadv": 295, "pwritev": 296, "preadv2": 327, "pwritev2": 328, "renameat2": 316, "getrandom": 318, "userfaultfd": 323, "copy_file_range": 326,
        "statx": 332, "rseq": 334, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone3": 435,
        "faccessat2": 439, "epoll_pwait2": 441,
    ]
}

/// A thread's seccomp-BPF allow-list: the system calls it may make. Any
/// other call traps; the SIGSYS handler logs one line naming the thread and
/// the call's number, and ends the process (status 159).
public struct SeccompFilter: Sendable {
    /// Names the thread in the trap's line ("vcpu", "api").
    public let threadKind: String
    /// The calls allowed, by name, sorted.
    public let systemCalls: [String]
    /// Their numbers, in the same order: what the filter matches.
    private let numbers: [UInt32]

    /// Throws for a name `SystemCallNumber.x86_64` does not know.
    public init(threadKind: String, systemCalls: Set<String>) throws {
        self.threadKind = threadKind
        self.systemCalls = systemCalls.sorted()
        numbers = try self.systemCalls.map { name in
            guard let number = SystemCallNumber.x86_64[name] else {
                throw SystemCallError(operation: "seccomp allow-list for \(threadKind): unknown system call \(name)", errno: .invalidArgument)
            }
            return number
        }
    }

    /// Installs the filter on the calling thread, for good: threads it
    /// creates afterwards inherit it, and nothing removes it. The
    /// corresponding calls are prctl(PR_SET_NO_NEW_PRIVS) and
    /// seccomp(SECCOMP_SET_MODE_FILTER).
    /// With `logOnly`, calls outside the list are allowed and the kernel
    /// logs each (SECCOMP_RET_LOG), for checking a list against a workload.
    /// The thread is named `threadName`, or "k-<kind>" (PR_SET_NAME), either way.
    public func install(logOnly: Bool = false, threadName: String? = nil) throws {
        let result = numbers.withUnsafeBufferPointer { numbers in
            // Sound: both strings are NUL-terminated copies that live through the call.
            threadName.map { name in name.withCString { chost_seccomp_install(numbers.baseAddress, numbers.count, threadKind, $0, logOnly ? 1 : 0) } }
                ?? chost_seccomp_install(numbers.baseAddress, numbers.count, threadKind, nil, logOnly ? 1 : 0)
        }
        if result != 0 { throw SystemCallError.current("seccomp(SECCOMP_SET_MODE_FILTER) for the \(threadKind) thread") }
    }

    /// Installs the SIGSYS handler that reports a trapped call (once per process).
    public static func installTrapHandler() throws {
        if chost_seccomp_install_trap_handler() != 0 { throw SystemCallError.current("sigaction(SIGSYS)") }
    }
}

/// SIGINT, SIGTERM and SIGHUP (flintlock stops its VMMs with it) delivered to
/// a thread of Kestrel's own, which can be
/// filtered like any other: a handler writes the signal's number to a pipe,
/// and the thread reads it and calls `stop`.
public final class StopSignalThread: Sendable {
    private let thread: POSIXThread

    /// `setUp` runs first on the new thread (a seccomp filter).
    public init(setUp: @escaping @Sendable () -> Void = {}, _ stop: @escaping @Sendable (Int32) -> Void) throws {
        var fds: [Int32] = [0, 0]
        _ = try SystemCallError.check(pipe(&fds), "pipe")
        let (readEnd, writeEnd) = (fds[0], fds[1])
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        guard chost_forward_stop_signals(writeEnd) == 0 else {
            close(readEnd); close(writeEnd)
            throw SystemCallError.current("sigaction(SIGINT, SIGTERM, SIGHUP)")
        }
        thread = try POSIXThread.start(stackSize: 256 << 10) {
            setUp()
            var byte: UInt8 = 0
            while true {
                let count = read(readEnd, &byte, 1)
                if count < 0 && errno == EINTR { continue }
                guard count == 1 else { return }
                stop(Int32(byte))
            }
        }
    }
}
