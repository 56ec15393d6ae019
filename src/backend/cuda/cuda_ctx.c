/* cuda_ctx.c: the CUDA context, checked status codes, device memory with
 * in-use and peak accounting, and copies on the context's stream. */
#include "backend/cuda/cuda_ctx.h"

#include <stdio.h>
#include <string.h>

moeq_code moeq_cuda_check(cudaError_t status, const char *call, const char *file, int line,
                          moeq_error *err)
{
    if (status == cudaSuccess)
        return MOEQ_OK;
    moeq_code code = status == cudaErrorMemoryAllocation ? MOEQ_ERR_OOM
                     : status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver
                         ? MOEQ_ERR_UNSUPPORTED
                         : MOEQ_ERR_IO;
    return moeq_fail(err, code, "%s failed: %s (%s) (%s:%d)", call, cudaGetErrorName(status),
                     cudaGetErrorString(status), file, line);
}

moeq_code moeq_cublas_check(cublasStatus_t status, const char *call, const char *file, int line,
                            moeq_error *err)
{
    if (status == CUBLAS_STATUS_SUCCESS)
        return MOEQ_OK;
    return moeq_fail(err, status == CUBLAS_STATUS_ALLOC_FAILED ? MOEQ_ERR_OOM : MOEQ_ERR_IO,
                     "%s failed: %s (%s) (%s:%d)", call, cublasGetStatusName(status),
                     cublasGetStatusString(status), file, line);
}

moeq_code moeq_cusolver_check(cusolverStatus_t status, const char *call, const char *file,
                              int line, moeq_error *err)
{
    if (status == CUSOLVER_STATUS_SUCCESS)
        return MOEQ_OK;
    return moeq_fail(err, status == CUSOLVER_STATUS_ALLOC_FAILED ? MOEQ_ERR_OOM : MOEQ_ERR_IO,
                     "%s failed: cusolverStatus %d (%s:%d)", call, (int)status, file, line);
}

moeq_code moeq_cuda_init(moeq_cuda_ctx *ctx, int device, moeq_error *err)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->device = device;
    int count = 0;
    moeq_code rc = MOEQ_CU(cudaGetDeviceCount(&count));
    if (rc)
        return rc;
    if (device < 0 || device >= count)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED, "CUDA device %d does not exist (%d found)",
                         device, count);
    struct cudaDeviceProp prop;
    if ((rc = MOEQ_CU(cudaSetDevice(device))) ||
        (rc = MOEQ_CU(cudaGetDeviceProperties(&prop, device))))
        return rc;
    snprintf(ctx->device_name, sizeof ctx->device_name, "%s", prop.name);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin_bytes = prop.sharedMemPerBlockOptin;
    /* Buffers come from the device's stream-ordered pool, which keeps what
     * is freed for the next allocation: a layer allocates and frees
     * hundreds of buffers, and cudaMalloc/cudaFree would synchronise the
     * device at each free. */
    cudaMemPool_t pool;
    uint64_t keep_bytes = UINT64_MAX;
    if ((rc = MOEQ_CU(cudaDeviceGetDefaultMemPool(&pool, device))) ||
        (rc = MOEQ_CU(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold,
                                              &keep_bytes))) ||
        (rc = MOEQ_CU(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking))) ||
        (rc = MOEQ_CUBLAS(cublasCreate(&ctx->cublas))) ||
        (rc = MOEQ_CUBLAS(cublasSetStream(ctx->cublas, ctx->stream))) ||
        (rc = MOEQ_CU(cudaEventCreateWithFlags(&ctx->lanes_start, cudaEventDisableTiming)))) {
        moeq_cuda_free_ctx(ctx);
        return rc;
    }
    for (int i = 0; i < MOEQ_CUDA_SOLVER_LANES; i++) {
        moeq_cuda_solver_lane *l = &ctx->lanes[i];
        if ((rc = MOEQ_CU(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking))) ||
            (rc = MOEQ_CU(cudaEventCreateWithFlags(&l->done, cudaEventDisableTiming))) ||
            (rc = MOEQ_CUSOLVER(cusolverDnCreate(&l->cusolver))) ||
            (rc = MOEQ_CUSOLVER(cusolverDnSetStream(l->cusolver, l->stream)))) {
            moeq_cuda_free_ctx(ctx);
            return rc;
        }
    }
    /* fp32 GEMMs stay fp32: no TF32 (the CPU reference is the yardstick). */
    size_t total = 0;
    rc = MOEQ_CUBLAS(cublasSetMathMode(ctx->cublas, CUBLAS_DEFAULT_MATH));
    if (!rc)
        rc = MOEQ_CU(cudaMemGetInfo(&ctx->free_at_init, &total));
    if (rc)
        moeq_cuda_free_ctx(ctx);
    return rc;
}

void moeq_cuda_free_ctx(moeq_cuda_ctx *ctx)
{
    /* Handles and stream-ordered frees belong to the context's device,
     * which need not be the calling thread's current one. */
    if (ctx->stream && cudaSetDevice(ctx->device) != cudaSuccess)
        (void)cudaGetLastError();
    if (ctx->stream)
        cudaStreamSynchronize(ctx->stream);
    for (int i = 0; i < MOEQ_CUDA_SOLVER_LANES; i++) {
        moeq_cuda_solver_lane *l = &ctx->lanes[i];
        if (l->stream)
            cudaStreamSynchronize(l->stream);
        moeq_cuda_free(ctx, &l->workspace);
        if (l->cusolver)
            cusolverDnDestroy(l->cusolver);
        if (l->stream)
            cudaStreamDestroy(l->stream);
        if (l->done)
            cudaEventDestroy(l->done);
    }
    if (ctx->lanes_start)
        cudaEventDestroy(ctx->lanes_start);
    if (ctx->cublas)
        cublasDestroy(ctx->cublas);
    if (ctx->stream)
        cudaStreamDestroy(ctx->stream);
    memset(ctx, 0, sizeof *ctx);
}

