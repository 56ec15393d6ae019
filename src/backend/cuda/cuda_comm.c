/* cuda_comm.c: NCCL communicators and the two collectives of the layer loop. */
#include "backend/cuda/cuda_comm.h"

#include <stdlib.h>
#include <string.h>

#ifdef MOEQ_HAVE_NCCL
#include <nccl.h>

static moeq_code nccl_check(ncclResult_t status, const char *call, moeq_error *err)
{
    if (status == ncclSuccess)
        return MOEQ_OK;
    return moeq_fail(err, MOEQ_ERR_IO,
                     "%s failed: %s (%s)", call, ncclGetErrorString(status),
                     ncclGetLastError(NULL));
}
#define MOEQ_NCCL(call) nccl_check((call), #call, err)
#endif

moeq_code moeq_cuda_comm_init(moeq_cuda_comm *comm, const int *devices, int n, moeq_error *err)
{
    memset(comm, 0, sizeof *comm);
    if (n < 1 || n > MOEQ_CUDA_COMM_MAX)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "%d CUDA devices: between 1 and %d are allowed",
                         n, MOEQ_CUDA_COMM_MAX);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (devices[i] == devices[j])
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "CUDA device %d is listed twice in --devices", devices[i]);
    memcpy(comm->devices, devices, sizeof(int) * (size_t)n);
    comm->n = n;
    if (n == 1)
        return MOEQ_OK;
#ifdef MOEQ_HAVE_NCCL
    /* Never NVLink multicast (see the header). Set before the first
     * communicator: NCCL reads its environment once. */
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    ncclComm_t comms[MOEQ_CUDA_COMM_MAX];
    moeq_code rc = MOEQ_NCCL(ncclCommInitAll(comms, n, devices));
    if (rc) {
        comm->n = 0;
        return moeq_wrap(err, "NCCL over CUDA devices %d..: ", devices[0]);
    }
    for (int i = 0; i < n; i++)
        comm->nccl[i] = comms[i];
    return MOEQ_OK;
#else
    comm->n = 0;
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "%d CUDA devices: this moeq was built without NCCL, which runs on several "
                     "GPUs need (install NCCL's headers and library, or set NCCL_ROOT, and "
                     "rebuild), or use one device",
                     n);
#endif
}

void moeq_cuda_comm_free(moeq_cuda_comm *comm)
{
#ifdef MOEQ_HAVE_NCCL
    for (int i = 0; i < comm->n; i++)
        if (comm->nccl[i])
            ncclCommDestroy((ncclComm_t)comm->nccl[i]);
#endif
    memset(comm, 0, sizeof *comm);
}

#ifdef MOEQ_HAVE_NCCL
moeq_code moeq_cuda_comm_bcast(const moeq_cuda_comm *comm, int rank, void *buf, size_t bytes,
                               cudaStream_t stream, moeq_error *err)
{
    return MOEQ_NCCL(ncclBroadcast(buf, buf, bytes, ncclUint8, 0, (ncclComm_t)comm->nccl[rank],
                                   stream));
}

moeq_code moeq_cuda_comm_reduce_sum(const moeq_cuda_comm *comm, int rank, float *buf,
                                    size_t count, cudaStream_t stream, moeq_error *err)
{
    return MOEQ_NCCL(ncclReduce(buf, buf, count, ncclFloat32, ncclSum, 0,
                                (ncclComm_t)comm->nccl[rank], stream));
}

moeq_code moeq_cuda_comm_group_start(moeq_error *err)
{
    return MOEQ_NCCL(ncclGroupStart());
}

moeq_code moeq_cuda_comm_group_end(moeq_error *err)
{
    return MOEQ_NCCL(ncclGroupEnd());
}
#else
/* A comm of several ranks cannot be made without NCCL, and one rank never
 * communicates: reaching these is a caller's error. */
static moeq_code no_nccl(moeq_error *err)
{
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED, "a collective between GPUs in a build without NCCL");
}

moeq_code moeq_cuda_comm_bcast(const moeq_cuda_comm *comm, int rank, void *buf, size_t bytes,
                               cudaStream_t stream, moeq_error *err)
{
    (void)comm, (void)rank, (void)buf, (void)bytes, (void)stream;
    return no_nccl(err);
}

moeq_code moeq_cuda_comm_reduce_sum(const moeq_cuda_comm *comm, int rank, float *buf,
                                    size_t count, cudaStream_t stream, moeq_error *err)
{
    (void)comm, (void)rank, (void)buf, (void)count, (void)stream;
    return no_nccl(err);
}

moeq_code moeq_cuda_comm_group_start(moeq_error *err)
{
    return no_nccl(err);
}

moeq_code moeq_cuda_comm_group_end(moeq_error *err)
{
    return no_nccl(err);
}
#endif
