/* cuda_hessian.c: H += alpha x^T [diag(w)] x as one cuBLAS GEMM per chunk.
 *
 * Row-major x [rows, n] is column-major x^T [n, rows] with ld n, so
 * H = x^T x is GEMM(N, T) of that view with itself. cuBLAS has no
 * tensor-core SYRK for bf16, so the GEMM fills both triangles (twice SYRK's
 * flops, but on tensor cores) and the upper one is then copied down, so H is
 * exactly symmetric as the Cholesky that follows expects. */
#include "backend/cuda/cuda_hessian.h"

#include "kernels.h"

enum { HESSIAN_SCRATCH_BYTES = 64 << 20 };

static size_t dtype_bytes(moeq_cuda_dtype dtype)
{
    return dtype == MOEQ_CUDA_BF16 ? 2 : 4;
}

/* H += alpha a^T b for a, b [rows, n] (column-major views [n, rows]). */
static moeq_code gemm_at_b(moeq_cuda_ctx *ctx, float *H, const void *a, const void *b,
                           moeq_cuda_dtype dtype, int rows, int n, float alpha, moeq_error *err)
{
    const float one = 1.0f;
    cudaDataType_t t = dtype == MOEQ_CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    return MOEQ_CUBLAS(cublasGemmEx(ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, rows, &alpha, a,
                                    t, n, b, t, n, &one, H, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

moeq_code moeq_cuda_hessian_accumulate(moeq_cuda_ctx *ctx, float *H, const void *x,
                                       moeq_cuda_dtype dtype, int rows, int n, float alpha,
                                       moeq_error *err)
{
    if (rows <= 0 || n <= 0)
        return MOEQ_OK;
    moeq_code rc = gemm_at_b(ctx, H, x, x, dtype, rows, n, alpha, err);
    if (rc)
        return moeq_wrap(err, "hessian %d x %d from %d rows: ", n, n, rows);
    return MOEQ_CU(moeq_k_mirror_upper(H, n, ctx->stream));
}

moeq_code moeq_cuda_hessian_accumulate_weighted(moeq_cuda_ctx *ctx, float *H, const void *x,
                                                moeq_cuda_dtype dtype, const float *w, int rows,
                                                int n, float alpha, moeq_error *err)
{
    if (rows <= 0 || n <= 0)
        return MOEQ_OK;
    moeq_cuda_buf bad = {0}, scaled = {0};
    int bad_host = 0;
    size_t row_bytes = (size_t)n * dtype_bytes(dtype);
    size_t chunk = HESSIAN_SCRATCH_BYTES / row_bytes;
    chunk = chunk < 1 ? 1 : chunk > (size_t)rows ? (size_t)rows : chunk;
    moeq_code rc = moeq_cuda_alloc(ctx, &bad, sizeof(int), "hessian weight check", err);
    if (rc || (rc = MOEQ_CU(cudaMemsetAsync(bad.ptr, 0, sizeof(int), ctx->stream))) ||
        (rc = MOEQ_CU(moeq_k_count_bad_weights(w, rows, bad.ptr, ctx->stream))) ||
        (rc = moeq_cuda_download(ctx, &bad_host, bad.ptr, sizeof(int), err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        goto done;
    if (bad_host) {
        rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                       "hessian: %d of %d row weights are negative or not finite", bad_host, rows);
        goto done;
    }
    if ((rc = moeq_cuda_alloc(ctx, &scaled, chunk * row_bytes, "weighted hessian rows", err)))
        goto done;
    for (size_t r0 = 0; r0 < (size_t)rows; r0 += chunk) {
        int nr = (int)((size_t)rows - r0 < chunk ? (size_t)rows - r0 : chunk);
        const char *xr = (const char *)x + r0 * row_bytes;
        if ((rc = MOEQ_CU(moeq_k_scale_rows(xr, dtype == MOEQ_CUDA_BF16, w + r0, nr, n,
                                            scaled.ptr, ctx->stream))) ||
            (rc = gemm_at_b(ctx, H, xr, scaled.ptr, dtype, nr, n, alpha, err)))
            goto done;
    }
    rc = MOEQ_CU(moeq_k_mirror_upper(H, n, ctx->stream));
done:
    /* The frees wait for the device, so the scratch outlives its GEMMs. */
    moeq_cuda_free(ctx, &scaled);
    moeq_cuda_free(ctx, &bad);
    return rc;
}
