/* cpu_ops.h: the CPU reference operations of a decoder layer, fp32 and
 * row-major, written to reproduce transformers' fp32 forward (the golden
 * tests compare to ~1e-4 relative) and to be the yardstick the CUDA kernels
 * are tested against. Plain C, with OpenBLAS for the matrix products.
 *
 * Files: cpu_linear.c (linear), cpu_hessian.c (GPTQ Hessians), cpu_norm.c
 * (RMSNorm), cpu_act.c (softmax, sigmoid, SwiGLU), cpu_rope.c (rotary
 * embedding), cpu_attention.c (causal attention), cpu_router.c (MoE top-k).
 *
 * Sizes are element counts. Pure kernels on valid sizes return void; those
 * that allocate scratch or check their inputs return a moeq_code. */
#ifndef MOEQ_BACKEND_CPU_OPS_H
#define MOEQ_BACKEND_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "moeq/moeq.h"

/* ---- linear algebra */

/* y[rows, out] = x[rows, in] w^T + bias, with w[out, in] as nn.Linear stores
 * it and bias[out] or NULL. y must not alias x or w. */
void cpu_linear(const float *x, int rows, int in, const float *w, const float *bias, int out,
                float *y);

/* H[n, n] += alpha * x^T x for x[rows, n]: the GPTQ Hessian update. Reads only
 * the upper triangle of H (so H must be symmetric on entry) and leaves the
 * whole symmetric matrix valid. */
void cpu_hessian_accumulate(float *H, const float *x, int rows, int n, float alpha);

/* H += alpha * x^T diag(w) x, each row of x weighted by w[rows] >= 0 (router
 * probabilities, token masks). Same triangle contract as above.
 * MOEQ_ERR_INVALID_ARG for a negative or non-finite weight, MOEQ_ERR_OOM. */
moeq_code cpu_hessian_accumulate_weighted(float *H, const float *x, const float *w, int rows,
                                          int n, float alpha, moeq_error *err);

/* ---- normalisation and activations (x and y may alias in each) */

/* RMSNorm as LlamaRMSNorm / Qwen RMSNorm in fp32: y = w * (x * rsqrt(mean(x^2)
 * + eps)), row by row over dim; also the per-head q/k norm of Qwen3 with
 * rows = tokens * heads and dim = head_dim. */
void cpu_rmsnorm(const float *x, const float *w, int rows, int dim, float eps, float *y);

/* Softmax of each row of x[rows, cols] in fp32 with the row maximum
 * subtracted first. */
void cpu_softmax_rows(const float *x, int rows, int cols, float *y);

/* y = 1 / (1 + exp(-x)), elementwise over n. */
void cpu_sigmoid(const float *x, size_t n, float *y);

/* SwiGLU gating: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) as torch
 * computes it. out may alias gate or up. */
void cpu_silu_mul(const float *gate, const float *up, size_t n, float *out);

/* gpt-oss's clamped SwiGLU (transformers GptOssExperts._apply_gate), in
 * fp32: g = min(gate, limit), u = clamp(up, -limit, limit),
 * out = g * sigmoid(alpha * g) * (u + 1). out may alias gate or up. */
void cpu_swiglu_clamped(const float *gate, const float *up, size_t n, float alpha, float limit,
                        float *out);

/* ---- attention */

/* Rotates x[tokens, heads, head_dim] in place by RoPE at positions[tokens]:
 * angle_i = (float)position * inv_freq[i] in fp32, cos and sin of it times
 * attention_factor (transformers' attention_scaling). Only the first
 * rotary_dim dims of each head turn (partial rotary); the rest stay as they
 * are. interleaved == 0: rotate_half (GPT-NeoX) pairs (i, i + rotary_dim/2),
 * as Llama, Qwen, Mixtral, GLM-4.5; interleaved == 1: adjacent pairs
 * (2i, 2i + 1), as GPT-J and GLM-4. inv_freq has rotary_dim / 2 entries
 * (model/rope.h computes it). transformers' DeepSeek-V3 de-interleaves q and
 * k into rotate_half order before rotating, so its rotated q and k are this
 * interleaved result permuted the same way for both; q k^T is unchanged. */
void cpu_rope_apply(float *x, int tokens, int heads, int head_dim, int rotary_dim,
                    const int32_t *positions, const float *inv_freq, float attention_factor,
                    int interleaved);

/* Causal self-attention of one sequence of T tokens (eager attention in
 * transformers): for query head h and its kv head h / (Hq / Hkv),
 * out = softmax(scale * q k^T + causal mask) v in fp32, the max subtracted.
 * q[T, Hq, D], k[T, Hkv, D], v[T, Hkv, Dv], out[T, Hq, Dv]; Hq a multiple
 * of Hkv. sliding_window > 0 lets query i see keys j with i - j <
 * sliding_window (transformers' sliding_window_overlay); 0 sees all j <= i.
 * sinks[Hq] or NULL: gpt-oss per-head sink logits, which join the softmax
 * (max and denominator) but carry no value. MOEQ_ERR_INVALID_ARG, MOEQ_ERR_OOM. */
moeq_code cpu_attention_causal(const float *q, const float *k, const float *v, int T, int Hq,
                               int Hkv, int D, int Dv, float scale, int sliding_window,
                               const float *sinks, float *out, moeq_error *err);

/* ---- MoE routing */

typedef enum cpu_router_scoring {
    /* softmax over all experts in fp32, top-k of the probabilities
     * (Mixtral, Qwen2-MoE, Qwen3-MoE); with n_group > 1 within the
     * topk_group groups of highest maximum probability (DeepSeek-V2's
     * group_limited_greedy). */
    CPU_ROUTER_SOFTMAX,
    /* sigmoid of each logit; experts chosen by sigmoid + e_score_correction_bias
     * within the topk_group best of n_group groups (a group's score is the sum
     * of its two best biased scores), weighted by the unbiased sigmoid
     * (DeepSeek-V3, GLM-4.5: noaux_tc). */
    CPU_ROUTER_SIGMOID,
} cpu_router_scoring;

typedef struct cpu_router_params {
    cpu_router_scoring scoring;
    int top_k;
    /* Divide the k weights by their sum (Mixtral always; Qwen3-MoE true,
     * Qwen2-MoE false by default). Sigmoid scoring adds 1e-20 to the sum,
     * as DeepSeek-V3 does. */
    int norm_topk_prob;
    const float *e_score_correction_bias; /* [E] or NULL; sigmoid only, for selection only */
    int n_group;                          /* 0 or 1 = no group limit */
    int topk_group;                       /* groups kept when n_group > 1 */
    float routed_scaling_factor;          /* multiplies the final weights; 0 = 1 */
} cpu_router_params;

/* Picks top_k experts per token from logits[T, E] (the router's linear
 * output) and their weights, in descending order of the selection score;
 * equal scores go to the lower expert index (torch.topk leaves ties in an
 * unspecified order). weights[T, top_k], experts[T, top_k].
 * MOEQ_ERR_INVALID_ARG for inconsistent sizes or groups. */
moeq_code cpu_router_topk(const float *logits, int T, int E, const cpu_router_params *p,
                          float *weights, int32_t *experts, moeq_error *err);

#endif
