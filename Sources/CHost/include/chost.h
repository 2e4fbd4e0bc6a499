/*
 * Host system calls and signal machinery that Swift cannot express directly:
 * functions glibc declares only under _GNU_SOURCE or not at all, variadic
 * calls, signal handlers, and SIGBUS-guarded memory access (sigsetjmp). Only
 * the HostSystem target imports this module; everything else uses its Swift API.
 */
#ifndef CHOST_H
#define CHOST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/uio.h>

/* fallocate(2) is declared only under _GNU_SOURCE, which Swift's Glibc module lacks. */
int chost_fallocate(int fd, int mode, long offset, long length);

/* copy_file_range(2), declared only under _GNU_SOURCE: `length` bytes from
   `in_offset` of `in_fd` to `out_offset` of `out_fd`, neither file position
   moved. Returns the bytes copied, or -1 with errno. */
long chost_copy_file_range(int in_fd, long in_offset, int out_fd, long out_offset, size_t length);

/* malloc_trim(3): return freed heap memory to the system (malloc.h is not in Swift's Glibc module). */
int chost_malloc_trim(void);

/* The calling thread's id (gettid(2), which glibc 2.36 does not declare). */
int chost_gettid(void);

/* unshare(2) and setns(2), which the Glibc module does not declare; 0 or -1 with errno. */
int chost_unshare(int flags);

/* memmem(3), declared only under _GNU_SOURCE: the first place `needle` occurs in `haystack`, or NULL. */
const void *chost_memmem(const void *haystack, size_t haystack_length, const void *needle, size_t needle_length);
int chost_setns(int fd, int nstype);

/* A non-blocking, close-on-exec timerfd on CLOCK_MONOTONIC; -1 with errno set. */
int chost_timerfd_create(void);

/* Arms `fd` to fire once, `seconds` and `nanoseconds` from now; 0 or -1 with errno. */
int chost_timerfd_arm(int fd, long seconds, long nanoseconds);

/*
 * Open-file-description lock on the whole file, never waiting (F_OFD_SETLK).
 * kind: 0 shared (F_RDLCK), 1 exclusive (F_WRLCK), 2 unlock (F_UNLCK).
 * Returns 0, or -1 with errno (EAGAIN/EACCES when another description holds a
 * conflicting lock).
 */
int chost_ofd_lock(int fd, int kind);


/*
 * Installs a do-nothing handler for `signal_number` without SA_RESTART, so that a
 * signal sent with pthread_kill makes a blocked KVM_RUN return EINTR. Idempotent.
 * Returns 0 or -1 with errno.
 */
int chost_install_kick_handler(int signal_number);

/*
 * Blocks or unblocks `signal_number` for the calling thread (pthread_sigmask).
 * Returns the previous state (1 blocked, 0 unblocked) or -1 with errno.
 * libdispatch worker threads, on which Swift concurrency runs, block most
 * signals, so a vCPU thread must unblock the kick signal while it may be kicked.
 */
int chost_set_signal_blocked(int signal_number, int blocked);

/*
 * Memory accesses that survive SIGBUS (guest_memfd faults beyond the file size or
 * on private pages). Each call installs a SIGBUS handler for the calling thread's
 * access only, runs one bulk access under sigsetjmp, and restores the previous
 * disposition. Return value: -1 when every byte was accessed, otherwise the byte
 * offset at which SIGBUS was raised.
 */
long chost_guarded_fill(void *address, uint8_t value, size_t length);
long chost_guarded_read(const void *address, void *destination, size_t length);


/*
 * userfaultfd(2) for file mappings, used only to turn fault-around off (see
 * FaultAroundSuppression.swift). chost_userfaultfd_wp_async opens a
 * user-mode-only, close-on-exec userfaultfd and completes the UFFDIO_API
 * handshake asking for UFFD_FEATURE_WP_ASYNC (Linux 6.7+): it returns the
 * descriptor, or -1 with errno (EINVAL when the kernel lacks the feature).
 * chost_userfaultfd_register_wp registers [start, start + length) in
 * write-protect mode (UFFDIO_REGISTER_MODE_WP); 0 or -1 with errno.
 */
int chost_userfaultfd_wp_async(void);
int chost_userfaultfd_register_wp(int fd, uint64_t start, uint64_t length);

/*
 * userfaultfd(2) for guest RAM restored lazily (Userfault.swift).
 * chost_userfaultfd_open opens a close-on-exec userfaultfd that also takes
 * faults from the kernel's own accesses (KVM's), non-blocking when asked,
 * through the system call or, where that is refused, /dev/userfaultfd
 * (Linux 6.1), and completes UFFDIO_API asking for `features`; the features
 * the kernel offers go to *offered. -1 with errno set.
 */
int chost_userfaultfd_open(int nonblocking, uint64_t features, uint64_t *offered);
/* UFFDIO_REGISTER in missing mode; *ioctls gets the range's ioctl mask. 0 or -1. */
int chost_userfaultfd_register_missing(int fd, uint64_t start, uint64_t length, uint64_t *ioctls);
/* UFFDIO_UNREGISTER. 0 or -1. */
int chost_userfaultfd_unregister(int fd, uint64_t start, uint64_t length);
/* UFFDIO_COPY of `length` bytes from `source` to `target` (waking the
   faulting threads): the bytes copied, or -1 with errno (EEXIST: a page is
   already there; EAGAIN: the address space changed; retry). A copy cut short
   returns the bytes it did copy. */
