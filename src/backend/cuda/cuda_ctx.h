/* cuda_ctx.h: the CUDA backend's context and its checked primitives.
 *
 * One moeq_cuda_ctx per run owns the device, the stream every operation is
 * queued on, the cuBLAS and cuSOLVER handles bound to that stream, a
 * cuSOLVER workspace that grows on demand, and the count of device bytes in
 * use and at peak (what the planner reports as peak VRAM).
 *
 * Every CUDA, cuBLAS and cuSOLVER status is checked: MOEQ_CU(call),
 * MOEQ_CUBLAS(call) and MOEQ_CUSOLVER(call) evaluate to a moeq_code and, on
 * failure, leave "call failed: reason (file:line)" in the moeq_error named
 * `err` in the caller's scope:
 *     if ((rc = MOEQ_CU(cudaMemsetAsync(p, 0, n, ctx->stream)))) goto done; */
#ifndef MOEQ_BACKEND_CUDA_CTX_H
#define MOEQ_BACKEND_CUDA_CTX_H

#include "moeq/moeq.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <stddef.h>

/* A device allocation and its size, so frees keep the count exact. */
typedef struct moeq_cuda_buf {
    void *ptr;
    size_t bytes;
} moeq_cuda_buf;

/* Independent factorisations (the down_proj Hessians of an expert group)
 * run on this many side streams at once: one matrix of a few hundred
 * columns leaves most of the GPU idle. */
#define MOEQ_CUDA_SOLVER_LANES 8

/* A side stream with its own cuSOLVER handle and scratch. */
typedef struct moeq_cuda_solver_lane {
    cudaStream_t stream;
    cusolverDnHandle_t cusolver;
    cudaEvent_t done;
    moeq_cuda_buf workspace; /* see moeq_cuda_solver_workspace */
} moeq_cuda_solver_lane;

typedef struct moeq_cuda_ctx {
    int device;
    char device_name[256];
    int sm_count;
    size_t smem_optin_bytes;   /* shared memory a block may opt in to */
    cudaStream_t stream;
    cublasHandle_t cublas;
    moeq_cuda_solver_lane lanes[MOEQ_CUDA_SOLVER_LANES];
    cudaEvent_t lanes_start; /* recorded on stream before work goes to the lanes */
    size_t bytes_in_use;       /* device bytes allocated through this context */
    size_t peak_bytes;         /* the most bytes_in_use has been */
    size_t budget_bytes;       /* 0, or the most bytes_in_use may reach: an
                                * allocation past it fails as out of memory */
    size_t free_at_init;       /* the device's free memory once the context, its
                                * streams and library handles existed */
} moeq_cuda_ctx;

moeq_code moeq_cuda_check(cudaError_t status, const char *call, const char *file, int line,
                          moeq_error *err);
moeq_code moeq_cublas_check(cublasStatus_t status, const char *call, const char *file, int line,
                            moeq_error *err);
moeq_code moeq_cusolver_check(cusolverStatus_t status, const char *call, const char *file,
                              int line, moeq_error *err);

#define MOEQ_CU(call) moeq_cuda_check((call), #call, __FILE__, __LINE__, err)
#define MOEQ_CUBLAS(call) moeq_cublas_check((call), #call, __FILE__, __LINE__, err)
#define MOEQ_CUSOLVER(call) moeq_cusolver_check((call), #call, __FILE__, __LINE__, err)

/* Selects device, creates the stream and the handles. On failure everything
 * made so far is released. MOEQ_ERR_UNSUPPORTED when no device exists. */
moeq_code moeq_cuda_init(moeq_cuda_ctx *ctx, int device, moeq_error *err);
/* Waits for the stream, then frees what init and the workspace made. Safe on
 * a zeroed or half-initialised context. Leaves ctx's device current. */
void moeq_cuda_free_ctx(moeq_cuda_ctx *ctx);

/* Device allocation of bytes (what names it in the error). bytes == 0 gives
 * a NULL buffer. MOEQ_ERR_OOM names the size and the bytes already in use. */
moeq_code moeq_cuda_alloc(moeq_cuda_ctx *ctx, moeq_cuda_buf *buf, size_t bytes, const char *what,
                          moeq_error *err);
/* Frees buf (NULL is fine) and zeroes it, in stream order: work queued on
 * ctx->stream before the free may still use it. */
void moeq_cuda_free(moeq_cuda_ctx *ctx, moeq_cuda_buf *buf);

/* Copies queued on ctx->stream. Host memory should be pinned for the copy to
 * overlap; pageable memory works but the call then returns after the copy. */
moeq_code moeq_cuda_upload(moeq_cuda_ctx *ctx, void *dst_dev, const void *src_host, size_t bytes,
                           moeq_error *err);
moeq_code moeq_cuda_download(moeq_cuda_ctx *ctx, void *dst_host, const void *src_dev,
                             size_t bytes, moeq_error *err);
/* Lanes: lanes_begin makes every lane wait for the work queued on stream so
 * far; lanes_end makes stream wait for everything queued on the lanes. */
moeq_code moeq_cuda_lanes_begin(moeq_cuda_ctx *ctx, moeq_error *err);
moeq_code moeq_cuda_lanes_end(moeq_cuda_ctx *ctx, moeq_error *err);
/* Waits for everything queued on the stream; reports errors of past kernels. */
moeq_code moeq_cuda_sync(moeq_cuda_ctx *ctx, moeq_error *err);

/* Pinned host memory (for overlapped copies), freed by moeq_cuda_host_free. */
moeq_code moeq_cuda_host_alloc(void **ptr, size_t bytes, const char *what, moeq_error *err);
void moeq_cuda_host_free(void *ptr);

/* At least bytes of cuSOLVER workspace in every lane's workspace; valid
 * until the next call that grows it. */
moeq_code moeq_cuda_solver_workspace(moeq_cuda_ctx *ctx, size_t bytes, moeq_error *err);

#endif
