/*
 * Host system-call shims (see chost.h).
 */
#define _GNU_SOURCE
#include "chost.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int chost_fallocate(int fd, int mode, long offset, long length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

long chost_copy_file_range(int in_fd, long in_offset, int out_fd, long out_offset, size_t length) {
    off64_t from = in_offset, to = out_offset;
    return (long)copy_file_range(in_fd, &from, out_fd, &to, length, 0);
}

int chost_malloc_trim(void) { return malloc_trim(0); }

static short chost_lock_type(int kind) {
    return kind == 0 ? F_RDLCK : kind == 1 ? F_WRLCK : F_UNLCK;
}

int chost_ofd_lock(int fd, int kind) {
    struct flock lock;
    memset(&lock, 0, sizeof(lock)); /* l_pid must be 0 for OFD locks */
    lock.l_type = chost_lock_type(kind);
    lock.l_whence = SEEK_SET;
    lock.l_start = 0;
    lock.l_len = 0; /* to the end of the file, however it grows */
    return fcntl(fd, F_OFD_SETLK, &lock);
}

static void chost_kick_handler(int signal_number) {
    (void)signal_number; /* Only the interruption of KVM_RUN matters. */
}

int chost_install_kick_handler(int signal_number) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = chost_kick_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0; /* no SA_RESTART: KVM_RUN must come back with EINTR */
    return sigaction(signal_number, &action, NULL);
}

int chost_set_signal_blocked(int signal_number, int blocked) {
    sigset_t set, previous;
    sigemptyset(&set);
    sigaddset(&set, signal_number);
    int error = pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, &previous);
    if (error != 0) {
        errno = error;
        return -1;
    }
    return sigismember(&previous, signal_number) ? 1 : 0;
}

/* Per-thread state of the guarded access in progress, read by the handler. */
static __thread sigjmp_buf guard_jump;
static __thread volatile int guard_active;
static __thread volatile uintptr_t guard_fault_address;

/* Serialises the process-wide SIGBUS disposition between threads. */
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

static void chost_sigbus_handler(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    if (!guard_active) {
        /* Not ours: fall back to the default action and re-raise. */
        signal(signal_number, SIG_DFL);
        raise(signal_number);
        return;
    }
    guard_fault_address = (uintptr_t)info->si_addr;
    guard_active = 0;
    siglongjmp(guard_jump, 1);
}

/* Runs `body` over [address, address+length) with SIGBUS turned into a return. */
static long chost_guarded(volatile uint8_t *address, size_t length,
                         void (*body)(volatile uint8_t *, size_t, void *), void *context) {
    struct sigaction action, previous;
    long result = -1;

    pthread_mutex_lock(&guard_lock);
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = chost_sigbus_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &previous);

    if (sigsetjmp(guard_jump, 1) == 0) {
        guard_active = 1;
        body(address, length, context);
        guard_active = 0;
    } else {
        result = (long)(guard_fault_address - (uintptr_t)address);
    }

    sigaction(SIGBUS, &previous, NULL);
    pthread_mutex_unlock(&guard_lock);
    return result;
}

static void fill_body(volatile uint8_t *address, size_t length, void *context) {
    uint8_t value = *(uint8_t *)context;
    for (size_t i = 0; i < length; i++)
        address[i] = value;
}

static void read_body(volatile uint8_t *address, size_t length, void *context) {
    uint8_t *destination = context;
    for (size_t i = 0; i < length; i++)
        destination[i] = address[i];
}

long chost_guarded_fill(void *address, uint8_t value, size_t length) {
    return chost_guarded(address, length, fill_body, &value);
}

long chost_guarded_read(const void *address, void *destination, size_t length) {
    return chost_guarded((volatile uint8_t *)address, length, read_body, destination);
}

long chost_mbind(void *address, unsigned long length, int mode, const unsigned long *nodemask,
                unsigned long maxnode, unsigned int flags) {
    return syscall(SYS_mbind, address, length, mode, nodemask, maxnode, flags);
}

long chost_get_mempolicy(int *mode, unsigned long *nodemask, unsigned long maxnode, void *address,
                        unsigned long flags) {
    return syscall(SYS_get_mempolicy, mode, nodemask, maxnode, address, flags);
}

long chost_move_pages(int pid, unsigned long count, void **pages, const int *nodes, int *status, int flags) {
    return syscall(SYS_move_pages, pid, count, pages, nodes, status, flags);
}

