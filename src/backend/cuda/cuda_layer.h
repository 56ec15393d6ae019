/* cuda_layer.h: the decoder-layer ops of backend/cpu/cpu_ops.h on the GPU,
 * fp32, device pointers, queued on ctx->stream. Each rounds as its CPU
 * counterpart; the parity test states the remaining difference. */
#ifndef MOEQ_BACKEND_CUDA_LAYER_H
#define MOEQ_BACKEND_CUDA_LAYER_H

#include "backend/cuda/cuda_ctx.h"

/* As cpu_rmsnorm (x and y may alias); w NULL: a weight of ones. */
moeq_code moeq_cuda_rmsnorm(moeq_cuda_ctx *ctx, const float *x, const float *w, int rows, int dim,
                            float eps, float *y, moeq_error *err);
/* As cpu_silu_mul (out may alias gate or up). */
moeq_code moeq_cuda_silu_mul(moeq_cuda_ctx *ctx, const float *gate, const float *up, size_t n,
                             float *out, moeq_error *err);

/* Causal softmax attention of one sequence as cpu_attention_causal with
 * bf16 q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv] and out [T, Hq, Dv]
 * (Dv = D but for MLA, whose q/k heads are qk_nope + qk_rope wide and its
 * v heads v_head_dim): scores = scale q k^T per head as batched cuBLAS
 * GEMMs (fp32 accumulate, fp32 scores), a causal softmax (within
 * sliding_window > 0; with the sink logits sinks [Hq], device, unless
 * NULL) to bf16 probabilities, then P v with fp32 accumulation, rounded to
 * bf16. Scratch: scores [Hq, T, T] fp32 and probs [Hq, T, T] bf16. Hq must
 * be a multiple of Hkv. */
moeq_code moeq_cuda_attention_causal_bf16(moeq_cuda_ctx *ctx, const void *q, const void *k,
                                          const void *v, int T, int Hq, int Hkv, int D,
                                          int Dv, float scale, int sliding_window,
                                          const float *sinks, float *scores, void *probs,
                                          void *out, moeq_error *err);

/* Chunked attention (Llama-4's chunked_attention layers; cpu_attention_causal
 * on each chunk, as gqa_attention in forward.c): the T tokens split into
 * consecutive chunks of chunk tokens (the last one shorter), each token
 * attending causally within its own chunk only. The work outside the
 * chunks is skipped, not masked: each chunk is its own
 * moeq_cuda_attention_causal_bf16 on its rows of q, k, v and out, so the
 * scratch is [Hq, C, C] for C = min(chunk, T). chunk <= 0: one chunk of T. */
moeq_code moeq_cuda_attention_chunked_bf16(moeq_cuda_ctx *ctx, const void *q, const void *k,
                                           const void *v, int T, int chunk, int Hq, int Hkv,
                                           int D, int Dv, float scale, int sliding_window,
                                           const float *sinks, float *scores, void *probs,
                                           void *out, moeq_error *err);

#endif
