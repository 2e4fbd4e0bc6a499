import HostSystem
import Testing

/// The seccomp allow-lists name calls; the numbers they become are pinned
/// here against arch/x86/entry/syscalls/syscall_64.tbl, read separately.
@Suite(.timeLimit(.minutes(1))) struct SystemCallNumberTests {
    @Test func numbersMatchTheKernelsTable() {
        let pinned: [String: UInt32] = [
            "read": 0, "write": 1, "shutdown": 48, "fcntl": 72, "ftruncate": 77, "getcwd": 79, "rename": 82, "openat": 257,
            "unlinkat": 263, "epoll_pwait": 281, "accept4": 288, "renameat2": 316, "statx": 332, "faccessat2": 439,
            "mincore": 27, "copy_file_range": 326,
        ]
        for (name, number) in pinned {
            #expect(SystemCallNumber.x86_64[name] == number, "\(name)")
        }
        // One name per number: a typo cannot give two calls the same number.
        #expect(Set(SystemCallNumber.x86_64.values).count == SystemCallNumber.x86_64.count)
    }
}
