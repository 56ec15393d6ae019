/* cuda_layer.c: checked launchers of kernels/layer.cu. */
#include "backend/cuda/cuda_layer.h"

#include "kernels.h"

moeq_code moeq_cuda_rmsnorm(moeq_cuda_ctx *ctx, const float *x, const float *w, int rows, int dim,
                            float eps, float *y, moeq_error *err)
{
    return MOEQ_CU(moeq_k_rmsnorm(x, w, rows, dim, eps, y, ctx->stream));
}

moeq_code moeq_cuda_silu_mul(moeq_cuda_ctx *ctx, const float *gate, const float *up, size_t n,
                             float *out, moeq_error *err)
{
    return MOEQ_CU(moeq_k_silu_mul(gate, up, n, out, ctx->stream));
}

moeq_code moeq_cuda_attention_causal_bf16(moeq_cuda_ctx *ctx, const void *q, const void *k,
                                          const void *v, int T, int Hq, int Hkv, int D,
                                          int Dv, float scale, int sliding_window,
                                          const float *sinks, float *scores, void *probs,
                                          void *out, moeq_error *err)
{
    if (T <= 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || Dv <= 0 || Hq % Hkv || sliding_window < 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "attention: bad shape T=%d Hq=%d Hkv=%d D=%d Dv=%d window=%d (Hq a "
                         "multiple of Hkv)",
                         T, Hq, Hkv, D, Dv, sliding_window);
    const int group = Hq / Hkv, qdim = Hq * D, kdim = Hkv * D, vdim = Hkv * Dv, odim = Hq * Dv;
    const long long TT = (long long)T * T;
    const float zero = 0.0f, one = 1.0f;
    moeq_code rc = MOEQ_OK;
    /* Query head h = j * group + r reads kv head j: for each r, one batch
     * over j. Row-major scores of head h, [query, key], are the
     * column-major k q^T. */
    for (int r = 0; r < group && !rc; r++)
        rc = MOEQ_CUBLAS(cublasGemmStridedBatchedEx(
            ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, D, &scale, k, CUDA_R_16BF, kdim, D,
            (const uint16_t *)q + (size_t)r * D, CUDA_R_16BF, qdim, (long long)group * D, &zero,
            scores + (size_t)r * TT, CUDA_R_32F, T, group * TT, Hkv, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT));
    if (!rc)
        rc = MOEQ_CU(moeq_k_causal_softmax_bf16(scores, T, (long long)Hq * T, sliding_window,
                                                sinks, probs, ctx->stream));
    /* Row-major O_h [T, Dv] = P_h V_j is the column-major V_j^T P_h^T. */
    for (int r = 0; r < group && !rc; r++)
        rc = MOEQ_CUBLAS(cublasGemmStridedBatchedEx(
            ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, Dv, T, T, &one, v, CUDA_R_16BF, vdim, Dv,
            (const uint16_t *)probs + (size_t)r * TT, CUDA_R_16BF, T, group * TT, &zero,
            (uint16_t *)out + (size_t)r * Dv, CUDA_R_16BF, odim, (long long)group * Dv, Hkv,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return rc;
}

moeq_code moeq_cuda_attention_chunked_bf16(moeq_cuda_ctx *ctx, const void *q, const void *k,
                                           const void *v, int T, int chunk, int Hq, int Hkv,
                                           int D, int Dv, float scale, int sliding_window,
                                           const float *sinks, float *scores, void *probs,
                                           void *out, moeq_error *err)
{
    const size_t qdim = (size_t)Hq * D, kdim = (size_t)Hkv * D, vdim = (size_t)Hkv * Dv,
                 odim = (size_t)Hq * Dv;
    if (chunk <= 0 || chunk > T)
        chunk = T;
    moeq_code rc = MOEQ_OK;
    for (int c0 = 0; c0 < T && !rc; c0 += chunk) {
        const int len = T - c0 < chunk ? T - c0 : chunk;
        rc = moeq_cuda_attention_causal_bf16(
            ctx, (const uint16_t *)q + c0 * qdim, (const uint16_t *)k + c0 * kdim,
            (const uint16_t *)v + c0 * vdim, len, Hq, Hkv, D, Dv, scale, sliding_window, sinks,
            scores, probs, (uint16_t *)out + c0 * odim, err);
    }
    return rc;
}
