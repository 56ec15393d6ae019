/* parallel.h: a parallel loop over independent items on a few POSIX
 * threads, for the host-side work that sits beside the GPU (decoding a
 * layer's weights, packing its quantized tensors). */
#ifndef MOEQ_COMMON_PARALLEL_H
#define MOEQ_COMMON_PARALLEL_H

#include "moeq/moeq.h"

typedef moeq_code (*moeq_parallel_fn)(void *ctx, int i, moeq_error *err);

/* Runs fn(ctx, i, err) for every i in [0, n) on up to `threads` threads
 * (0: the online cores, at most 16; 1: this thread only). Items must be
 * independent (fn(i) writes only item i's outputs), so the results do not
 * depend on the schedule. After a failure no new item starts; the failure
 * of the lowest index is returned with its message, so the error too does
 * not depend on the schedule. */
moeq_code moeq_parallel_for(int n, int threads, moeq_parallel_fn fn, void *ctx, moeq_error *err);

#endif