int chost_tap_open(const char *name, int vnet_header_size, char actual_name[16]) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &request) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &vnet_header_size) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    memcpy(actual_name, request.ifr_name, IFNAMSIZ);
    actual_name[IFNAMSIZ - 1] = 0;
    return fd;
}

int chost_tap_set_offload(int fd, unsigned int flags) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags);
}

/* ---- userfaultfd, for fault-around ---- */

/* Debian 12's headers predate Linux 6.7; the values are the kernel's ABI. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

int chost_userfaultfd_wp_async(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) return -1;
    struct uffdio_api api;
    memset(&api, 0, sizeof api);
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int chost_userfaultfd_register_wp(int fd, uint64_t start, uint64_t length) {
    struct uffdio_register request;
    memset(&request, 0, sizeof request);
    request.range.start = start;
    request.range.len = length;
    request.mode = UFFDIO_REGISTER_MODE_WP;
    return ioctl(fd, UFFDIO_REGISTER, &request) < 0 ? -1 : 0;
}

/* ---- userfaultfd, for lazily restored guest RAM ---- */

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

int chost_userfaultfd_open(int nonblocking, uint64_t features, uint64_t *offered) {
    int flags = O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0);
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
        int saved = errno;
        int device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (device >= 0) {
            fd = ioctl(device, USERFAULTFD_IOC_NEW, flags);
            saved = errno;
            close(device);
        }
        if (fd < 0) { errno = saved; return -1; }
    }
    if (fd < 0) return -1;
    struct uffdio_api api;
    memset(&api, 0, sizeof api);
    api.api = UFFD_API;
    api.features = features;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (offered) *offered = api.features;
    return fd;
}

int chost_userfaultfd_register_missing(int fd, uint64_t start, uint64_t length, uint64_t *ioctls) {
    struct uffdio_register request;
    memset(&request, 0, sizeof request);
    request.range.start = start;
    request.range.len = length;
    request.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (ioctl(fd, UFFDIO_REGISTER, &request) < 0) return -1;
    if (ioctls) *ioctls = request.ioctls;
    return 0;
}

int chost_userfaultfd_unregister(int fd, uint64_t start, uint64_t length) {
    struct uffdio_range range = { .start = start, .len = length };
    return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? -1 : 0;
}

long chost_userfaultfd_copy(int fd, uint64_t target, uint64_t source, uint64_t length) {
    struct uffdio_copy request;
    memset(&request, 0, sizeof request);
    request.dst = target;
    request.src = source;
    request.len = length;
    if (ioctl(fd, UFFDIO_COPY, &request) == 0) return (long)request.copy;
    int saved = errno;
    if (request.copy > 0) return (long)request.copy;
    errno = saved;
    return -1;
}

long chost_userfaultfd_zeropage(int fd, uint64_t start, uint64_t length) {
    struct uffdio_zeropage request;
    memset(&request, 0, sizeof request);
    request.range.start = start;
    request.range.len = length;
    if (ioctl(fd, UFFDIO_ZEROPAGE, &request) == 0) return (long)request.zeropage;
    int saved = errno;
    if (request.zeropage > 0) return (long)request.zeropage;
    errno = saved;
    return -1;
}

int chost_userfaultfd_wake(int fd, uint64_t start, uint64_t length) {
    struct uffdio_range range = { .start = start, .len = length };
    return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? -1 : 0;
}

int chost_userfaultfd_writeprotect(int fd, uint64_t start, uint64_t length, int protect) {
    struct uffdio_writeprotect request;
    memset(&request, 0, sizeof request);
    request.range.start = start;
    request.range.len = length;
    request.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
    return ioctl(fd, UFFDIO_WRITEPROTECT, &request) < 0 ? -1 : 0;
}

