/* kernels.h: the C interface of the CUDA kernels under kernels/. Each
 * launcher queues its kernel on stream and returns the launch status
 * (cudaGetLastError); errors inside a kernel surface at the next sync. The
 * host glue in src/backend/cuda checks every status. Matrices are row-major,
 * sizes are element counts; kernels know nothing of models. */
#ifndef MOEQ_KERNELS_H
#define MOEQ_KERNELS_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- util.cu */

/* *count += number of NaN/Inf among x[0..n). */
cudaError_t moeq_k_count_nonfinite(const float *x, size_t n, int *count, cudaStream_t stream);
/* Row-major H[n, n]: H[i][j] = H[j][i] for i > j (upper triangle copied down). */
cudaError_t moeq_k_mirror_upper(float *H, int n, cudaStream_t stream);
/* Row-major A[n, n]: A[i][j] = 0 for i > j. */
cudaError_t moeq_k_zero_lower(float *A, int n, cudaStream_t stream);

/* ---- hessian.cu */

/* y[r, :] = w[r] * x[r, :] for x, y [rows, n] in bf16 (is_bf16) or fp32;
 * y[r] is computed in fp32 and rounded once. */
cudaError_t moeq_k_scale_rows(const void *x, int is_bf16, const float *w, int rows, int n, void *y,
                              cudaStream_t stream);
/* *bad += number of weights that are negative or not finite. */
cudaError_t moeq_k_count_bad_weights(const float *w, int rows, int *bad, cudaStream_t stream);

/* ---- gptq_prepare.cu */

/* diag[i] = H[i][i]. */
cudaError_t moeq_k_diag(const float *H, int n, float *diag, cudaStream_t stream);
/* work[i][j] = H[perm[i]][perm[j]], with a dead column's row and column zero
 * and its diagonal 1 (as moeq_gptq_prepare). */
cudaError_t moeq_k_gptq_permute_hessian(const float *H, int n, const int32_t *perm,
                                        const uint8_t *dead, float *work, cudaStream_t stream);
/* dst = src + lambda I, both [n, n]. */
cudaError_t moeq_k_copy_add_diag(const float *src, int n, float lambda, float *dst,
                                 cudaStream_t stream);

/* ---- gptq_sweep.cu */

/* The grid of src/quant/grid.h, and what one sweep needs to know. */
typedef struct moeq_k_gptq_args {
    int rows, cols;
    int bits, sym;
    int group_size;     /* -1: one group per row */
    int static_groups;  /* groups of perm[i] / group_size, fitted before the sweep */
    float mse;          /* > 0: grids by the clipping search of src/quant/grid.h */
    int scale_bf16;     /* scales exact in bf16 as well as fp16 (grid.h) */
    int block_size;     /* lazy-update block, at most MOEQ_K_GPTQ_MAX_BLOCK */
    const int32_t *perm;/* [segments, cols] processing order -> original column */
    const uint8_t *dead;/* [segments, cols] */
    const float *hinv;  /* [segments, cols, cols] upper Cholesky factor of H^-1, permuted */
    int seg_rows;       /* rows per segment (one Hessian each), a multiple of 16; 0: one
                         * segment of all rows */
    float *w;           /* [rows, cols] weights in processing order, updated */
    float *err_block;   /* [rows, block_size] scaled errors of the current block */
    uint8_t *codes_perm;/* [rows, cols] codes in processing order */
    float *scales;      /* [n_groups, rows] */
    int32_t *zeros;     /* [n_groups, rows] */
    double *loss_rows;  /* [rows] running GPTQ loss of each row */
} moeq_k_gptq_args;

enum { MOEQ_K_GPTQ_MAX_BLOCK = 128, MOEQ_K_GPTQ_SEG_ROWS_MULTIPLE = 16 };
/* The clipping search's candidates, as MOEQ_GRID_MSE_GRID/STEPS of
 * src/quant/grid.h (cuda_gptq.c checks that they agree). */
enum { MOEQ_K_GRID_MSE_GRID = 100, MOEQ_K_GRID_MSE_STEPS = 80 };

/* w[r][i] = W[r][perm[i]], 0 for dead columns; *nonfinite += NaN/Inf seen. */
cudaError_t moeq_k_gptq_gather(const float *W, const moeq_k_gptq_args *a, int *nonfinite,
                               cudaStream_t stream);
/* Static groups: every (group, row) grid fitted on W in natural order. */
cudaError_t moeq_k_gptq_fit_static(const float *W, const moeq_k_gptq_args *a,
                                   cudaStream_t stream);
