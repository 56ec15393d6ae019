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

double gpu_now_seconds(void);

/* Waits for L's device work and adds the time since the stage mark to
 * *bucket (the mark moves to now). */
moeq_code gpu_sync_time(gpu_layer *L, double *bucket, moeq_error *err);

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

/* 1 when the run quantizes with GPTQ (else RTN). */
int gpu_gptq(const gpu_layer *L);

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

#endif
