#include "cbench.h"

#include <sys/ioctl.h>

#define CBENCH_KVM_RUN 0xAE80UL
#define CBENCH_EXIT_IO 2U

long cbench_io_round_trips(int vcpu_fd, struct ckvm_run *run, uint16_t port, long iterations, uint64_t *checksum) {
    uint64_t sum = 0;
    for (long i = 0; i < iterations; i++) {
        if (ioctl(vcpu_fd, CBENCH_KVM_RUN, 0) < 0)
            return -1;
        if (run->exit_reason != CBENCH_EXIT_IO || run->exit.io.port != port || run->exit.io.direction != 1)
            return -1;
        sum += ((const uint8_t *)run)[run->exit.io.data_offset];
    }
    *checksum += sum;
    return iterations;
}
