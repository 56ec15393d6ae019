/* cuda_comm.h: the GPUs of one run and the collectives between them.
 *
 * A run on several GPUs of one host (--devices) keeps one moeq_cuda_ctx per
 * GPU, driven by one host thread each, and one NCCL communicator per GPU
 * (rank r drives devices[r]; rank 0 is the primary, which holds the
 * residual stream). The collectives here are the two the layer loop needs:
 * a broadcast from rank 0 and a sum reduced into rank 0, each queued on the
 * calling rank's stream. Every rank calls them in the same order.
 *
 * NCCL is optional at build time (MOEQ_HAVE_NCCL): without it a comm of one
 * device works (it never communicates) and one of several is refused.
 * NVLink multicast (NVLS) is always switched off: it brings nothing to a
 * broadcast or a reduce of this size, and it can take a shared host's GPUs
 * out of service. */
#ifndef MOEQ_BACKEND_CUDA_COMM_H
#define MOEQ_BACKEND_CUDA_COMM_H

#include "moeq/moeq.h"

#include <cuda_runtime.h>
#include <stddef.h>

/* The most GPUs one comm holds. */
#define MOEQ_CUDA_COMM_MAX 16

typedef struct moeq_cuda_comm {
    int n;                            /* ranks (GPUs) */
    int devices[MOEQ_CUDA_COMM_MAX];    /* CUDA device of each rank */
    void *nccl[MOEQ_CUDA_COMM_MAX];     /* ncclComm_t of each rank (n > 1) */
} moeq_cuda_comm;

/* Communicators for devices[0..n). n == 1 needs no NCCL and makes none.
 * MOEQ_ERR_UNSUPPORTED for n > 1 in a build without NCCL, or for a device
 * listed twice. */
moeq_code moeq_cuda_comm_init(moeq_cuda_comm *comm, const int *devices, int n, moeq_error *err);
void moeq_cuda_comm_free(moeq_cuda_comm *comm);

/* Rank rank's part of a broadcast of bytes at buf from rank 0 (in place on
 * every rank), queued on stream. */
moeq_code moeq_cuda_comm_bcast(const moeq_cuda_comm *comm, int rank, void *buf, size_t bytes,
                               cudaStream_t stream, moeq_error *err);
/* Rank rank's part of buf[count] fp32 summed over all ranks into rank 0's
 * buf (in place), queued on stream. Other ranks' buf is only read. */
moeq_code moeq_cuda_comm_reduce_sum(const moeq_cuda_comm *comm, int rank, float *buf,
                                    size_t count, cudaStream_t stream, moeq_error *err);
/* Several collectives of one rank as one launch (ncclGroupStart/End). */
moeq_code moeq_cuda_comm_group_start(moeq_error *err);
moeq_code moeq_cuda_comm_group_end(moeq_error *err);

#endif
