import Glibc
import HostSystem

/// The kinds of thread a `kestrel run` process has, each with its own
/// seccomp allow-list.
public enum KestrelThread: String, CaseIterable, Sendable {
    /// The main thread once the guest runs: waits for the vCPUs, then tears down.
    case vmm
    /// The API server's event loop (requests, pause, resume, snapshot create).
    case api
    /// One per vCPU: KVM_RUN and the exits it serves.
    case vcpu
    /// The virtio devices' event loop (disks, taps, vsock sockets, entropy).
    case virtio
    /// The terminal reader (stdin to COM1).
    case console
    /// Receives SIGINT and SIGTERM and stops the machine.
    case signals
    /// Writes a metrics line every 60 s (`--metrics-path`, `PUT /metrics`).
    case metrics
    /// Fills a lazily restored machine's RAM (`paging` OnDemand or Prefault).
    case pager
}

/// Kestrel's seccomp-BPF allow-lists, one per thread kind, after
/// Firecracker's per-thread filters. Each thread installs its own list
/// before it does any work for the guest (a vCPU before its first KVM_RUN,
/// the main thread once every other thread exists), so nothing a guest
/// drives runs unfiltered. Calls are matched by number, not by argument.
public struct SeccompPolicy: Sendable {
    public let filters: [KestrelThread: SeccompFilter]
    /// A kind whose thread makes a forbidden call (getppid) right after its
    /// filter is installed: `kestrel run --seccomp-probe KIND`, to see the
    /// filters work on a host.
    public let probe: KestrelThread?
    /// Calls outside a list are logged by the kernel, not trapped
    /// (`kestrel run --seccomp-log`): the audit lines in dmesg name the
    /// thread ("fc_vcpu 0", "k-virtio") and the call, to check the lists against a workload.
    public let logOnly: Bool
    private let log: @Sendable (String) -> Void

    /// What every thread does: memory, locks, signals (the kick, the stop
    /// handler's write, the SIGSYS line), sleeping and ending.
    static let common: Set<String> = [
        "futex", "mmap", "munmap", "mprotect", "madvise", "brk", "mremap", "rt_sigreturn", "rt_sigprocmask", "exit", "exit_group",
        "write", "sched_yield", "clock_nanosleep", "nanosleep", "restart_syscall", "gettid", "getpid", "tgkill", "sigaltstack",
        "clock_gettime", "getrandom",
    ]
    static let files: Set<String> = ["openat", "read", "close", "fstat", "newfstatat", "statx", "lseek", "pread64"]

    static let lists: [KestrelThread: Set<String>] = [
        // KVM_RUN and the in-kernel devices' ioctls; fallocate punches
        // guest_memfd pages on a private/shared conversion; a driver's
        // DRIVER_OK or reset, served on the vCPU, starts or stops the
        // device's watches (epoll_ctl) and closes its connections.
        // (timerfd_settime: the balloon's activation looks at its statistics queue soon after.)
        // (io_uring_enter: a reset waits for an Async drive's requests in flight.)
        .vcpu: common.union(["ioctl", "fallocate", "epoll_ctl", "close", "timerfd_settime", "io_uring_enter"]),
        .virtio: common.union(files).union([
            "epoll_wait", "epoll_pwait", "epoll_ctl", "readv", "writev", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
            "fsync", "fdatasync", "fallocate", "accept4", "accept", "socket", "connect", "shutdown", "fcntl", "getsockopt",
            "setsockopt", "recvfrom", "sendto", "recvmsg", "sendmsg", "ioctl", "timerfd_settime",
            // An Async drive's ring: submissions and completions.
            "io_uring_enter",
        ]),
        // Pre-boot requests check files; a snapshot is written from here
        // (getcwd: its targets are compared with the files in use as
        // absolute paths).
        .api: common.union(files).union([
            "epoll_wait", "epoll_pwait", "epoll_ctl", "accept4", "accept", "fcntl", "recvfrom", "sendto", "shutdown", "ioctl",
            "pwrite64", "ftruncate", "fsync", "fdatasync", "rename", "renameat", "renameat2", "unlink", "unlinkat", "stat",
            "lstat", "access", "faccessat", "faccessat2", "readlink", "socket", "getcwd",
            // PATCH /balloon/statistics re-arms the balloon's polling timer.
            "timerfd_settime",
            // A Diff snapshot: the earlier memory file's data copied under it,
            // and without dirty tracking, the pages resident in a mapped file.
            "copy_file_range", "mincore",
            // InstanceStart builds the devices here: an Async drive's ring.
            "io_uring_setup", "io_uring_register", "io_uring_enter", "eventfd2",
            // A live snapshot write-protects RAM with a userfaultfd of its own
            // (ioctl and read serve its faults between chunks).
            "userfaultfd",
        ]),
        .vmm: common.union(files).union(["ioctl", "fsync", "fdatasync", "epoll_ctl", "unlink", "unlinkat", "readlink", "access", "faccessat2",
                                         "io_uring_enter"]),
        .console: common.union(["read", "ioctl"]),
        .signals: common.union(["read", "close", "epoll_ctl", "unlink", "unlinkat"]),
        // Reads counters in memory and writes one line to an open file.
        .metrics: common,
        // Userfaultfd events are read and answered with UFFDIO_* ioctls;
        // between them it waits in poll; the file's mapping goes with munmap.
        .pager: common.union(["read", "ioctl", "poll", "ppoll", "close"]),
    ]

    /// The lists; `snpCertificates` adds the file calls the certificate
    /// responder makes on vCPU threads.
    public init(snpCertificates: Bool = false, probe: KestrelThread? = nil, logOnly: Bool = false,
                log: @escaping @Sendable (String) -> Void) throws {
        var filters: [KestrelThread: SeccompFilter] = [:]
        for (kind, list) in Self.lists {
            let calls = kind == .vcpu && snpCertificates ? list.union(Self.files).union(["fcntl"]) : list
            filters[kind] = try SeccompFilter(threadKind: kind.rawValue, systemCalls: calls)
        }
        self.filters = filters
        self.probe = probe
        self.logOnly = logOnly
        self.log = log
    }

    /// Installs the SIGSYS handler; the process needs it before any filter.
    public func prepare() throws { try SeccompFilter.installTrapHandler() }

    /// Installs `kind`'s list on the calling thread, which the kernel then
    /// calls `threadName` (default "k-<kind>"). A thread that cannot be
    /// filtered must not go on unfiltered: the failure is logged and the
    /// process ends (status 1).
    public func enter(_ kind: KestrelThread, threadName: String? = nil) {
        POSIXThread.setCurrentName(kind.rawValue)
        do {
            try filters[kind]!.install(logOnly: logOnly, threadName: threadName)
        } catch {
            log("seccomp: cannot filter the \(kind.rawValue) thread: \(error); ending (--no-seccomp runs without filters)")
            Glibc.exit(1)
        }
        if probe == kind { _ = getppid() }
    }

    /// One line: each kind's list size, with Firecracker's x86-64 sizes
    /// (VMM 50, API 31, vCPU 27) beside the kinds it has.
    public var summary: String {
        let firecracker: [KestrelThread: Int] = [.vmm: 50, .api: 31, .vcpu: 27]
        return KestrelThread.allCases.map { kind in
            "\(kind.rawValue) \(filters[kind]!.systemCalls.count)" + (firecracker[kind].map { " (Firecracker \($0))" } ?? "")
        }.joined(separator: ", ")
    }
}