/* Sweeps columns [i1, i1 + nb) of every row: group fits at group starts,
 * codes, error feedback inside the block, scaled errors to err_block. The
 * rest of w is left to the caller's GEMM. */
cudaError_t moeq_k_gptq_sweep_block(const moeq_k_gptq_args *a, int i1, int nb,
                                    cudaStream_t stream);
/* codes[r][perm[i]] = codes_perm[r][i]. */
cudaError_t moeq_k_gptq_scatter_codes(const moeq_k_gptq_args *a, uint8_t *codes,
                                      cudaStream_t stream);

/* ---- layer.cu: the elementwise and row ops of a decoder layer (fp32) */

/* As cpu_rmsnorm: y = w * (x * rsqrt(mean(x^2) + eps)) row by row; w NULL:
 * no weight (cpu_rmsnorm with w = 1, Llama-4's q/k L2 norm). */
cudaError_t moeq_k_rmsnorm(const float *x, const float *w, int rows, int dim, float eps, float *y,
                           cudaStream_t stream);
/* moeq_k_rmsnorm with the output rounded once to bf16. */
cudaError_t moeq_k_rmsnorm_bf16(const float *x, const float *w, int rows, int dim, float eps,
                                uint16_t *y, cudaStream_t stream);
/* As cpu_silu_mul: out = gate / (1 + exp(-gate)) * up. */
cudaError_t moeq_k_silu_mul(const float *gate, const float *up, size_t n, float *out,
                            cudaStream_t stream);


/* ---- pipeline.cu: the GPU layer loop's kernels besides GEMMs. bf16 values
 * travel as their uint16_t bits. */

/* y = bf16(x), round to nearest even. */
cudaError_t moeq_k_to_bf16(const float *x, size_t n, uint16_t *y, cudaStream_t stream);
/* y = x widened to fp32 (exact). */
cudaError_t moeq_k_bf16_to_f32(const uint16_t *x, size_t n, float *y, cudaStream_t stream);
/* cpu_rope_apply in place on x[tokens, heads, head_dim], token t at position
 * t % seq_len (windows of seq_len tokens each start at 0). */
cudaError_t moeq_k_rope(float *x, int tokens, int heads, int head_dim, int rotary_dim,
                        int seq_len, const float *inv_freq, float attention_factor,
                        int interleaved, cudaStream_t stream);
/* rows score rows of [T, T] blocks (row r is query i = r % T of head
 * r / T): p = softmax over the keys i sees, j <= i and, with window > 0,
 * i - j < window; 0 for the others; in bf16. sinks [rows / T] (device) or
 * NULL: per-head sink logits that join the softmax's max and sum but carry
 * no value (gpt-oss; cpu_attention_causal). cudaErrorInvalidValue for a
 * negative window. */
cudaError_t moeq_k_causal_softmax_bf16(const float *scores, int T, long long rows, int window,
                                       const float *sinks, uint16_t *p, cudaStream_t stream);
/* The routing of cpu_router_topk (src/backend/cpu/cpu_ops.h says what each
 * field does there). */
typedef struct moeq_k_router_args {
    int n, E, k;
    int sigmoid;                  /* 0: softmax scores; 1: sigmoid scores */
    int norm_topk;                /* divide the k weights by their sum */
    const float *correction_bias; /* [E] (device) or NULL; sigmoid, selection only */
    int n_group, topk_group;      /* n_group > 1: experts from the topk_group best groups */
    float scaling;                /* routed_scaling_factor: multiplies the final weights */
} moeq_k_router_args;

enum { MOEQ_K_ROUTER_MAX_GROUPS = 64 };

/* Top-k routing of logits[n, E] as cpu_router_topk (ties to the lower
 * expert and group): topw/tope [n, k]; probs_t [E, n] (the scores, softmax
 * or sigmoid without the bias, expert by expert) unless NULL.
 * cudaErrorInvalidValue for sizes or groups cpu_router_topk refuses, or
 * more than MOEQ_K_ROUTER_MAX_GROUPS groups. */
cudaError_t moeq_k_router_topk(const float *logits, const moeq_k_router_args *a, float *probs_t,
                               float *topw, int32_t *tope, cudaStream_t stream);
/* y[i, :] = x[idx[i], :] for i < m (bf16 rows of dim). */
cudaError_t moeq_k_gather_rows_bf16(const uint16_t *x, int dim, const int32_t *idx, int m,
                                    uint16_t *y, cudaStream_t stream);
