/* layer_cuda.h: what the stage files of the CUDA layer loop share (the
 * loop itself is quantize_cuda.c): the run on one device, one layer's
 * results and stage timing, and the helpers every stage uses to upload
 * weights, run GEMMs, accumulate and prepare Hessians and quantize a stack
 * of linears. Internal to src/pipeline; built only with the CUDA backend. */
#ifndef MOEQ_PIPELINE_LAYER_CUDA_H
#define MOEQ_PIPELINE_LAYER_CUDA_H

#include "pipeline/quantize.h"

#include "backend/cuda/cuda_comm.h"
#include "backend/cuda/cuda_ctx.h"
#include "backend/cuda/cuda_gptq.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/weights.h"

#include <stddef.h>
#include <stdint.h>

/* The GPUs of a run (defined in quantize_cuda.c). */
typedef struct team team;

/* The run on one device: its context, sizes and the activations that live
 * across layers (the primary, rank 0), or what a layer's experts need (a
 * peer: x is the block accumulator of its experts, h the broadcast normed
 * input, both during the MLP stage only). */
typedef struct gpu_run {
    moeq_cuda_ctx cu;
    const moeq_model *model;
    int rank;
    team *team;
    int forward_only; /* the model's own weights, nothing quantized (eval) */
    const moeq_config *cfg;
    const moeq_quantize_options *opt;
    int S, T, n;     /* windows, tokens per window, tokens */
    int chunk;       /* tokens per chunk of transient expert products */
    int qdim, kvdim;
    /* The residual stream before (x) and after (x1) attention: on the
     * device, or, when --vram-budget cannot hold them (resid_host), in
     * pinned host memory (xh, x1h), streamed through stage a chunk of
     * tokens at a time. acc: the MLP block's accumulator (x itself on the
     * device; its own buffer, during the MLP stage only, otherwise). */
    moeq_cuda_buf x, x1, h, o;
    int resid_host;
    float *xh, *x1h;
    moeq_cuda_buf stage, acc;
    moeq_cuda_buf inv_freq;
    float attention_factor;
    int rotary_dim;
    /* The codes of GPTQ results land in pinned host memory, one buffer per
     * layer parity (the writer may still pack the previous layer's): no
     * pageable copy and no page faults on the critical path. */
    uint8_t *codes_host[2];
    size_t codes_host_bytes[2];
    uint8_t *codes_next, *codes_end; /* the current layer's unused part */
} gpu_run;

/* One layer's results and the timing of its stages. */
typedef struct gpu_layer {
    gpu_run *g;
    moeq_layer_result *res;
    int cap;
    double t_stage;
    struct gpu_awq *awq; /* AWQ: the layer's scales and routing (awq_cuda.c) */
} gpu_layer;

/* A piece of a stacked sweep: rows of one linear, all with the same cols. */
typedef struct piece {
    moeq_tensor_role role;
    int expert;
    const float *w; /* host fp32 [rows, cols], or NULL and: */
    int rows;
    int64_t tokens; /* calibration tokens, for the report */
    int fallback;   /* routed mode: calibrated on all tokens */
    const uint16_t *w16; /* host bf16 [rows, cols] as the checkpoint stores it */
} piece;

/* The device bytes g's plans may fill: --vram-budget, or without one 15/16
 * of the device memory that was free when g's context was made (the rest
 * for what the libraries allocate themselves and the pool's fragments).
 * Expert groups and AWQ's resident weights are sized to it, so a model
 * whose experts do not all fit the device runs in groups instead of
 * failing. */
size_t gpu_memory_limit(const gpu_run *g);

/* Waits for L's device work and adds the time since the stage mark to
 * *bucket (the mark moves to now); with MOEQ_TRACE set, also to the call
 * site's total, which gpu_trace_flush prints after the layer. */
moeq_code gpu_sync_time_at(gpu_layer *L, double *bucket, const char *file, int line,
                           moeq_error *err);
#define gpu_sync_time(L, bucket, err) gpu_sync_time_at((L), (bucket), __FILE__, __LINE__, (err))

/* MOEQ_TRACE: the layer's synchronised steps by source line, slowest
 * first, to stderr; then the totals start again. Nothing without it. */