moeq_code moeq_cuda_alloc(moeq_cuda_ctx *ctx, moeq_cuda_buf *buf, size_t bytes, const char *what,
                          moeq_error *err)
{
    buf->ptr = NULL;
    buf->bytes = 0;
    if (bytes == 0)
        return MOEQ_OK;
    if (ctx->budget_bytes && ctx->bytes_in_use + bytes > ctx->budget_bytes)
        return moeq_fail(err, MOEQ_ERR_OOM,
                         "%zu bytes for %s would exceed the device memory budget of %.2f GiB "
                         "(%zu bytes in use): raise --vram-budget, or lower --expert-batch or "
                         "--nsamples",
                         bytes, what, ctx->budget_bytes / 1073741824.0, ctx->bytes_in_use);
    cudaError_t status = cudaMallocAsync(&buf->ptr, bytes, ctx->stream);
    if (status != cudaSuccess) {
        buf->ptr = NULL;
        (void)cudaGetLastError(); /* an allocation failure is not sticky: clear it */
        return moeq_fail(err, MOEQ_ERR_OOM,
                         "cudaMallocAsync of %zu bytes for %s failed: %s (%zu bytes already in use)",
                         bytes, what, cudaGetErrorString(status), ctx->bytes_in_use);
    }
    buf->bytes = bytes;
    ctx->bytes_in_use += bytes;
    if (ctx->bytes_in_use > ctx->peak_bytes)
        ctx->peak_bytes = ctx->bytes_in_use;
    return MOEQ_OK;
}

void moeq_cuda_free(moeq_cuda_ctx *ctx, moeq_cuda_buf *buf)
{
    if (buf->ptr) {
        cudaFreeAsync(buf->ptr, ctx->stream);
        ctx->bytes_in_use -= buf->bytes;
    }
    buf->ptr = NULL;
    buf->bytes = 0;
}

moeq_code moeq_cuda_upload(moeq_cuda_ctx *ctx, void *dst_dev, const void *src_host, size_t bytes,
                           moeq_error *err)
{
    if (bytes == 0)
        return MOEQ_OK;
    return MOEQ_CU(cudaMemcpyAsync(dst_dev, src_host, bytes, cudaMemcpyHostToDevice, ctx->stream));
}

moeq_code moeq_cuda_download(moeq_cuda_ctx *ctx, void *dst_host, const void *src_dev,
                             size_t bytes, moeq_error *err)
{
    if (bytes == 0)
        return MOEQ_OK;
    return MOEQ_CU(cudaMemcpyAsync(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, ctx->stream));
}

moeq_code moeq_cuda_sync(moeq_cuda_ctx *ctx, moeq_error *err)
{
    return MOEQ_CU(cudaStreamSynchronize(ctx->stream));
}

moeq_code moeq_cuda_host_alloc(void **ptr, size_t bytes, const char *what, moeq_error *err)
{
    /* Portable: pinned for every GPU of the run, not only the current one. */
    cudaError_t status = cudaHostAlloc(ptr, bytes, cudaHostAllocPortable);
    if (status != cudaSuccess) {
        *ptr = NULL;
        return moeq_fail(err, MOEQ_ERR_OOM, "cudaHostAlloc of %zu bytes for %s failed: %s",
                         bytes, what, cudaGetErrorString(status));
    }
    return MOEQ_OK;
}

void moeq_cuda_host_free(void *ptr)
{
    if (ptr)
        cudaFreeHost(ptr);
}

moeq_code moeq_cuda_solver_workspace(moeq_cuda_ctx *ctx, size_t bytes, moeq_error *err)
{
    for (int i = 0; i < MOEQ_CUDA_SOLVER_LANES; i++) {
        moeq_cuda_buf *w = &ctx->lanes[i].workspace;
        if (bytes <= w->bytes)
            continue;
        moeq_cuda_free(ctx, w);
        moeq_code rc = moeq_cuda_alloc(ctx, w, bytes, "cuSOLVER workspace", err);
        if (rc)
            return rc;
    }
    return MOEQ_OK;
}

moeq_code moeq_cuda_lanes_begin(moeq_cuda_ctx *ctx, moeq_error *err)
{
    moeq_code rc = MOEQ_CU(cudaEventRecord(ctx->lanes_start, ctx->stream));
    for (int i = 0; i < MOEQ_CUDA_SOLVER_LANES && !rc; i++)
        rc = MOEQ_CU(cudaStreamWaitEvent(ctx->lanes[i].stream, ctx->lanes_start, 0));
    return rc;
}

moeq_code moeq_cuda_lanes_end(moeq_cuda_ctx *ctx, moeq_error *err)
{
    moeq_code rc = MOEQ_OK;
    for (int i = 0; i < MOEQ_CUDA_SOLVER_LANES && !rc; i++)
        if (!(rc = MOEQ_CU(cudaEventRecord(ctx->lanes[i].done, ctx->lanes[i].stream))))
            rc = MOEQ_CU(cudaStreamWaitEvent(ctx->stream, ctx->lanes[i].done, 0));
    return rc;
}
