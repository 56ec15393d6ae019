/* cuda_layer.h: the decoder-layer ops of backend/cpu/cpu_ops.h on the GPU,
 * fp32, device pointers, queued on ctx->stream. Each rounds as its CPU
 * counterpart; the parity test states the remaining difference. */
#ifndef MOEQ_BACKEND_CUDA_LAYER_H
#define MOEQ_BACKEND_CUDA_LAYER_H

#include "backend/cuda/cuda_ctx.h"

/* As cpu_rmsnorm (x and y may alias). */
moeq_code moeq_cuda_rmsnorm(moeq_cuda_ctx *ctx, const float *x, const float *w, int rows, int dim,
                            float eps, float *y, moeq_error *err);
/* As cpu_silu_mul (out may alias gate or up). */
moeq_code moeq_cuda_silu_mul(moeq_cuda_ctx *ctx, const float *gate, const float *up, size_t n,
                             float *out, moeq_error *err);

#endif
