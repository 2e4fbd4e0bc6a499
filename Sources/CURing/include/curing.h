/*
 * A small, opaque face on liburing (Debian's liburing-dev) for Kestrel's
 * io_uring block engine: the ring's layout stays in C, and Swift sees only
 * plain calls. Every call is used from one thread at a time.
 */
#ifndef CURING_H
#define CURING_H

#include <stdint.h>
#include <sys/uio.h>

struct curing;

/* A ring of at least `entries` submissions (io_uring_queue_init) whose
 * completions are signalled on `eventfd` (io_uring_register_eventfd; -1 for
 * none). NULL with errno set. */
struct curing *curing_create(unsigned entries, int eventfd);
void curing_destroy(struct curing *ring);

/* Queues a readv, writev or fdatasync tagged `user_data`: 0, or -EBUSY when
 * the submission queue is full. Nothing reaches the kernel before
 * curing_submit. The iovecs must live until the completion. */
int curing_queue_readv(struct curing *ring, int fd, const struct iovec *vectors, unsigned count, uint64_t offset, uint64_t user_data);
int curing_queue_writev(struct curing *ring, int fd, const struct iovec *vectors, unsigned count, uint64_t offset, uint64_t user_data);
int curing_queue_fdatasync(struct curing *ring, int fd, uint64_t user_data);

/* Hands the queued submissions to the kernel (io_uring_submit): how many, or -errno. */
int curing_submit(struct curing *ring);

/* How many queued submissions the kernel has not taken yet (io_uring_sq_ready). */
unsigned curing_unsubmitted(struct curing *ring);

/* Takes one completion: 1 with its tag and result (bytes, or -errno), 0 when
 * there is none and `wait` is 0, or -errno. With `wait`, hands over anything
 * still queued and blocks for one (io_uring_submit_and_wait). */
int curing_next_completion(struct curing *ring, int wait, uint64_t *user_data, int32_t *result);

#endif