void gpu_trace_flush(int layer);

/* C[m, n] (ldc) = alpha A[m, k] (lda) B[n, k]^T (ldb) + beta C: row-major bf16
 * A and B, fp32 accumulation, C in fp32 or bf16. */
moeq_code gpu_gemm_nt(gpu_run *g, const void *A, int lda, const void *B, int ldb, void *C,
                      int ldc, int c_bf16, int m, int n, int k, float alpha, float beta,
                      moeq_error *err);

/* Host fp32 -> device fp32 or bf16, allocated into *buf (host NULL: *buf
 * stays empty); _into: into existing device memory. */
moeq_code gpu_upload_f32(gpu_run *g, const float *host, size_t count, const char *what,
                         moeq_cuda_buf *buf, moeq_error *err);
moeq_code gpu_upload_bf16_into(gpu_run *g, const float *host, size_t count, uint16_t *dst,
                               moeq_error *err);
moeq_code gpu_upload_bf16(gpu_run *g, const float *host, size_t count, const char *what,
                          moeq_cuda_buf *buf, moeq_error *err);

/* A new, zeroed result in L's layer. */
moeq_quantized_linear *gpu_new_linear(gpu_layer *L, moeq_error *err);

/* Quantizes pieces stacked row-wise [sum rows, cols] against prep (GPTQ;
 * NULL: RTN), or piece i against seg_preps[i]; one result per piece; the
 * dequantized stack stays in bf16 in *wq (device) for the forward. */
moeq_code gpu_quantize_stack(gpu_layer *L, const moeq_cuda_gptq_prepared *prep,
                             const moeq_cuda_gptq_prepared *const *seg_preps,
                             const piece *pieces, int n_pieces, int cols, moeq_cuda_buf *wq,
                             moeq_error *err);

/* After accumulating H (rc: how that went): prepares it for module into
 * prep, timing both steps; frees H. */
moeq_code gpu_finish_prepare(gpu_layer *L, moeq_cuda_buf *H, moeq_code rc, int cols,
                             const char *module, moeq_cuda_gptq_prepared *prep, moeq_error *err);

/* H = alpha x^T diag(w) x over bf16 x [rows, cols] (w NULL: plain), then
 * prepared for module. */
moeq_code gpu_hessian_prepare(gpu_layer *L, const void *x, int rows, int cols, const float *w,
                              float alpha, const char *module, moeq_cuda_gptq_prepared *prep,
                              moeq_error *err);

/* 1 when the run quantizes against the second moments of its linears'
 * inputs: GPTQ (Hessians, prepared and swept), and AWQ, whose clipping
 * search scores grids against the same matrices, unfactored (else RTN). */
int gpu_uses_hessians(const gpu_layer *L);

/* Prepares the count Hessians H (H_ptrs[i] = H[i].ptr) of cols columns into
 * preps, as moeq_cuda_gptq_prepare_many; AWQ: each H moves into its
 * preparation as it is (H[i] left empty). */
moeq_code gpu_prepare_many(gpu_layer *L, moeq_cuda_buf *H, const float *const *H_ptrs, int count,
                           int cols, moeq_cuda_gptq_prepared *preps, int *failed, moeq_error *err);

/* g->h = bf16(rmsnorm(r) * weight) for the residual stream r: dev on the
 * device, or host (pinned) through the stage. */
moeq_code gpu_norm_residual(gpu_run *g, const moeq_cuda_buf *dev, const float *host,
                            const float *weight, moeq_error *err);

/* x1 = x + o W^T (+ bias, NULL: none) from g->o [n, odim] bf16 and the
 * bf16 output projection w [H, odim]: the residual stream after a token
 * mixer, wherever the stream lives. */
moeq_code gpu_add_block_output(gpu_run *g, int odim, const uint16_t *w, const float *bias,
                               moeq_error *err);

/* The attention block of layer lw (per-head output gate when the config
 * has one): q/k/v and o_proj quantized from their inputs, then x1 = x +
 * attention(x) with the quantized weights. */
moeq_code gpu_attention_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err);

