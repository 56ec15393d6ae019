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