long chost_userfaultfd_copy(int fd, uint64_t target, uint64_t source, uint64_t length);
/* UFFDIO_ZEROPAGE over [start, start + length): as chost_userfaultfd_copy. */
long chost_userfaultfd_zeropage(int fd, uint64_t start, uint64_t length);
/* UFFDIO_WAKE over [start, start + length). 0 or -1. */
int chost_userfaultfd_wake(int fd, uint64_t start, uint64_t length);
/* UFFDIO_WRITEPROTECT over [start, start + length) of a range registered in
   write-protect mode: protects it when `protect` is nonzero, else lifts the
   protection and wakes the threads waiting there. 0 or -1 with errno. */
int chost_userfaultfd_writeprotect(int fd, uint64_t start, uint64_t length, int protect);

/* One userfaultfd event, decoded from struct uffd_msg. */
struct chost_uffd_event {
    uint8_t kind;       /* 1 page fault, 2 remove (MADV_DONTNEED/REMOVE), 3 write to a
                           write-protected page, 0 any other */
    uint8_t write;      /* a page fault by a write */
    uint64_t address;   /* the faulting address, or the removed range's start */
    uint64_t end;       /* the removed range's end */
};
/* Reads one event: 1, 0 when none is pending (non-blocking descriptor), or -1 with errno. */
int chost_userfaultfd_read_event(int fd, struct chost_uffd_event *event);

/* memfd_create(name, MFD_CLOEXEC | MFD_NOEXEC_SEAL), or without the seal on
   a kernel that lacks it (Glibc declares memfd_create only under
   _GNU_SOURCE): the descriptor, or -1 with errno. */
int chost_memfd_create(const char *name);

/* sendmsg(2) of `length` bytes with `descriptor` attached (SCM_RIGHTS):
   the bytes sent, or -1 with errno. */
long chost_send_with_descriptor(int socket, const void *bytes, size_t length, int descriptor);

/* mbind(2), get_mempolicy(2) and move_pages(2): glibc has no wrappers (libnuma
   does), and Swift cannot call the variadic syscall(2). Each returns the
   syscall's result, -1 with errno set on failure. */
long chost_mbind(void *address, unsigned long length, int mode, const unsigned long *nodemask,
                unsigned long maxnode, unsigned int flags);
long chost_get_mempolicy(int *mode, unsigned long *nodemask, unsigned long maxnode, void *address,
                        unsigned long flags);
long chost_move_pages(int pid, unsigned long count, void **pages, const int *nodes, int *status, int flags);

/* Names the calling thread as the kernel shows it (comm; prctl(PR_SET_NAME),
 * at most 15 bytes kept). Returns 0 or -1 with errno. */
int chost_set_thread_name(const char *name);

/*
 * seccomp-BPF for the calling thread (and the threads it creates later):
 * sets no_new_privs, then installs a filter that allows exactly the `count`
 * x86-64 system call numbers in `allowed` and traps every other call
 * (SECCOMP_RET_TRAP, so SIGSYS reaches the handler below); a call made with
 * another architecture's convention (x32, i386) kills the process.
 * `thread_kind` (at most 23 bytes kept) names the thread in the trap's line,
 * and the thread itself becomes `thread_name`, or "k-<kind>" when that is
 * NULL (PR_SET_NAME, at most 15 bytes). With `log_only`,
 * a call outside the list is allowed and logged by the kernel
 * (SECCOMP_RET_LOG: an audit line with the call's number and the thread's
 * name), which is how the lists are checked against a workload.
 * Returns 0 or -1 with errno.
 */
int chost_seccomp_install(const uint32_t *allowed, size_t count, const char *thread_kind, const char *thread_name, int log_only);

/*
 * The SIGSYS handler for trapped calls: writes one line to stderr, "kestrel:
 * seccomp: the <kind> thread made system call <n>, which its allow-list does
 * not hold; ending (--no-seccomp turns the filters off)", and ends the
 * process with status 159 (128 + SIGSYS). Uses write(2) and exit_group(2)
 * only, which every allow-list holds. Returns 0 or -1 with errno.
 */
int chost_seccomp_install_trap_handler(void);

/*
 * SIGINT and SIGTERM by a handler that writes the signal number (one byte)
 * to `fd`, a pipe a signal thread reads: async-signal-safe, on whichever
 * thread takes the signal, and needing only write(2) there. Returns 0 or -1.
 */
int chost_forward_stop_signals(int fd);

#endif /* CHOST_H */

/* Opens /dev/net/tun and attaches to (or, with CAP_NET_ADMIN, creates) the tap
 * `name` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (TUNSETIFF), non-blocking and
 * close-on-exec, and sets the vnet header size (TUNSETVNETHDRSZ). Writes the
 * interface's name (at most 15 bytes and a NUL) to `actual_name`. Returns the
 * fd, or -1 with errno. */
int chost_tap_open(const char *name, int vnet_header_size, char actual_name[16]);

/* TUNSETOFFLOAD: which offloads (TUN_F_*) the tap may hand us. */
int chost_tap_set_offload(int fd, unsigned int flags);