/* out[idx[i], :] += w[i] * y[i, :] (w NULL: 1). idx must not repeat. */
cudaError_t moeq_k_scatter_add_rows(const float *y, int dim, const int32_t *idx, const float *w,
                                    int m, float *out, cudaStream_t stream);
/* out += sigmoid(gate_logit[r]) * y row by row (gate_logit NULL: out += y). */
cudaError_t moeq_k_gated_add(const float *y, const float *gate_logit, int m, int dim, float *out,
                             cudaStream_t stream);
/* a[m, inter] = bf16(act(g, u)) for gate_up[m, 2 inter] = [g | u]: limit 0,
 * silu(g) * u (cpu_silu_mul); limit > 0, gpt-oss's clamped SwiGLU with alpha
 * (cpu_swiglu_clamped). */
cudaError_t moeq_k_swiglu_bf16(const float *gate_up, int m, int inter, float alpha, float limit,
                               uint16_t *a, cudaStream_t stream);
/* q [rows, D] and gate [rows, D] from qg [rows, 2 D], each row a head's
 * query then its gate (the q_proj of output-gated attention,
 * Qwen3NextAttention). */
cudaError_t moeq_k_split_query_gate(const float *qg, long long rows, int D, float *q, float *gate,
                                    cudaStream_t stream);
/* o = bf16(o * sigmoid(gate)) elementwise over n values (bf16 o). */
cudaError_t moeq_k_sigmoid_gate_bf16(uint16_t *o, const float *gate, size_t n,
                                     cudaStream_t stream);
/* y[r, c] += bias[c]. */
cudaError_t moeq_k_add_bias(float *y, int rows, int cols, const float *bias,
                            cudaStream_t stream);
/* w[r, c] = bf16(scales[g, r] * (codes[r, c] - zeros[g, r])),
 * g = g_idx[r / seg_rows][c] (g_idx [rows / seg_rows, cols]; seg_rows 0:
 * one g_idx for all rows). */
cudaError_t moeq_k_dequant_bf16(const uint8_t *codes, const float *scales, const int32_t *zeros,
                                const int32_t *g_idx, int seg_rows, int rows, int cols,
                                uint16_t *w, cudaStream_t stream);

/* ---- deltanet.cu: the Gated DeltaNet token mixer (src/model/deltanet.c) */

/* proj [tokens, C + vd] and pba [tokens, 2 Hv] (C = 2 Hk Dk + Hv Dv, vd =
 * Hv Dv) into qkv [tokens, C] (the conv channels [q | k | v]), z [tokens,
 * vd], b and a [tokens, Hv]. fused: the per-key-head-group layout of
 * Qwen3-Next's in_proj_qkvz and in_proj_ba; else the parts in that order.
 * cudaErrorInvalidValue unless Hk divides Hv. */
cudaError_t moeq_k_deltanet_unpack(const float *proj, const float *pba, int tokens, int Hk,
                                   int Hv, int Dk, int Dv, int fused, float *qkv, float *z,
                                   float *b, float *a, cudaStream_t stream);
/* y [tokens, C] = silu(causal depthwise conv of x [tokens, C] with w [C, K])
 * within windows of T tokens (tokens a multiple of T; zeros before a
 * window's start). */
cudaError_t moeq_k_causal_conv_silu(const float *x, const float *w, int T, int tokens, int C,
                                    int K, float *y, cudaStream_t stream);
/* In place, each vector of dim at x + t ld + h dim (t < tokens, h < heads):
 * v / sqrt(sum v^2 + 1e-6) * scale. */
cudaError_t moeq_k_l2norm_heads(float *x, int tokens, int heads, int dim, int ld, float scale,
                                cudaStream_t stream);
/* In place over [tokens, Hv]: b = sigmoid(b) (the write strength beta) and
 * a = -exp(a_log[h]) softplus(a + dt_bias[h]) (the log decay g). */
cudaError_t moeq_k_deltanet_gates(float *b, float *a, const float *a_log, const float *dt_bias,
                                  int tokens, int Hv, cudaStream_t stream);

enum { MOEQ_K_DELTA_MAX_DK = 128, MOEQ_K_DELTA_MAX_DV = 128 };

/* The gated delta rule over seqs sequences of T tokens (moeq_delta_inputs of
 * src/model/deltanet.h): q, k [tokens, Hk, Dk] at row stride ld_qk, v
 * [tokens, Hv, Dv] at row stride ld_v, g and beta [tokens, Hv], value head
 * h reading key head h / (Hv / Hk); out [tokens, Hv, Dv]. */
typedef struct moeq_k_delta_args {
    const float *q, *k, *v;
    int ld_qk, ld_v;
    const float *g, *beta;
    int seqs, T, Hk, Hv, Dk, Dv;
    float *out;
} moeq_k_delta_args;