/* The Gated DeltaNet block of linear layer lw (deltanet_cuda.c): its
 * in_proj linears quantized from the normed input, out_proj from the
 * gated-norm output of the core computed with them, then x1 = x +
 * deltanet(x) with the quantized weights. */
moeq_code gpu_deltanet_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err);

/* What the attention of a layer reads besides its q/k/v weights (q/k
 * norms, q/k/v biases, sinks, the sliding window, Llama-4's RoPE choice,
 * L2 norm, temperatures and chunks, the output gate) and the scratch of
 * one window, on the device. */
typedef struct gpu_attn {
    moeq_cuda_buf qn, kn, bias[3], sinks, temp;
    moeq_cuda_buf qf, kf, vf, qb, kb, vb, sc, pb, qg, gf;
    int window, use_rope, l2_norm, chunk, gated;
} gpu_attn;

moeq_code gpu_attn_init(gpu_run *g, const moeq_layer_weights *lw, gpu_attn *a, moeq_error *err);
void gpu_attn_free(gpu_run *g, gpu_attn *a);

/* o [count T, Hq D] bf16 = the attention of windows [s0, s0 + count) of
 * the normed input g->h with the stacked q/k/v weights wqkv (bf16; q's
 * rows with their gates when gated), before o_proj. */
moeq_code gpu_attn_windows(gpu_run *g, gpu_attn *a, const uint16_t *wqkv, int s0, int count,
                           uint16_t *o, moeq_error *err);

/* ---- routing and expert products (quantize_cuda.c) */

/* The tokens of one expert: indices into the layer's tokens and the router
 * weights, on the host (built from the downloaded top-k) and the device. */
typedef struct routing {
    int E, k;
    int32_t *count;     /* [E] */
    int64_t *offset;    /* [E + 1] into idx / wts */
    int32_t *idx;       /* [n k] token ids, expert by expert, increasing */
    float *wts;         /* [n k] */
    int32_t *tope_host; /* [n, k] each token's experts, as the router ranks them */
    float *topw_host;   /* [n, k] and their weights */
    moeq_cuda_buf d_idx, d_wts, probs_t, logits, topw, tope;
} routing;

/* The routing of the normed input g->h by lw's router (probs_t [E, n]:
 * the router's scores, with weighted calibration only); sets the layer's
 * expert_tokens. */
moeq_code gpu_route(gpu_layer *L, const moeq_layer_weights *lw, routing *r, moeq_error *err);
void gpu_routing_free(gpu_run *g, routing *r);

/* Scratch of the expert products, sized for g->chunk tokens. */
typedef struct mlp_scratch {
    moeq_cuda_buf xs;  /* [chunk, H] bf16 gathered inputs */
    moeq_cuda_buf gu;  /* [chunk, 2 I] fp32 */
    moeq_cuda_buf a;   /* [chunk, I] bf16 */
    moeq_cuda_buf y;   /* [chunk, H] fp32 */
    moeq_cuda_buf gl;  /* [chunk] fp32 shared-expert gate logits */
} mlp_scratch;

moeq_code gpu_scratch_alloc(gpu_run *g, int inter, mlp_scratch *s, moeq_error *err);
void gpu_scratch_free(gpu_run *g, mlp_scratch *s);

/* The tokens an expert's products run over: all tokens (idx NULL) or the
 * listed ones, each row then multiplied by its scale (device, as idx; NULL:
 * none; Llama-4's routing weights); rows c0 .. c0 + m of them in bf16 at
 * *rows_out. */
moeq_code gpu_chunk_rows(gpu_run *g, mlp_scratch *s, const int32_t *idx, const float *scale,
                         int c0, int m, const uint16_t **rows_out, moeq_error *err);

/* s->a = bf16(act(x Wg^T + bg, x Wu^T + bu)) for chunk rows x, wgu [2I, H]
 * bf16, gu_bias [2 I] (device; NULL: none), act as moeq_mlp_gate: SwiGLU,
 * or gpt-oss's clamped one when the config has a swiglu_limit. */
moeq_code gpu_swiglu_chunk(gpu_run *g, mlp_scratch *s, const uint16_t *x, int m, int inter,
                           const uint16_t *wgu, const float *gu_bias, moeq_error *err);

