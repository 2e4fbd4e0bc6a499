/*
 * The C baseline of the exit round-trip benchmark: the same loop as the Swift
 * one, written against the distribution's <linux/kvm.h> (struct kvm_run's I/O
 * exit has not changed in years), so that it shares no code with Kestrel.
 */
#ifndef CBENCH_H
#define CBENCH_H

#include <stdint.h>

/* Runs the vCPU `iterations` times; each exit must be an OUT to `port`.
   `run` is the vCPU's mmapped kvm_run. Returns `iterations`, or -1. */
long cbench_io_round_trips(int vcpu_fd, void *run, uint16_t port, long iterations, uint64_t *checksum);

#endif