int chost_userfaultfd_read_event(int fd, struct chost_uffd_event *event) {
    struct uffd_msg message;
    ssize_t got;
    do { got = read(fd, &message, sizeof message); } while (got < 0 && errno == EINTR);
    if (got < 0) return errno == EAGAIN ? 0 : -1;
    if (got != (ssize_t)sizeof message) { errno = EIO; return -1; }
    memset(event, 0, sizeof *event);
    switch (message.event) {
    case UFFD_EVENT_PAGEFAULT:
        event->kind = (message.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) ? 3 : 1;
        event->write = (message.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
        event->address = message.arg.pagefault.address;
        break;
    case UFFD_EVENT_REMOVE:
        event->kind = 2;
        event->address = message.arg.remove.start;
        event->end = message.arg.remove.end;
        break;
    default:
        event->kind = 0;
    }
    return 1;
}

int chost_memfd_create(const char *name) {
    /* MFD_NOEXEC_SEAL first: a host with vm.memfd_noexec=2 refuses a memfd
       that could be executable; a kernel before 6.3 refuses the flag. */
    int fd = (int)syscall(SYS_memfd_create, name, 1U /* MFD_CLOEXEC */ | 8U /* MFD_NOEXEC_SEAL */);
    if (fd < 0 && errno == EINVAL) fd = (int)syscall(SYS_memfd_create, name, 1U);
    return fd;
}

long chost_send_with_descriptor(int socket, const void *bytes, size_t length, int descriptor) {
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = sizeof control.space;
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &descriptor, sizeof(int));
    ssize_t sent;
    do { sent = sendmsg(socket, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return (long)sent;
}

/* ---- seccomp ---- */

static __thread char chost_seccomp_kind[24] = "unfiltered";

int chost_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, name, 0, 0, 0);
}

int chost_seccomp_install(const uint32_t *allowed, size_t count, const char *thread_kind, const char *thread_name, int log_only) {
    enum { maximum = 400 };
    if (count > maximum) { errno = E2BIG; return -1; }
    struct sock_filter program[5 + 2 * maximum];
    size_t length = 0;
    program[length++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    program[length++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    program[length++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    program[length++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (size_t index = 0; index < count; index++) {
        program[length++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, allowed[index], 0, 1);
        program[length++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    }
    program[length++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, log_only ? SECCOMP_RET_LOG : SECCOMP_RET_TRAP);
    struct sock_fprog filter = { .len = (unsigned short)length, .filter = program };
    size_t copied = 0;
    for (; thread_kind[copied] != 0 && copied < sizeof(chost_seccomp_kind) - 1; copied++) chost_seccomp_kind[copied] = thread_kind[copied];
    chost_seccomp_kind[copied] = 0;
    char name[16] = "k-";
    for (size_t index = 0; index < 13 && thread_kind[index] != 0; index++) name[2 + index] = thread_kind[index];
    prctl(PR_SET_NAME, thread_name ? thread_name : name, 0, 0, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter);
}

static size_t chost_append(char *line, size_t length, const char *text) {
    while (*text && length < 255) line[length++] = *text++;
    return length;
}

static void chost_seccomp_trap(int signal_number, siginfo_t *info, void *context) {
    (void)signal_number; (void)context;
    char line[256];
    size_t length = chost_append(line, 0, "kestrel: seccomp: the ");
    length = chost_append(line, length, chost_seccomp_kind);
    length = chost_append(line, length, " thread made system call ");
    char digits[12];
    int count = 0;
    unsigned number = (unsigned)info->si_syscall;
    do { digits[count++] = (char)('0' + number % 10); number /= 10; } while (number && count < 11);
    while (count > 0 && length < 255) line[length++] = digits[--count];
    length = chost_append(line, length, ", which its allow-list does not hold; ending (--no-seccomp turns the filters off)\n");
    ssize_t ignored = write(2, line, length);
    (void)ignored;
    syscall(SYS_exit_group, 128 + SIGSYS);
}

int chost_seccomp_install_trap_handler(void) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = chost_seccomp_trap;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO;
    return sigaction(SIGSYS, &action, NULL);
}

static int chost_stop_fd = -1;

static void chost_stop_handler(int signal_number) {
    unsigned char byte = (unsigned char)signal_number;
    int saved = errno;
    ssize_t ignored = write(chost_stop_fd, &byte, 1);
    (void)ignored;
    errno = saved;
}

int chost_forward_stop_signals(int fd) {
    chost_stop_fd = fd;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = chost_stop_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &action, NULL) != 0) return -1;
    if (sigaction(SIGHUP, &action, NULL) != 0) return -1;
    return sigaction(SIGTERM, &action, NULL);
}

int chost_gettid(void) {
    return (int)syscall(SYS_gettid);
}

int chost_timerfd_create(void) {
    return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
}

int chost_timerfd_arm(int fd, long seconds, long nanoseconds) {
    struct itimerspec setting = {.it_interval = {0, 0}, .it_value = {seconds, nanoseconds}};
    return timerfd_settime(fd, 0, &setting, NULL);
}

const void *chost_memmem(const void *haystack, size_t haystack_length, const void *needle, size_t needle_length) {
    return memmem(haystack, haystack_length, needle, needle_length);
}

int chost_unshare(int flags) {
    return unshare(flags);
}

int chost_setns(int fd, int nstype) {
    return setns(fd, nstype);
}
