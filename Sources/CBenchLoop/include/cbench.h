/* The C baseline of Kestrel's exit round-trip benchmark. */
#ifndef CBENCH_H
#define CBENCH_H

#include <stdint.h>
#include "ckvm.h"

/*
 * Runs KVM_RUN `iterations` times on `vcpu_fd`, requiring each exit to be an
 * OUT to `port`, and adds each byte written to *checksum (as the Swift loop
 * does). Returns the number of exits handled, or -1 when KVM_RUN fails or an
 * exit is not the expected OUT.
 */
long cbench_io_round_trips(int vcpu_fd, struct ckvm_run *run, uint16_t port, long iterations, uint64_t *checksum);

#endif