/* acc[tokens] += weight * down(act(gate(h), up(h))) over the listed tokens
 * (d_idx NULL: all tokens, shared_gate: sigmoid-gated shared expert), each
 * linear with its bias when given (device; the down bias inside the
 * weighted sum, as mlp_forward and moe_forward of forward.c); Llama-4:
 * acc[tokens] += down(act(gate(weight * h), up(weight * h))). */
moeq_code gpu_mlp_forward(gpu_run *g, mlp_scratch *s, const uint16_t *wgu, const float *gu_bias,
                          const uint16_t *wd, const float *down_bias, int inter,
                          const int32_t *d_idx, const float *d_wts, int count,
                          const uint16_t *shared_gate, float *acc, moeq_error *err);

/* The MLP block's accumulator: x on the device, acc in host mode. */
float *gpu_block_acc(gpu_run *g);

/* ---- AWQ (awq_cuda.c): each runs before its stage, which then quantizes
 * with AWQ's clipping search (gpu_quantize_stack) */

/* Searches q/k/v's input scale on the attention block's output and folds
 * it into lw's input_layernorm and q/k/v (host). */
moeq_code gpu_awq_attention_scales(gpu_layer *L, moeq_layer_weights *lw, moeq_error *err);
/* Searches the MLP block's shared gate/up scale (folded into
 * post_attention_layernorm, the router compensated) and each down_proj's
 * (folded into its up_proj), on lw's weights (host). */
moeq_code gpu_awq_mlp_scales(gpu_layer *L, moeq_layer_weights *lw, moeq_error *err);
/* The stage's routing r against the one before the scaling: the layer's
 * routing_changes (0: the router was compensated exactly). */
void gpu_awq_routing_changes(gpu_layer *L, const routing *r);
/* Each of the layer's results gets its scale's alpha and AWQ's loss
 * normalisation; frees L->awq. */
void gpu_awq_finish_layer(gpu_layer *L);
void gpu_awq_free(gpu_layer *L);

/* ---- multi-head latent attention (mla_cuda.c) */

/* One linear of an MLA block: its role, host fp32 weight and shape. */
typedef struct gpu_mla_linear {
    moeq_tensor_role role;
    const float *w;
    int rows, cols;
} gpu_mla_linear;

enum { GPU_MLA_MAX_LINEARS = 5 };

/* The linears an MLA layer quantizes, in the CPU loop's order (q_a_proj or
 * q_proj, kv_a_proj_with_mqa, q_b_proj, kv_b_proj, o_proj); returns how
 * many. lw may be NULL (the shapes alone). */
int gpu_mla_linears(const moeq_config *cfg, const moeq_layer_weights *lw,
                    gpu_mla_linear out[GPU_MLA_MAX_LINEARS]);

/* Device bytes of the MLA block's activations over n tokens that live
 * through the block: the o_proj input, the normed latents (the inputs of
 * q_b_proj and kv_b_proj) and the rope part of the keys. */
size_t gpu_mla_activation_bytes(const moeq_config *cfg, int n);

/* The MLA block of layer lw (DeepSeek-V2/V3, Kimi-K2), quantized in the
 * CPU loop's order from the same inputs, then x1 = x + attention(x) with
 * the quantized weights. */
moeq_code gpu_mla_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err);

/* ---- the multi-token-prediction layer (mtp_cuda.c) */

/* After the last layer, whose output fills the residual stream (windows of
 * g->T tokens): the MTP layer's input for windows of g->T - 1 tokens, built
 * on the device from that output (the model's final norm, final_norm as
 * applied) and the embeddings of the next tokens; fc quantized on it into
 * L's results unless the architecture keeps it (mtp_keep_fc); fc's output
 * left in the residual stream, packed [S (T - 1), H], for the layer's
 * stages, which the caller runs on windows of g->T - 1 tokens. */
moeq_code gpu_mtp_input(gpu_layer *L, const moeq_mtp *mtp, const moeq_mtp_weights *w,
                        const float *final_norm, const int32_t *tokens, moeq_error *err);

#endif
