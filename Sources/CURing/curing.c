#include "curing.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>

struct curing {
    struct io_uring ring;
};

struct curing *curing_create(unsigned entries, int eventfd) {
    struct curing *ring = calloc(1, sizeof *ring);
    if (!ring) {
        errno = ENOMEM;
        return NULL;
    }
    int result = io_uring_queue_init(entries, &ring->ring, 0);
    if (result < 0) {
        free(ring);
        errno = -result;
        return NULL;
    }
    if (eventfd >= 0 && (result = io_uring_register_eventfd(&ring->ring, eventfd)) < 0) {
        io_uring_queue_exit(&ring->ring);
        free(ring);
        errno = -result;
        return NULL;
    }
    return ring;
}

void curing_destroy(struct curing *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}


int curing_queue_readv(struct curing *ring, int fd, const struct iovec *vectors, unsigned count, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *entry = io_uring_get_sqe(&ring->ring);
    if (!entry) return -EBUSY;
    io_uring_prep_readv(entry, fd, vectors, count, offset);
    io_uring_sqe_set_data(entry, (void *)(uintptr_t)user_data);
    return 0;
}

int curing_queue_writev(struct curing *ring, int fd, const struct iovec *vectors, unsigned count, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *entry = io_uring_get_sqe(&ring->ring);
    if (!entry) return -EBUSY;
    io_uring_prep_writev(entry, fd, vectors, count, offset);
    io_uring_sqe_set_data(entry, (void *)(uintptr_t)user_data);
    return 0;
}

int curing_queue_fdatasync(struct curing *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *entry = io_uring_get_sqe(&ring->ring);
    if (!entry) return -EBUSY;
    io_uring_prep_fsync(entry, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data(entry, (void *)(uintptr_t)user_data);
    return 0;
}

int curing_submit(struct curing *ring) {
    return io_uring_submit(&ring->ring);
}

unsigned curing_unsubmitted(struct curing *ring) {
    return io_uring_sq_ready(&ring->ring);
}

int curing_next_completion(struct curing *ring, int wait, uint64_t *user_data, int32_t *result) {
    struct io_uring_cqe *completion = NULL;
    int status = io_uring_peek_cqe(&ring->ring, &completion);
    if (status == -EAGAIN && wait) {
        status = io_uring_submit_and_wait(&ring->ring, 1);
        if (status < 0) return status;
        status = io_uring_peek_cqe(&ring->ring, &completion);
    }
    if (status == -EAGAIN) return 0;
    if (status < 0) return status;
    *user_data = (uint64_t)(uintptr_t)io_uring_cqe_get_data(completion);
    *result = completion->res;
    io_uring_cqe_seen(&ring->ring, completion);
    return 1;
}