/* The recurrence, one (sequence, value head) per block, the state in
 * registers. cudaErrorInvalidValue for Dk over MOEQ_K_DELTA_MAX_DK, Dv
 * over MOEQ_K_DELTA_MAX_DV, Hk not dividing Hv or over 65535 sequences. */
cudaError_t moeq_k_delta_rule(const moeq_k_delta_args *a, cudaStream_t stream);
/* y = bf16(rmsnorm(x) * w * silu(z)) row by row over x, z [rows, dim] (the
 * gated RMSNorm of the core output, Qwen3NextRMSNormGated). */
cudaError_t moeq_k_gated_rmsnorm_bf16(const float *x, const float *z, const float *w,
                                      long long rows, int dim, float eps, uint16_t *y,
                                      cudaStream_t stream);

/* ---- awq.cu: AWQ (src/quant/awq.h) */

/* The grid settings of src/quant/gptq.h's config that AWQ rounds with. */
typedef struct moeq_k_awq_grid {
    int bits, sym, scale_bf16;
    int group_size; /* -1: one group per row */
} moeq_k_awq_grid;

/* The clipping search's candidates, as MOEQ_AWQ_CLIP_GRID/STEPS of
 * src/quant/awq.h (awq_cuda.c checks that they agree); sums over rows run
 * in MOEQ_K_AWQ_PARTS parts, then over the parts in order. */
enum { MOEQ_K_AWQ_CLIP_GRID = 100, MOEQ_K_AWQ_CLIP_STEPS = 80, MOEQ_K_AWQ_PARTS = 64 };

/* out = Q(W diag(s)) diag(s)^-1 as moeq_awq_pseudo_quantize, bit for bit:
 * W [rows, cols] in bf16 (w_bf16) or fp32, s [cols] (NULL: 1), min/max
 * grids per row and group; out in bf16 (out_bf16, rounded once) or fp32.
 * cudaErrorInvalidValue when the group size does not divide cols. */
cudaError_t moeq_k_awq_fake_quant(const void *w, int w_bf16, int rows, int cols, const float *s,
                                  const moeq_k_awq_grid *q, void *out, int out_bf16,
                                  cudaStream_t stream);
/* moeq_awq_quantize of W [rows, cols] (fp32, already scaled) against H
 * [cols, cols] (NULL: plain min/max grids): codes [rows, cols], scales and
 * zeros at [g * grid_ld + r], row_loss[r] = the row's sum of e^T H_gg e
 * over its groups (H e in fp32, the rest in double, in another order than
 * the CPU's all-double sums: a near-tie may pick another candidate). */
cudaError_t moeq_k_awq_clip_quantize(const float *W, int rows, int cols, const float *H,
                                     const moeq_k_awq_grid *q, uint8_t *codes, float *scales,
                                     int32_t *zeros, int grid_ld, double *row_loss,
                                     cudaStream_t stream);
/* acc[j] += sum_i w[i] |x[idx[i]][j]| over i < rows (bf16 x with row
 * stride ld; idx NULL: row i; w NULL: 1), as moeq_awq_act_abs_sum;
 * partial: [MOEQ_K_AWQ_PARTS, cols] scratch. */
cudaError_t moeq_k_awq_act_abs_sum(const uint16_t *x, int ld, const int32_t *idx, const float *w,
                                   int rows, int cols, double *partial, double *acc,
                                   cudaStream_t stream);
/* *total += sum_r w[r] sum_c (y[r][c] - ref[r][c])^2 (w NULL: 1) over
 * fp32 y, ref [rows, cols]; partial: [MOEQ_K_AWQ_PARTS] scratch. */
cudaError_t moeq_k_awq_sq_error(const float *y, const float *ref, int rows, int cols,
                                const float *w, double *partial, double *total,
                                cudaStream_t stream);

/* ---- mla.cu: multi-head latent attention */

/* From kv [tokens, heads, nope + vd] (kv_b_proj's output: [k_nope | v] per
 * head) and k_rot [tokens, rot] (the rope part of the key, shared by all
 * heads): k [tokens, heads, nope + rot] = bf16([k_nope | k_rot]) and v
 * [tokens, heads, vd] = bf16(v), each value rounded once.
 * cudaErrorInvalidValue for a negative size. */
cudaError_t moeq_k_mla_split_kv_bf16(const float *kv, const float *k_rot, int tokens, int heads,
                                     int nope, int rot, int vd, uint16_t *k, uint16_t *v,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
