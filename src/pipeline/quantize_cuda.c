/* quantize_cuda.c: the layer loop of quantize.c on the CUDA backend, with
 * the same stages, order and expert calibration modes (true-sequential
 * only). Weights are read and decoded on the host one layer at a time;
 * everything else runs on the device:
 *
 *   x   [n, H] fp32  the residual stream: the layer input, then (reused as
 *                    the MLP block accumulator) the layer output
 *   x1  [n, H] fp32  after the attention block, quantized weights
 *   h   [n, H] bf16  the normed input of q/k/v (MLA: of its a-projections),
 *                    then of the MLP
 *   o   [n, Hq D] bf16  the input of o_proj (linear-attention layers:
 *                    of out_proj, [n, Hv Dv]; deltanet_cuda.c; MLA:
 *                    [n, Hq v_head_dim]; mla_cuda.c)
 *
 * Precision (DESIGN.md): normed activations and the weights of the forward
 * GEMMs are bf16 with fp32 accumulation (cuBLAS, tensor cores); residuals,
 * norms, softmax, routing and Hessians are fp32; GPTQ runs on the fp32
 * source weights. Attention is one sequence at a time: q k^T over all heads
 * of the sequence as batched GEMMs, a causal softmax kernel (within the
 * layer's sliding window, with gpt-oss's sink logits), then P v; on
 * Llama-4's chunked layers, one chunk of the sequence at a time.
 *
 * Experts go in groups (opt->expert_batch, or as many as the budget
 * allows): with the router bypassed, the gate/up rows of a whole group are
 * one GPTQ sweep against the layer's shared Hessian; down_proj Hessians come
 * from act(gate(h), up(h)) per expert over token chunks (SwiGLU or gpt-oss's
 * clamped one, with the experts' biases where the model has them); each
 * group's experts then run on their routed tokens and their outputs are added, in
 * expert order, into the block accumulator (no atomics: a token appears at
 * most once per expert, so the sums are deterministic). The routing weight
 * multiplies an expert's output, or (Llama-4) its gathered input rows, in
 * the forward and in routed calibration as the CPU loop does. */
#include "pipeline/quantize.h"
#include "pipeline/layer_cuda.h"

#include "backend/cuda/cuda_comm.h"
#include "backend/cuda/cuda_ctx.h"
#include "backend/cuda/cuda_gptq.h"
#include "backend/cuda/cuda_hessian.h"
#include "backend/cuda/cuda_layer.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "common/failpoint.h"
#include "common/parallel.h"
#include "kernels.h"
#include "model/forward.h"
#include "model/weights.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize_awq.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The GPUs of a run (--devices): their communicators, and a meeting point
 * of their host threads. */
struct team {
    moeq_cuda_comm comm;
    struct gpu_run *run[MOEQ_MAX_DEVICES]; /* each rank's device; run[0]: the primary */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived, generation, failed;
    int gate; /* a layer's rank threads: 0 wait, 1 go, -1 give up (one was not started) */
};

/* Rank threads wait here until the primary has started all of them (go: 1)
 * or failed to (-1: they return at once). */
static int team_wait_gate(team *t)
{
    pthread_mutex_lock(&t->mu);
    while (!t->gate)
        pthread_cond_wait(&t->cv, &t->mu);
    int go = t->gate > 0;
    pthread_mutex_unlock(&t->mu);
    return go;
}

static void team_set_gate(team *t, int gate)
{
    pthread_mutex_lock(&t->mu);
    t->gate = gate;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* Waits until every rank has arrived, each with its status rc; returns 1
 * when any of them failed. A collective starts only after this says every
 * rank will reach it, so a rank that fails never leaves another waiting in
 * NCCL. */
static int team_agree(team *t, moeq_code rc)
{
    if (t->comm.n <= 1)
        return rc != MOEQ_OK;
    pthread_mutex_lock(&t->mu);
    t->failed |= rc != MOEQ_OK;
    int gen = t->generation;
    if (++t->arrived == t->comm.n) {
        t->arrived = 0;
        t->generation++;
        pthread_cond_broadcast(&t->cv);
    } else {
        while (gen == t->generation)
            pthread_cond_wait(&t->cv, &t->mu);
    }
    int failed = t->failed;
    pthread_mutex_unlock(&t->mu);
    return failed;
}

/* The codes a layer's GPTQ results hold: the token mixer's weights
 * (attention, q_proj twice as wide with an output gate; or the Gated
 * DeltaNet projections, b/a when quantized) and the MLP's. */
static size_t layer_code_bytes(const moeq_config *cfg, const moeq_quantize_options *opt,
                               const moeq_layer_weights *lw)
{
    const size_t H = (size_t)cfg->hidden_size, q = (size_t)cfg->num_heads * cfg->head_dim,
                 kv = (size_t)cfg->num_kv_heads * cfg->head_dim;
    const size_t kd = (size_t)cfg->la_num_k_heads * cfg->la_k_head_dim,
                 hv = (size_t)cfg->la_num_v_heads, vd = hv * cfg->la_v_head_dim;
    size_t bytes = lw->is_linear
                       ? (2 * kd + 2 * vd + (opt->quantize_linear_ba ? 2 * hv : 0)) * H + H * vd
                       : ((cfg->attn_output_gate ? 2 : 1) * q + 2 * kv) * H + H * q;
    if (cfg->attention == MOEQ_ATTENTION_MLA && !lw->is_linear) {
        gpu_mla_linear lin[GPU_MLA_MAX_LINEARS];
        bytes = 0;
        for (int i = 0, count = gpu_mla_linears(cfg, NULL, lin); i < count; i++)
            bytes += (size_t)lin[i].rows * lin[i].cols;
    }
    if (lw->is_moe) {
        bytes += (size_t)cfg->num_experts * 3 * H * (size_t)cfg->moe_intermediate_size;
        if (lw->has_shared)
            bytes += 3 * H * (size_t)lw->shared.intermediate;
    } else {
        bytes += 3 * H * (size_t)lw->dense.intermediate;
    }
    return bytes;
}

/* Buffer b grown to at least bytes. */
static moeq_code codes_reserve(gpu_run *g, int b, size_t bytes, moeq_error *err)
{
    if (g->codes_host_bytes[b] >= bytes)
        return MOEQ_OK;
    moeq_cuda_host_free(g->codes_host[b]);
    g->codes_host[b] = NULL;
    g->codes_host_bytes[b] = 0;
    moeq_code rc = moeq_cuda_host_alloc((void **)&g->codes_host[b], bytes,
                                        "the quantized codes of a layer", err);
    if (!rc)
        g->codes_host_bytes[b] = bytes;
    return rc;
}

/* Both codes buffers pinned for the largest layer from `first` on, before
 * that layer starts (in overlapped mode while the reader reads it):
 * pinning takes seconds at large MoE layers (11.3 GB a buffer at
 * DeepSeek-V3's), a cost of the run's setup, counted in its total but in
 * no layer's stages. The second buffer only when a second layer follows. */
static moeq_code codes_pin_for_run(gpu_run *g, int first, FILE *progress, moeq_error *err)
{
    const moeq_config *cfg = g->cfg;
    size_t bytes = 0;
    for (int l = first; l < cfg->num_layers; l++) {
        /* What layer_code_bytes reads of a layer's weights, from the
         * config as the loader sets it (moeq_layer_weights_load). */
        moeq_layer_weights shape = {.is_moe = cfg->layer_is_moe[l],
                                    .is_linear = cfg->layer_is_linear[l]};
        shape.has_shared = shape.is_moe &&
                           g->model->arch.shared_expert != MOEQ_SHARED_EXPERT_NONE &&
                           cfg->shared_expert_intermediate_size > 0;
        shape.shared.intermediate = cfg->shared_expert_intermediate_size;
        shape.dense.intermediate = cfg->intermediate_size;
        size_t b = layer_code_bytes(cfg, g->opt, &shape);
        bytes = b > bytes ? b : bytes;
    }
    double t0 = moeq_now_seconds();
    moeq_code rc = codes_reserve(g, first & 1, bytes, err);
    if (!rc && first + 1 < cfg->num_layers)
        rc = codes_reserve(g, !(first & 1), bytes, err);
    if (!rc && progress)
        fprintf(progress, "pinned %.2f GiB of host memory for the quantized codes in %.2f s\n",
                (first + 1 < cfg->num_layers ? 2.0 : 1.0) * (double)bytes / 1073741824.0,
                moeq_now_seconds() - t0);
    return rc;
}

/* Points the layer's codes at buffer l & 1, grown to the layer's size and
 * extra_bytes (codes of linears beside the layer's own: the MTP fc) when
 * codes_pin_for_run did not already make it that large. */
static moeq_code codes_for_layer(gpu_run *g, int l, const moeq_layer_weights *lw,
                                 size_t extra_bytes, moeq_error *err)
{
    const int b = l & 1;
    const size_t bytes = layer_code_bytes(g->cfg, g->opt, lw) + extra_bytes;
    moeq_code rc = codes_reserve(g, b, bytes, err);
    if (rc)
        return rc;
    g->codes_next = g->codes_host[b];
    g->codes_end = g->codes_host[b] + bytes;
    return MOEQ_OK;
}

/* ---- MLP and experts */

/* The device arrays of r (a rank's own; the host arrays may be borrowed). */
static void routing_free_device(gpu_run *g, routing *r)
{
    moeq_cuda_buf *b[] = {&r->d_idx, &r->d_wts, &r->probs_t, &r->logits, &r->topw, &r->tope};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        moeq_cuda_free(&g->cu, b[i]);
}

void gpu_routing_free(gpu_run *g, routing *r)
{
    free(r->count);
    free(r->tope_host);
    free(r->topw_host);
    free(r->offset);
    free(r->idx);
    free(r->wts);
    routing_free_device(g, r);
    memset(r, 0, sizeof *r);
}

moeq_code gpu_route(gpu_layer *L, const moeq_layer_weights *lw, routing *r, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const int n = g->n, H = cfg->hidden_size, E = cfg->num_experts, k = cfg->num_experts_per_tok;
    memset(r, 0, sizeof *r);
    r->E = E;
    r->k = k;
    moeq_cuda_buf wr = {0}, bias = {0}, router_bias = {0};
    int32_t *tope = malloc(sizeof(int32_t) * (size_t)n * k);
    float *topw = malloc(sizeof(float) * (size_t)n * k);
    r->count = calloc((size_t)E, sizeof(int32_t));
    r->offset = calloc((size_t)E + 1, sizeof(int64_t));
    r->idx = malloc(sizeof(int32_t) * (size_t)n * k);
    r->wts = malloc(sizeof(float) * (size_t)n * k);
    moeq_code rc = MOEQ_OK;
    if (!tope || !topw || !r->count || !r->offset || !r->idx || !r->wts) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for routing", L->res->layer);
        goto done;
    }
    int weighted = g->opt->expert_calib == MOEQ_EXPERT_CALIB_WEIGHTED;
    /* The CPU loop's routing (moeq_route); weighted calibration uses its
     * scores (softmax, or sigmoid without the correction bias) as p_e. */
    const cpu_router_params p = moeq_router_params(cfg);
    moeq_k_router_args ra = {.n = n, .E = E, .k = k,
                             .sigmoid = p.scoring == CPU_ROUTER_SIGMOID,
                             .norm_topk = p.norm_topk_prob, .n_group = p.n_group,
                             .topk_group = p.topk_group,
                             .scaling = p.routed_scaling_factor != 0.0f ? p.routed_scaling_factor
                                                                        : 1.0f};
    /* gpt-oss's router bias joins the logits (moeq_route: cpu_linear with
     * the bias); its softmax over the top-k logits (transformers
     * modeling_gpt_oss.py, GptOssTopKRouter.forward) is the renormalised
     * top-k of the softmax, as the CPU routes it. */
    if ((rc = gpu_upload_bf16(g, lw->router, (size_t)E * H, "router", &wr, err)) ||
        (rc = gpu_upload_f32(g, lw->router_bias, (size_t)E, "router bias", &router_bias, err)) ||
        (ra.sigmoid && (rc = gpu_upload_f32(g, lw->router_correction_bias, (size_t)E,
                                            "e_score_correction_bias", &bias, err))))
        goto done;
    ra.correction_bias = bias.ptr;
    if ((rc = moeq_cuda_alloc(&g->cu, &r->logits, sizeof(float) * (size_t)n * E, "router logits",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &r->topw, sizeof(float) * (size_t)n * k, "top-k weights",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &r->tope, sizeof(int32_t) * (size_t)n * k, "top-k experts",
                              err)) ||
        (weighted && (rc = moeq_cuda_alloc(&g->cu, &r->probs_t, sizeof(float) * (size_t)n * E,
                                           "router probabilities", err))) ||
        (rc = gpu_gemm_nt(g, g->h.ptr, H, wr.ptr, H, r->logits.ptr, E, 0, n, E, H, 1.0f, 0.0f,
                          err)) ||
        (router_bias.ptr &&
         (rc = MOEQ_CU(moeq_k_add_bias(r->logits.ptr, n, E, router_bias.ptr, g->cu.stream)))) ||
        (rc = MOEQ_CU(moeq_k_router_topk(r->logits.ptr, &ra, r->probs_t.ptr, r->topw.ptr,
                                         r->tope.ptr, g->cu.stream))) ||
        (rc = moeq_cuda_download(&g->cu, tope, r->tope.ptr, r->tope.bytes, err)) ||
        (rc = moeq_cuda_download(&g->cu, topw, r->topw.ptr, r->topw.bytes, err)) ||
        (rc = moeq_cuda_sync(&g->cu, err)))
        goto done;
    for (size_t i = 0; i < (size_t)n * k; i++) {
        if (tope[i] < 0 || tope[i] >= E) {
            rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                           "layer %d: the router picked no valid expert for token %zu: its "
                           "logits hold NaN/Inf",
                           L->res->layer, i / (size_t)k);
            goto done;
        }
        r->count[tope[i]]++;
    }
    for (int e = 0; e < E; e++)
        r->offset[e + 1] = r->offset[e] + r->count[e];
    int64_t *fill = malloc(sizeof(int64_t) * (size_t)E);
    if (!fill) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        goto done;
    }
    memcpy(fill, r->offset, sizeof(int64_t) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int e = tope[(size_t)t * k + j];
            r->idx[fill[e]] = t;
            r->wts[fill[e]++] = topw[(size_t)t * k + j];
        }
    free(fill);
    if ((rc = moeq_cuda_alloc(&g->cu, &r->d_idx, sizeof(int32_t) * (size_t)n * k, "expert tokens",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &r->d_wts, sizeof(float) * (size_t)n * k,
                              "expert token weights", err)) ||
        (rc = moeq_cuda_upload(&g->cu, r->d_idx.ptr, r->idx, r->d_idx.bytes, err)) ||
        (rc = moeq_cuda_upload(&g->cu, r->d_wts.ptr, r->wts, r->d_wts.bytes, err)))
        goto done;
    L->res->expert_tokens = calloc((size_t)E, sizeof(int64_t));
    if (!L->res->expert_tokens) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        goto done;
    }
    for (int e = 0; e < E; e++)
        L->res->expert_tokens[e] = r->count[e];
    /* The top-k buffers are on the host now; the logits are not needed. */
    moeq_cuda_free(&g->cu, &r->logits);
    moeq_cuda_free(&g->cu, &r->topw);
    moeq_cuda_free(&g->cu, &r->tope);
done:
    moeq_cuda_free(&g->cu, &wr);
    moeq_cuda_free(&g->cu, &bias);
    moeq_cuda_free(&g->cu, &router_bias);
    r->tope_host = tope;
    r->topw_host = topw;
    if (rc)
        gpu_routing_free(g, r);
    return rc;
}

void gpu_scratch_free(gpu_run *g, mlp_scratch *s)
{
    moeq_cuda_buf *b[] = {&s->xs, &s->gu, &s->a, &s->y, &s->gl};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        moeq_cuda_free(&g->cu, b[i]);
}

moeq_code gpu_scratch_alloc(gpu_run *g, int inter, mlp_scratch *s, moeq_error *err)
{
    const size_t c = (size_t)g->chunk, H = (size_t)g->cfg->hidden_size;
    memset(s, 0, sizeof *s);
    moeq_code rc;
    if ((rc = moeq_cuda_alloc(&g->cu, &s->xs, 2 * c * H, "expert inputs", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &s->gu, sizeof(float) * c * 2 * (size_t)inter,
                              "gate/up products", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &s->a, 2 * c * (size_t)inter, "down_proj inputs", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &s->y, sizeof(float) * c * H, "expert outputs", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &s->gl, sizeof(float) * c, "shared expert gate", err)))
        gpu_scratch_free(g, s);
    return rc;
}

/* 1 when the model's router weight scales each expert's input instead of
 * its output (Llama-4: moe_forward in forward.c). */
static int router_scales_input(const moeq_config *cfg)
{
    return cfg->router == MOEQ_ROUTER_TOPK_SIGMOID_INPUT;
}

moeq_code gpu_chunk_rows(gpu_run *g, mlp_scratch *s, const int32_t *idx, const float *scale,
                         int c0, int m, const uint16_t **rows_out, moeq_error *err)
{
    const int H = g->cfg->hidden_size;
    if (!idx) {
        *rows_out = (const uint16_t *)g->h.ptr + (size_t)c0 * H;
        return MOEQ_OK;
    }
    *rows_out = s->xs.ptr;
    moeq_code rc =
        MOEQ_CU(moeq_k_gather_rows_bf16(g->h.ptr, H, idx + c0, m, s->xs.ptr, g->cu.stream));
    if (!rc && scale)
        rc = MOEQ_CU(moeq_k_scale_rows(s->xs.ptr, 1, scale + c0, m, H, s->xs.ptr, g->cu.stream));
    return rc;
}

/* The biases of count MLPs of one width on the device (mlp_bias: gpt-oss's
 * experts), each buffer empty when no MLP has such a bias: gate and up of
 * each as [2 I], the order of the columns of its gate/up product, and down
 * [H]. A missing one of a pair is zero. */
typedef struct mlp_biases {
    moeq_cuda_buf gu;   /* [count, 2 I] fp32 */
    moeq_cuda_buf down; /* [count, H] fp32 */
    int inter;
} mlp_biases;

static void mlp_biases_free(gpu_run *g, mlp_biases *b)
{
    moeq_cuda_free(&g->cu, &b->gu);
    moeq_cuda_free(&g->cu, &b->down);
}

static const float *bias_of(const moeq_mlp_weights *m, int which)
{
    return which == 0 ? m->gate_bias : which == 1 ? m->up_bias : m->down_bias;
}

static moeq_code mlp_biases_upload(gpu_run *g, const moeq_mlp_weights *mlps, int count,
                                   mlp_biases *b, moeq_error *err)
{
    const int H = g->cfg->hidden_size, I = mlps[0].intermediate;
    memset(b, 0, sizeof *b);
    b->inter = I;
    moeq_code rc = MOEQ_OK;
    /* which: 0 gate, 1 up (both into gu, up from column I), 2 down. */
    for (int which = 0; which < 3 && !rc; which++) {
        moeq_cuda_buf *buf = which < 2 ? &b->gu : &b->down;
        const int width = which < 2 ? 2 * I : H, col0 = which == 1 ? I : 0;
        const int len = which < 2 ? I : H;
        for (int i = 0; i < count && !rc; i++) {
            const float *src = bias_of(&mlps[i], which);
            if (!src)
                continue;
            if (!buf->ptr &&
                ((rc = moeq_cuda_alloc(&g->cu, buf, sizeof(float) * (size_t)count * width,
                                       which < 2 ? "gate/up biases" : "down_proj biases",
                                       err)) ||
                 (rc = MOEQ_CU(cudaMemsetAsync(buf->ptr, 0, buf->bytes, g->cu.stream)))))
                break;
            rc = moeq_cuda_upload(&g->cu, (float *)buf->ptr + (size_t)i * width + col0, src,
                                  sizeof(float) * (size_t)len, err);
        }
    }
    if (rc)
        mlp_biases_free(g, b);
    return rc;
}

/* MLP i's gate/up biases [2 I] and down bias [H] on the device, NULL where
 * it has none. */
static const float *gu_bias_of(const mlp_biases *b, int i)
{
    return b->gu.ptr ? (const float *)b->gu.ptr + (size_t)i * 2 * b->inter : NULL;
}

static const float *down_bias_of(const gpu_run *g, const mlp_biases *b, int i)
{
    return b->down.ptr ? (const float *)b->down.ptr + (size_t)i * g->cfg->hidden_size : NULL;
}

moeq_code gpu_swiglu_chunk(gpu_run *g, mlp_scratch *s, const uint16_t *x, int m, int inter,
                           const uint16_t *wgu, const float *gu_bias, moeq_error *err)
{
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size;
    moeq_code rc =
        gpu_gemm_nt(g, x, H, wgu, H, s->gu.ptr, 2 * inter, 0, m, 2 * inter, H, 1.0f, 0.0f, err);
    if (!rc && gu_bias)
        rc = MOEQ_CU(moeq_k_add_bias(s->gu.ptr, m, 2 * inter, gu_bias, g->cu.stream));
    if (!rc)
        rc = MOEQ_CU(moeq_k_swiglu_bf16(s->gu.ptr, m, inter, cfg->swiglu_alpha,
                                        cfg->swiglu_limit, s->a.ptr, g->cu.stream));
    return rc;
}

/* H (allocated here) = the Hessian over an MLP's calibration tokens
 * (d_idx/count; NULL: all n tokens; d_scale: chunk_rows' scale of each),
 * each token weighted by w (device [count], NULL: 1), chunk by chunk: of
 * the normed rows themselves (wgu NULL: an expert's own gate/up_proj
 * Hessian, H columns), or of act(gate(x), up(x)) with the quantized wgu
 * [2 inter, H] and the biases gu_bias (its down_proj Hessian, inter
 * columns; quantize_swiglu of quantize.c likewise adds the biases). */
static moeq_code chunked_hessian(gpu_layer *L, mlp_scratch *s, const uint16_t *wgu,
                                 const float *gu_bias, int inter, const int32_t *d_idx,
                                 const float *d_scale, int count, const float *w, float alpha,
                                 moeq_cuda_buf *H, moeq_error *err)
{
    gpu_run *g = L->g;
    const int cols = wgu ? inter : g->cfg->hidden_size;
    moeq_code rc = moeq_cuda_alloc(&g->cu, H, sizeof(float) * (size_t)cols * cols, "Hessian",
                                   err);
    if (!rc)
        rc = MOEQ_CU(cudaMemsetAsync(H->ptr, 0, H->bytes, g->cu.stream));
    for (int c0 = 0; !rc && c0 < count; c0 += g->chunk) {
        int m = count - c0 < g->chunk ? count - c0 : g->chunk;
        const uint16_t *x;
        if ((rc = gpu_chunk_rows(g, s, d_idx, d_scale, c0, m, &x, err)) ||
            (wgu && (rc = gpu_swiglu_chunk(g, s, x, m, inter, wgu, gu_bias, err))))
            break;
        const void *rows = wgu ? s->a.ptr : (const void *)x;
        rc = w ? moeq_cuda_hessian_accumulate_weighted(&g->cu, H->ptr, rows, MOEQ_CUDA_BF16,
                                                       w + c0, m, cols, alpha, err)
               : moeq_cuda_hessian_accumulate(&g->cu, H->ptr, rows, MOEQ_CUDA_BF16, m, cols,
                                              alpha, err);
    }
    if (rc)
        moeq_cuda_free(&g->cu, H);
    return rc;
}

/* chunked_hessian, then the preparation for module (one matrix alone). */
static moeq_code chunked_hessian_prepare(gpu_layer *L, mlp_scratch *s, const uint16_t *wgu,
                                         const float *gu_bias, int inter, const int32_t *d_idx,
                                         int count, const float *w, float alpha,
                                         const char *module, moeq_cuda_gptq_prepared *prep,
                                         moeq_error *err)
{
    moeq_cuda_buf H = {0};
    moeq_code rc =
        chunked_hessian(L, s, wgu, gu_bias, inter, d_idx, NULL, count, w, alpha, &H, err);
    return gpu_finish_prepare(L, &H, rc, wgu ? inter : L->g->cfg->hidden_size, module, prep, err);
}

float *gpu_block_acc(gpu_run *g)
{
    return g->resid_host ? g->acc.ptr : g->x.ptr;
}

moeq_code gpu_mlp_forward(gpu_run *g, mlp_scratch *s, const uint16_t *wgu, const float *gu_bias,
                          const uint16_t *wd, const float *down_bias, int inter,
                          const int32_t *d_idx, const float *d_wts, int count,
                          const uint16_t *shared_gate, float *acc, moeq_error *err)
{
    const int H = g->cfg->hidden_size, on_input = router_scales_input(g->cfg);
    moeq_code rc = MOEQ_OK;
    for (int c0 = 0; !rc && c0 < count; c0 += g->chunk) {
        int m = count - c0 < g->chunk ? count - c0 : g->chunk;
        const uint16_t *x;
        if ((rc = gpu_chunk_rows(g, s, d_idx, on_input ? d_wts : NULL, c0, m, &x, err)) ||
            (rc = gpu_swiglu_chunk(g, s, x, m, inter, wgu, gu_bias, err)) ||
            (rc = gpu_gemm_nt(g, s->a.ptr, inter, wd, inter, s->y.ptr, H, 0, m, H, inter, 1.0f,
                              0.0f, err)) ||
            (down_bias && (rc = MOEQ_CU(moeq_k_add_bias(s->y.ptr, m, H, down_bias, g->cu.stream)))))
            break;
        if (d_idx) {
            rc = MOEQ_CU(moeq_k_scatter_add_rows(s->y.ptr, H, d_idx + c0,
                                                 on_input ? NULL : d_wts + c0, m, acc,
                                                 g->cu.stream));
        } else {
            if (shared_gate && (rc = gpu_gemm_nt(g, x, H, shared_gate, H, s->gl.ptr, 1, 0, m, 1, H,
                                                 1.0f, 0.0f, err)))
                break;
            rc = MOEQ_CU(moeq_k_gated_add(s->y.ptr, shared_gate ? s->gl.ptr : NULL, m, H,
                                          acc + (size_t)c0 * H, g->cu.stream));
        }
    }
    return rc;
}

/* A SwiGLU MLP on all tokens (dense MLP or shared expert): gate/up against
 * prep_all, down from its inputs, then its output added into the block
 * accumulator. */
static moeq_code all_token_mlp(gpu_layer *L, const moeq_mlp_weights *mlp,
                               const moeq_tensor_role roles[3],
                               const moeq_cuda_gptq_prepared *prep_all, const float *gate_host,
                               moeq_error *err)
{
    gpu_run *g = L->g;
    const int H = g->cfg->hidden_size, inter = mlp->intermediate, n = g->n;
    mlp_scratch s = {0};
    moeq_cuda_buf wgu = {0}, wd = {0}, gate = {0};
    mlp_biases b = {0};
    moeq_cuda_gptq_prepared prep = {0};
    moeq_code rc;
    const piece gu[2] = {{roles[0], -1, mlp->gate, inter, n, 0, mlp->gate16},
                         {roles[1], -1, mlp->up, inter, n, 0, mlp->up16}};
    const piece down = {roles[2], -1, mlp->down, H, n, 0, mlp->down16};
    if ((rc = gpu_scratch_alloc(g, inter, &s, err)) ||
        (rc = mlp_biases_upload(g, mlp, 1, &b, err)) ||
        (rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? prep_all : NULL, NULL, gu, 2, H, &wgu,
                                 err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)) ||
        (gpu_uses_hessians(L) &&
         (rc = chunked_hessian_prepare(L, &s, wgu.ptr, gu_bias_of(&b, 0), inter, NULL, n, NULL,
                                       2.0f / (float)n, moeq_tensor_role_key(roles[2]), &prep,
                                       err))) ||
        (rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, &down, 1, inter, &wd,
                                 err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)) ||
        (rc = gpu_upload_bf16(g, gate_host, (size_t)H, "shared expert gate", &gate, err)) ||
        (rc = gpu_mlp_forward(g, &s, wgu.ptr, gu_bias_of(&b, 0), wd.ptr, down_bias_of(g, &b, 0),
                              inter, NULL, NULL, n, gate.ptr, gpu_block_acc(g), err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_forward, err)))
        goto done;
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    moeq_cuda_free(&g->cu, &wgu);
    moeq_cuda_free(&g->cu, &wd);
    moeq_cuda_free(&g->cu, &gate);
    mlp_biases_free(g, &b);
    gpu_scratch_free(g, &s);
    return rc;
}

/* Device bytes one expert of a group holds while its group is processed. */
static size_t expert_bytes(const gpu_run *g, int inter)
{
    size_t H = (size_t)g->cfg->hidden_size, I = (size_t)inter;
    /* gate/up and down: the fp32 stack, the sweep's fp32 copy, permuted
     * and final codes, bf16 dequantized; down's Hessian, its permuted copy
     * and its factor while the group is prepared, and the segmented sweep's
     * copy of the factor; grids are small. */
    return 3 * I * H * (4 + 4 + 1 + 1 + 2) + 4 * I * I * 4 + 3 * I * H / 8;
}

/* The calibration of one expert: its tokens (idx NULL: all n), the scale
 * of each row (routed, Llama-4: its routing weight, as the expert sees it;
 * NULL: none), their weights (w NULL: 1), the Hessian's scale, and what
 * the report says. */
typedef struct expert_cal {
    const int32_t *idx;
    const float *scale;
    int count;
    const float *w;
    float alpha;
    int fallback;   /* routed, below --min-expert-tokens: all tokens */
    int64_t tokens; /* calibration tokens, for the report */
} expert_cal;

/* Experts [e_begin, e_end) of a MoE layer on L's device, in groups:
 * quantized, their down_proj Hessians from their quantized gate/up, and
 * their outputs on their routed tokens (rt, on this device) added into the
 * device's block accumulator. */
static moeq_code experts_range(gpu_layer *L, const moeq_layer_weights *lw,
                               const moeq_cuda_gptq_prepared *prep_all, const routing *rt,
                               int e_begin, int e_end, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const moeq_expert_calib mode = g->opt->expert_calib;
    const int H = cfg->hidden_size, E = e_end - e_begin, n = g->n;
    const int inter = cfg->moe_intermediate_size;
    mlp_scratch s = {0};
    moeq_cuda_buf wgu = {0}, wd = {0};
    mlp_biases b = {0}; /* the group's */
    moeq_code rc;
    if (E <= 0)
        return MOEQ_OK;
    if ((rc = gpu_scratch_alloc(g, inter, &s, err)))
        goto done;
    /* Expert groups: as many as the budget left allows (at least one). */
    int G = g->opt->expert_batch > 0 ? g->opt->expert_batch : E;
    if (g->opt->expert_batch <= 0) {
        /* What the group loop allocates besides the experts (scratch, the
         * down_proj Hessians and factors, cuSOLVER's workspace) stays
         * within a reserve of 1/16 of the budget plus 64 MiB. */
        const size_t budget = gpu_memory_limit(g);
        size_t used = g->cu.bytes_in_use + budget / 16 + ((size_t)64 << 20);
        /* Routed and weighted: the own gate/up Hessians of a lane batch,
         * their permuted copies and factors. */
        if (!(mode == MOEQ_EXPERT_CALIB_ALL || !gpu_uses_hessians(L)))
            used += (size_t)MOEQ_CUDA_SOLVER_LANES * 3 * sizeof(float) * H * H;
        size_t per = expert_bytes(g, inter);
        size_t fit = budget > used ? (budget - used) / per : 0;
        G = fit < 1 ? 1 : fit < (size_t)E ? (int)fit : E;
    }
    G = G > E ? E : G;
    piece *pieces = malloc(sizeof(piece) * 2 * (size_t)G);
    moeq_cuda_gptq_prepared *preps = calloc((size_t)G, sizeof *preps);
    const moeq_cuda_gptq_prepared **prep_ptrs = malloc(sizeof *prep_ptrs * (size_t)G);
    moeq_cuda_buf *Hd = calloc((size_t)G, sizeof *Hd); /* the group's down_proj Hessians */
    const float **Hd_ptrs = malloc(sizeof *Hd_ptrs * (size_t)G);
    expert_cal *cal = malloc(sizeof *cal * (size_t)G);
    if (!pieces || !preps || !prep_ptrs || !Hd || !Hd_ptrs || !cal) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        goto group_done;
    }
    for (int e0 = e_begin; e0 < e_end; e0 += G) {
        int ng = e_end - e0 < G ? e_end - e0 : G;
        if ((rc = mlp_biases_upload(g, &lw->experts[e0], ng, &b, err)))
            break;
        /* gate/up: one sweep for the whole group against the shared
         * Hessian (all; GPTQ), or per expert against its own. */
        int shared = mode == MOEQ_EXPERT_CALIB_ALL || !gpu_uses_hessians(L);
        if (shared) {
            for (int i = 0; i < ng; i++) {
                const moeq_mlp_weights *m = &lw->experts[e0 + i];
                pieces[2 * i] =
                    (piece){MOEQ_EXPERT_ROLES[0], e0 + i, m->gate, inter, n, 0, m->gate16};
                pieces[2 * i + 1] =
                    (piece){MOEQ_EXPERT_ROLES[1], e0 + i, m->up, inter, n, 0, m->up16};
            }
            if ((rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? prep_all : NULL, NULL, pieces,
                                         2 * ng, H, &wgu, err)) ||
                (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
                break;
        } else if ((rc = moeq_cuda_alloc(&g->cu, &wgu, 2 * (size_t)ng * 2 * inter * H,
                                         "dequantized gate/up", err))) {
            break;
        }
        /* The calibration tokens of each expert of the group. */
        for (int i = 0; i < ng; i++) {
            const int e = e0 + i, count = rt->count[e];
            expert_cal *c = &cal[i];
            *c = (expert_cal){NULL, NULL, n, NULL, 2.0f / (float)n, 0, n};
            if (mode == MOEQ_EXPERT_CALIB_ROUTED) {
                if (count < g->opt->min_expert_tokens) {
                    c->fallback = 1;
                    moeq_warn_expert_fallback(g->opt, e, L->res->layer, count);
                } else {
                    c->idx = (const int32_t *)rt->d_idx.ptr + rt->offset[e];
                    /* Llama-4's experts see their input scaled by the
                     * routing weight: their Hessians are of what they see
                     * (quantize_experts of quantize.c; all, weighted and
                     * the fallback calibrate on the unscaled input there,
                     * as here). */
                    if (router_scales_input(cfg))
                        c->scale = (const float *)rt->d_wts.ptr + rt->offset[e];
                    c->count = c->tokens = count;
                    c->alpha = 2.0f / (float)count;
                }
            } else if (mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
                c->w = (const float *)rt->probs_t.ptr + (size_t)e * n;
            }
            pieces[i] = (piece){MOEQ_EXPERT_ROLES[2], e, lw->experts[e].down, H, c->tokens,
                                c->fallback, lw->experts[e].down16};
        }
        /* Routed and weighted: each expert's gate/up against its own
         * Hessian (routed: its tokens, gathered chunk by chunk; weighted:
         * all tokens by p_e), prepared a lane's worth of experts at a
         * time. */
        for (int b0 = 0; !shared && b0 < ng && !rc; b0 += MOEQ_CUDA_SOLVER_LANES) {
            int nb = ng - b0 < MOEQ_CUDA_SOLVER_LANES ? ng - b0 : MOEQ_CUDA_SOLVER_LANES;
            moeq_cuda_buf Hg[MOEQ_CUDA_SOLVER_LANES] = {{0}};
            const float *Hg_ptrs[MOEQ_CUDA_SOLVER_LANES];
            moeq_cuda_gptq_prepared own[MOEQ_CUDA_SOLVER_LANES] = {{0}};
            int own_of[MOEQ_CUDA_SOLVER_LANES], n_own = 0, failed = -1;
            for (int j = 0; j < nb && !rc; j++) {
                const expert_cal *c = &cal[b0 + j];
                own_of[j] = -1;
                if (c->fallback)
                    continue;
                if (!(rc = chunked_hessian(L, &s, NULL, NULL, inter, c->idx, c->scale, c->count,
                                           c->w, c->alpha, &Hg[n_own], err))) {
                    Hg_ptrs[n_own] = Hg[n_own].ptr;
                    own_of[j] = n_own++;
                }
            }
            if (!rc && n_own && !(rc = gpu_sync_time(L, &L->res->seconds_hessian, err)) &&
                (rc = gpu_prepare_many(L, Hg, Hg_ptrs, n_own, H, own, &failed, err))) {
                int e = e0 + b0; /* the expert the error is about, else the batch's first */
                for (int j = 0; j < nb; j++)
                    if (failed >= 0 && own_of[j] == failed)
                        e = e0 + b0 + j;
                moeq_wrap(err, "layer %d, expert %d gate/up_proj: ", L->res->layer, e);
            }
            if (!rc && n_own)
                rc = gpu_sync_time(L, &L->res->seconds_prepare, err);
            for (int j = 0; j < n_own; j++)
                moeq_cuda_free(&g->cu, &Hg[j]);
            for (int j = 0; j < nb && !rc; j++) {
                const int i = b0 + j, e = e0 + i;
                const moeq_mlp_weights *m = &lw->experts[e];
                const expert_cal *c = &cal[i];
                const piece gu[2] = {
                    {MOEQ_EXPERT_ROLES[0], e, m->gate, inter, c->tokens, c->fallback, m->gate16},
                    {MOEQ_EXPERT_ROLES[1], e, m->up, inter, c->tokens, c->fallback, m->up16}};
                moeq_cuda_buf q = {0};
                if (!(rc = gpu_quantize_stack(L, own_of[j] >= 0 ? &own[own_of[j]] : prep_all, NULL,
                                              gu, 2, H, &q, err)))
                    rc = MOEQ_CU(cudaMemcpyAsync((uint16_t *)wgu.ptr + (size_t)i * 2 * inter * H,
                                                 q.ptr, q.bytes, cudaMemcpyDeviceToDevice,
                                                 g->cu.stream));
                moeq_cuda_free(&g->cu, &q);
            }
            for (int j = 0; j < n_own; j++)
                moeq_cuda_gptq_prepared_free(&g->cu, &own[j]);
            if (!rc)
                rc = gpu_sync_time(L, &L->res->seconds_solve, err);
        }
        /* Each expert's down_proj Hessian from its quantized gate/up. */
        for (int i = 0; i < ng && !rc && gpu_uses_hessians(L); i++) {
            const expert_cal *c = &cal[i];
            if (!(rc = chunked_hessian(L, &s, (const uint16_t *)wgu.ptr + (size_t)i * 2 * inter * H,
                                       gu_bias_of(&b, i), inter, c->idx, c->scale, c->count, c->w,
                                       c->alpha, &Hd[i], err))) {
                Hd_ptrs[i] = Hd[i].ptr;
                prep_ptrs[i] = &preps[i];
            }
        }
        if (rc)
            break;
        /* The group's down_proj Hessians, prepared together. */
        if (!rc && gpu_uses_hessians(L)) {
            int failed = -1;
            if (!(rc = gpu_sync_time(L, &L->res->seconds_hessian, err)) &&
                (rc = gpu_prepare_many(L, Hd, Hd_ptrs, ng, inter, preps, &failed, err)))
                moeq_wrap(err, "layer %d, expert %d down_proj: ", L->res->layer,
                          failed >= 0 ? e0 + failed : e0);
            if (!rc)
                rc = gpu_sync_time(L, &L->res->seconds_prepare, err);
        }
        for (int i = 0; i < ng; i++)
            moeq_cuda_free(&g->cu, &Hd[i]);
        /* The group's down_proj weights: one segmented sweep when the rows
         * allow it, else expert by expert (same results). */
        if (!rc && gpu_uses_hessians(L) && H % MOEQ_K_GPTQ_SEG_ROWS_MULTIPLE == 0) {
            rc = gpu_quantize_stack(L, NULL, prep_ptrs, pieces, ng, inter, &wd, err);
        } else if (!rc) {
            rc = moeq_cuda_alloc(&g->cu, &wd, 2 * (size_t)ng * H * inter, "dequantized down_proj",
                                 err);
            for (int i = 0; i < ng && !rc; i++) {
                moeq_cuda_buf one = {0};
                rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &preps[i] : NULL, NULL,
                                        &pieces[i], 1, inter, &one, err);
                if (!rc)
                    rc = MOEQ_CU(cudaMemcpyAsync((uint16_t *)wd.ptr + (size_t)i * H * inter,
                                                 one.ptr, one.bytes, cudaMemcpyDeviceToDevice,
                                                 g->cu.stream));
                moeq_cuda_free(&g->cu, &one);
            }
        }
        for (int i = 0; i < ng; i++)
            moeq_cuda_gptq_prepared_free(&g->cu, &preps[i]);
        if (!rc)
            rc = gpu_sync_time(L, &L->res->seconds_solve, err);
        /* The layer output: each expert of the group on its routed tokens,
         * added in expert order. */
        for (int i = 0; i < ng && !rc; i++) {
            const int e = e0 + i;
            rc = gpu_mlp_forward(g, &s, (const uint16_t *)wgu.ptr + (size_t)i * 2 * inter * H,
                                 gu_bias_of(&b, i), (const uint16_t *)wd.ptr + (size_t)i * H * inter,
                                 down_bias_of(g, &b, i), inter,
                                 (const int32_t *)rt->d_idx.ptr + rt->offset[e],
                                 (const float *)rt->d_wts.ptr + rt->offset[e], rt->count[e], NULL,
                                 gpu_block_acc(g), err);
        }
        if (!rc)
            rc = gpu_sync_time(L, &L->res->seconds_forward, err);
        moeq_cuda_free(&g->cu, &wgu);
        moeq_cuda_free(&g->cu, &wd);
        mlp_biases_free(g, &b);
        if (rc)
            break;
    }
group_done:
    if (preps)
        for (int i = 0; i < G; i++)
            moeq_cuda_gptq_prepared_free(&g->cu, &preps[i]);
    if (Hd)
        for (int i = 0; i < G; i++)
            moeq_cuda_free(&g->cu, &Hd[i]);
    free(Hd);
    free(Hd_ptrs);
    free(cal);
    free(preps);
    free(prep_ptrs);
    free(pieces);
done:
    moeq_cuda_free(&g->cu, &wgu);
    moeq_cuda_free(&g->cu, &wd);
    mlp_biases_free(g, &b);
    gpu_scratch_free(g, &s);
    return rc;
}

/* ---- experts over the GPUs of the run */

/* The work of expert e in FLOPs (what the split over GPUs balances): its
 * forward on its routed tokens and, with GPTQ, the products and Hessians
 * over its calibration tokens and its sweeps' lazy updates. */
static double expert_flops(const gpu_run *g, const routing *r, int e)
{
    const double H = g->cfg->hidden_size, I = g->cfg->moe_intermediate_size;
    const moeq_expert_calib mode = g->opt->expert_calib;
    double f = 6.0 * H * I * r->count[e];
    if (g->opt->method != MOEQ_METHOD_GPTQ)
        return f;
    double calib = g->n;
    int own = mode != MOEQ_EXPERT_CALIB_ALL; /* its own gate/up Hessian */
    if (mode == MOEQ_EXPERT_CALIB_ROUTED) {
        own = r->count[e] >= g->opt->min_expert_tokens;
        calib = own ? r->count[e] : g->n;
    }
    f += calib * (4.0 * H * I + 2.0 * I * I) + (own ? calib * 2.0 * H * H : 0.0);
    return f + 4.0 * I * H * H + 2.0 * H * I * I;
}

/* The FLOPs of a SwiGLU MLP of width I on all n tokens (the shared expert,
 * which the primary runs beside its experts). */
static double all_token_mlp_flops(const gpu_run *g, int inter)
{
    const double H = g->cfg->hidden_size, I = inter, n = g->n;
    return n * (10.0 * H * I + 2.0 * I * I) + 4.0 * I * H * H + 2.0 * H * I * I;
}

/* Splits the experts into ranks contiguous ranges of about equal FLOPs,
 * rank 0 counting extra (its shared expert): rank k gets [bounds[k],
 * bounds[k + 1]). */
static void split_experts(const gpu_run *g, const routing *r, double extra, int ranks,
                          int *bounds)
{
    double total = extra;
    for (int e = 0; e < r->E; e++)
        total += expert_flops(g, r, e);
    double done = extra;
    int e = 0;
    bounds[0] = 0;
    for (int k = 1; k < ranks; k++) {
        const double target = total * k / ranks;
        while (e < r->E && done + 0.5 * expert_flops(g, r, e) < target)
            done += expert_flops(g, r, e++);
        bounds[k] = e;
    }
    bounds[ranks] = r->E;
}

/* One rank's share of a MoE layer's experts, run on its own host thread
 * (rank 0: the caller's). */
typedef struct rank_job {
    gpu_run *g;
    const moeq_layer_weights *lw;
    const moeq_cuda_gptq_prepared *prep_all; /* rank 0's */
    const routing *rt;                       /* rank 0's */
    int e_begin, e_end;
    uint8_t *codes_next, *codes_end;         /* its slice of the layer's codes buffer */
    uint8_t *shared_next, *shared_end;       /* rank 0: the shared expert's */
    moeq_layer_result part;                  /* what it quantized (and, rank 0, its times) */
    pthread_t thread;
    int started, stopped;                    /* stopped: because another rank failed */
    moeq_code rc;
    moeq_error err;
} rank_job;

static moeq_code stopped_by_other(rank_job *j, moeq_error *err)
{
    j->stopped = 1;
    return moeq_fail(err, MOEQ_ERR_IO, "stopped: another GPU of the run failed");
}

/* A rank's experts: a peer first takes a copy of what they read from rank 0
 * (routing from the host arrays; the normed input, the router
 * probabilities and the shared gate/up preparation by NCCL broadcast),
 * every rank runs its range (rank 0 then the shared expert), and the
 * block outputs are summed into rank 0's accumulator by an NCCL reduce. A
 * run of one GPU does the same with nothing to copy or sum. */
static moeq_code rank_experts(rank_job *j, moeq_error *err)
{
    gpu_run *g = j->g;
    const moeq_cuda_comm *comm = &g->team->comm;
    const int peer = g->rank > 0, gptq_on = g->opt->method == MOEQ_METHOD_GPTQ;
    const int weighted = g->opt->expert_calib == MOEQ_EXPERT_CALIB_WEIGHTED;
    const size_t nh = (size_t)g->n * g->cfg->hidden_size;
    gpu_layer W = {.g = g, .res = &j->part, .t_stage = moeq_now_seconds()};
    routing own = {0};
    const routing *rt = j->rt;
    moeq_cuda_gptq_prepared mirror = {0};
    const moeq_cuda_gptq_prepared *prep_all = j->prep_all;
    moeq_code rc = MOEQ_OK;
    g->codes_next = j->codes_next;
    g->codes_end = j->codes_end;
    if (peer) {
        own = *j->rt; /* the host arrays, borrowed; the device ones are this rank's */
        own.d_idx = own.d_wts = own.probs_t = own.logits = own.topw = own.tope =
            (moeq_cuda_buf){0};
        rt = &own;
        const size_t nk = (size_t)g->n * own.k;
        if ((rc = moeq_cuda_alloc(&g->cu, &g->h, 2 * nh, "normed hidden states", err)) ||
            (rc = moeq_cuda_alloc(&g->cu, &g->x, sizeof(float) * nh, "MLP block outputs",
                                  err)) ||
            (rc = MOEQ_CU(cudaMemsetAsync(g->x.ptr, 0, g->x.bytes, g->cu.stream))) ||
            (rc = moeq_cuda_alloc(&g->cu, &own.d_idx, sizeof(int32_t) * nk, "expert tokens",
                                  err)) ||
            (rc = moeq_cuda_alloc(&g->cu, &own.d_wts, sizeof(float) * nk,
                                  "expert token weights", err)) ||
            (rc = moeq_cuda_upload(&g->cu, own.d_idx.ptr, own.idx, own.d_idx.bytes, err)) ||
            (rc = moeq_cuda_upload(&g->cu, own.d_wts.ptr, own.wts, own.d_wts.bytes, err)) ||
            (weighted && (rc = moeq_cuda_alloc(&g->cu, &own.probs_t, j->rt->probs_t.bytes,
                                               "router probabilities", err))) ||
            (gptq_on && (rc = moeq_cuda_gptq_prepared_mirror(&g->cu, j->prep_all, &mirror, err))))
            goto done;
        prep_all = &mirror;
    }
    if (team_agree(g->team, rc)) {
        rc = rc ? rc : stopped_by_other(j, err);
        goto done;
    }
    if (comm->n > 1) {
        const cudaStream_t st = g->cu.stream;
        moeq_error end_err = {0};
        int grouped = !(rc = moeq_cuda_comm_group_start(err));
        if (grouped)
            rc = moeq_cuda_comm_bcast(comm, g->rank, g->h.ptr, 2 * nh, st, err);
        if (!rc && weighted)
            rc = moeq_cuda_comm_bcast(comm, g->rank, rt->probs_t.ptr, rt->probs_t.bytes, st, err);
        if (!rc && gptq_on &&
            !(rc = moeq_cuda_comm_bcast(comm, g->rank, prep_all->hinv.ptr, prep_all->hinv.bytes,
                                        st, err)) &&
            !(rc = moeq_cuda_comm_bcast(comm, g->rank, prep_all->perm.ptr, prep_all->perm.bytes,
                                        st, err)))
            rc = moeq_cuda_comm_bcast(comm, g->rank, prep_all->dead.ptr, prep_all->dead.bytes, st,
                                      err);
        moeq_code end = grouped ? moeq_cuda_comm_group_end(&end_err) : MOEQ_OK;
        if (!rc && end) {
            *err = end_err;
            rc = end;
        }
        if (!rc)
            rc = gpu_sync_time(&W, &W.res->seconds_capture, err);
    }
    /* From here on every rank reaches the agreement before the reduce. */
    if (!rc)
        rc = experts_range(&W, j->lw, prep_all, rt, j->e_begin, j->e_end, err);
    if (!rc && !peer && j->lw->has_shared) {
        g->codes_next = j->shared_next;
        g->codes_end = j->shared_end;
        rc = all_token_mlp(&W, &j->lw->shared, MOEQ_SHARED_ROLES, prep_all, j->lw->shared_gate,
                           err);
    }
    if (comm->n > 1) {
        if (team_agree(g->team, rc)) {
            rc = rc ? rc : stopped_by_other(j, err);
            goto done;
        }
        float *acc = g->resid_host ? g->acc.ptr : g->x.ptr;
        if (!(rc = moeq_cuda_comm_reduce_sum(comm, g->rank, acc, nh, g->cu.stream, err)))
            rc = gpu_sync_time(&W, &W.res->seconds_forward, err);
    }
done:
    if (peer) {
        moeq_cuda_gptq_prepared_free(&g->cu, &mirror);
        routing_free_device(g, &own);
        moeq_cuda_free(&g->cu, &g->h);
        moeq_cuda_free(&g->cu, &g->x);
    }
    g->codes_next = g->codes_end = NULL;
    return rc;
}

static void *rank_main(void *arg)
{
    rank_job *j = arg;
    if (!team_wait_gate(j->g->team))
        return NULL;
    if (cudaSetDevice(j->g->cu.device) != cudaSuccess) {
        moeq_error *err = &j->err;
        j->rc = MOEQ_CU(cudaSetDevice(j->g->cu.device));
        team_agree(j->g->team, j->rc); /* the others stop at their first agreement */
        return NULL;
    }
    j->rc = rank_experts(j, &j->err);
    return NULL;
}

/* The MoE block of a layer: routing on the primary, the experts split over
 * the run's GPUs by FLOPs, their outputs summed into the primary's block
 * accumulator, their linears in expert order (the shared expert's last). */
static moeq_code experts_stage(gpu_layer *L, const moeq_layer_weights *lw,
                               const moeq_cuda_gptq_prepared *prep_all, moeq_error *err)
{
    gpu_run *g = L->g;
    team *t = g->team;
    const int ranks = t->comm.n, E = g->cfg->num_experts;
    const size_t per_expert = 3 * (size_t)g->cfg->hidden_size * g->cfg->moe_intermediate_size;
    routing r = {0};
    rank_job jobs[MOEQ_MAX_DEVICES];
    int bounds[MOEQ_MAX_DEVICES + 1];
    memset(jobs, 0, sizeof jobs);
    moeq_code rc;
    if ((rc = gpu_route(L, lw, &r, err)) || (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    gpu_awq_routing_changes(L, &r);
    split_experts(g, &r, lw->has_shared ? all_token_mlp_flops(g, lw->shared.intermediate) : 0,
                  ranks, bounds);
    if (g->opt->progress && ranks > 1) {
        fprintf(g->opt->progress, "layer %d: experts", L->res->layer + 1);
        for (int k = 0; k < ranks; k++)
            fprintf(g->opt->progress, "%s %d-%d on GPU %d", k ? "," : "", bounds[k],
                    bounds[k + 1] - 1, t->run[k]->cu.device);
        fprintf(g->opt->progress, "%s\n", lw->has_shared ? " (and the shared expert on the first)" : "");
    }
    /* The codes of expert e go to its place in the layer's buffer whichever
     * rank quantizes it; the shared expert's after all of them. */
    uint8_t *base = g->codes_next;
    const int fits = base && (size_t)(g->codes_end - base) >= (size_t)E * per_expert;
    for (int k = 0; k < ranks; k++) {
        rank_job *j = &jobs[k];
        *j = (rank_job){.g = t->run[k], .lw = lw, .prep_all = prep_all, .rt = &r,
                        .e_begin = bounds[k], .e_end = bounds[k + 1]};
        j->part.layer = L->res->layer;
        if (fits) {
            j->codes_next = base + (size_t)bounds[k] * per_expert;
            j->codes_end = base + (size_t)bounds[k + 1] * per_expert;
        }
    }
    if (fits) {
        jobs[0].shared_next = base + (size_t)E * per_expert;
        jobs[0].shared_end = g->codes_end;
    }
    t->gate = 0;
    int started = 1;
    for (int k = 1; k < ranks && started; k++)
        started = jobs[k].started = !pthread_create(&jobs[k].thread, NULL, rank_main, &jobs[k]);
    team_set_gate(t, started ? 1 : -1);
    if (!started) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "cannot start a host thread for each GPU");
    } else {
        jobs[0].rc = rank_experts(&jobs[0], &jobs[0].err);
    }
    for (int k = 1; k < ranks; k++)
        if (jobs[k].started)
            pthread_join(jobs[k].thread, NULL);
    if (!rc) { /* the first failure that was not only a consequence of another */
        for (int k = 0; k < ranks && !rc; k++)
            if (jobs[k].rc && !jobs[k].stopped) {
                *err = jobs[k].err;
                rc = jobs[k].rc;
                if (k > 0)
                    moeq_wrap(err, "CUDA device %d: ", t->run[k]->cu.device);
            }
        for (int k = 0; k < ranks && !rc; k++)
            if (jobs[k].rc) {
                *err = jobs[k].err;
                rc = jobs[k].rc;
            }
    }
    /* Rank 0's stage times are the layer's; the wait for the others went
     * into its forward time (before the reduce). */
    moeq_layer_result *p0 = &jobs[0].part;
    L->res->seconds_capture += p0->seconds_capture;
    L->res->seconds_hessian += p0->seconds_hessian;
    L->res->seconds_prepare += p0->seconds_prepare;
    L->res->seconds_solve += p0->seconds_solve;
    L->res->seconds_forward += p0->seconds_forward;
    L->t_stage = moeq_now_seconds();
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (int k = 0; k < ranks && !rc; k++) {
            moeq_layer_result *p = &jobs[k].part;
            for (int i = 0; i < p->n_linears && !rc; i++) {
                if ((p->linears[i].expert >= 0) != (pass == 0))
                    continue;
                moeq_quantized_linear *ql = gpu_new_linear(L, err);
                if (!ql) {
                    rc = MOEQ_ERR_OOM;
                    break;
                }
                *ql = p->linears[i];
                memset(&p->linears[i], 0, sizeof p->linears[i]);
            }
        }
done:
    for (int k = 0; k < ranks; k++)
        moeq_layer_result_free(&jobs[k].part);
    gpu_routing_free(g, &r);
    return rc;
}

static moeq_code mlp_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size, n = g->n;
    const size_t nh = (size_t)n * H;
    moeq_cuda_buf norm = {0}, bad_count = {0};
    moeq_cuda_gptq_prepared prep = {0};
    int bad = 0;
    moeq_code rc;
    /* The block accumulator: on the device, x is free now (x1 holds the
     * residual); in host mode, acc for this stage. The output is x1 plus
     * the block. */
    float *acc = g->x.ptr;
    if ((rc = gpu_upload_f32(g, lw->mlp_norm, (size_t)H, "MLP norm", &norm, err)) ||
        (rc = gpu_norm_residual(g, &g->x1, g->x1h, norm.ptr, err)) ||
        (g->resid_host &&
         (rc = moeq_cuda_alloc(&g->cu, &g->acc, sizeof(float) * nh, "MLP block outputs", err))))
        goto done;
    if (g->resid_host)
        acc = g->acc.ptr;
    if ((rc = MOEQ_CU(cudaMemsetAsync(acc, 0, sizeof(float) * nh, g->cu.stream))) ||
        (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    if (gpu_uses_hessians(L) &&
        (rc = gpu_hessian_prepare(L, g->h.ptr, n, H, NULL, 2.0f / (float)n,
                                  lw->is_moe ? "gate/up_proj (all tokens)" : "gate/up_proj", &prep,
                                  err)))
        goto done;
    if (lw->is_moe)
        rc = experts_stage(L, lw, &prep, err);
    else
        rc = all_token_mlp(L, &lw->dense, MOEQ_DENSE_ROLES, &prep, NULL, err);
    /* The layer output x = x1 + block, its non-finite values counted on
     * the device (chunk by chunk in host mode) and read once. */
    if (!rc && !(rc = moeq_cuda_alloc(&g->cu, &bad_count, sizeof(int), "non-finite count", err)))
        rc = MOEQ_CU(cudaMemsetAsync(bad_count.ptr, 0, sizeof(int), g->cu.stream));
    if (!rc && !g->resid_host) {
        if (!(rc = MOEQ_CU(moeq_k_gated_add(g->x1.ptr, NULL, n, H, acc, g->cu.stream))))
            rc = MOEQ_CU(moeq_k_count_nonfinite(acc, nh, bad_count.ptr, g->cu.stream));
    }
    for (int c0 = 0; !rc && g->resid_host && c0 < n; c0 += g->chunk) {
        int m = n - c0 < g->chunk ? n - c0 : g->chunk;
        float *out = acc + (size_t)c0 * H;
        if (!(rc = moeq_cuda_upload(&g->cu, g->stage.ptr, g->x1h + (size_t)c0 * H,
                                    sizeof(float) * (size_t)m * H, err)) &&
            !(rc = MOEQ_CU(moeq_k_gated_add(g->stage.ptr, NULL, m, H, out, g->cu.stream))) &&
            !(rc = moeq_cuda_download(&g->cu, g->xh + (size_t)c0 * H, out,
                                      sizeof(float) * (size_t)m * H, err)))
            rc = MOEQ_CU(moeq_k_count_nonfinite(out, (size_t)m * H, bad_count.ptr, g->cu.stream));
    }
    if (!rc && !(rc = moeq_cuda_download(&g->cu, &bad, bad_count.ptr, sizeof(int), err)))
        rc = moeq_cuda_sync(&g->cu, err);
    if (!rc && bad)
        rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                       "layer %d: %d non-finite values in the layer output: the model or the "
                       "calibration data produce NaN/Inf",
                       L->res->layer, bad);
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    moeq_cuda_free(&g->cu, &norm);
    moeq_cuda_free(&g->cu, &bad_count);
    moeq_cuda_free(&g->cu, &g->acc);
    return rc;
}

/* The stages of one decoder layer after its codes are reserved: the
 * attention block (Gated DeltaNet on linear layers, MLA where the model
 * has it), then the MLP or experts. The numbered layers and the MTP layer both run through here, so
 * the MTP layer runs every layer kind the loop has. */
static moeq_code layer_stages(gpu_layer *L, moeq_layer_weights *lw, moeq_error *err)
{
    /* AWQ folds its scales into lw's host weights before each stage. */
    const int awq = L->g->opt->method == MOEQ_METHOD_AWQ && !L->g->forward_only;
    moeq_code rc = awq ? gpu_awq_attention_scales(L, lw, err) : MOEQ_OK;
    if (!rc)
        rc = lw->is_linear                                  ? gpu_deltanet_stage(L, lw, err)
             : L->g->cfg->attention == MOEQ_ATTENTION_MLA ? gpu_mla_stage(L, lw, err)
                                                          : gpu_attention_stage(L, lw, err);
    char point[32];
    snprintf(point, sizeof point, "layer-%d-mid", L->res->layer);
    moeq_failpoint(point, NULL); /* a test hook: killed mid-layer */
    if (!rc && awq)
        rc = gpu_awq_mlp_scales(L, lw, err);
    if (!rc)
        rc = mlp_stage(L, lw, err);
    if (!rc)
        gpu_awq_finish_layer(L);
    gpu_awq_free(L);
    return rc;
}

/* Every GPU of the run works on windows of T tokens of the model cfg
 * describes (the MTP layer's view, or the model again after it). */
static void team_windows(team *t, int ranks, const moeq_config *cfg, int S, int T)
{
    for (int k = 0; k < ranks; k++) {
        t->run[k]->cfg = cfg;
        t->run[k]->S = S;
        t->run[k]->T = T;
        t->run[k]->n = S * T;
    }
}

/* The MTP layer after the last one (model/mtp.h), calibrated on its true
 * inputs over windows one token shorter: its input built on the GPU
 * (mtp_cuda.c), then the stages of a numbered layer on its weights, seen
 * through the MTP view of the model; written after the last layer. */
static moeq_code mtp_layer(gpu_run *g, const moeq_model *model, const moeq_calib_set *calib,
                           const moeq_layer_sink *sink, moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    const int ranks = g->opt->n_devices > 1 ? g->opt->n_devices : 1, H = cfg->hidden_size;
    moeq_mtp mtp = {0};
    moeq_mtp_weights w = {0};
    float *final_norm = NULL;
    moeq_layer_result res = {.layer = cfg->num_layers};
    gpu_layer L = {.g = g, .res = &res};
    const double t0 = moeq_now_seconds();
    moeq_code rc;
    if (g->T < 2)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--quantize-mtp needs windows of at least 2 tokens (--seqlen)");
    if ((rc = moeq_mtp_open(model, &mtp, err)) || (rc = moeq_mtp_weights_load(&mtp, &w, err)) ||
        (rc = moeq_model_load_f32(model, MOEQ_T_FINAL_NORM, -1, -1, H, 0, &final_norm, err)))
        goto done;
    moeq_model_center_norm(model, final_norm, H);
    const int quantize_fc = !model->arch.mtp_keep_fc;
    res.names = &mtp.view.arch;
    res.seconds_load = moeq_now_seconds() - t0;
    if (g->opt->progress)
        fprintf(g->opt->progress, "MTP block: loaded in %.2f s, quantizing %sattention and %s "
                                  "on %s\n",
                res.seconds_load, quantize_fc ? "fc, " : "", w.layer.is_moe ? "experts" : "MLP",
                g->cu.device_name);
    L.t_stage = moeq_now_seconds();
    if ((gpu_uses_hessians(&L) &&
         (rc = codes_for_layer(g, cfg->num_layers, &w.layer, quantize_fc ? 2 * (size_t)H * H : 0,
                               err))) ||
        (rc = gpu_mtp_input(&L, &mtp, &w, final_norm, calib->tokens, err)))
        goto done;
    team_windows(g->team, ranks, &mtp.view.cfg, g->S, g->T - 1);
    rc = layer_stages(&L, &w.layer, err);
    team_windows(g->team, ranks, cfg, g->S, g->T + 1);
    res.seconds_wall = moeq_now_seconds() - t0;
    if (!rc && sink)
        rc = sink->write_layer(sink->ctx, &res, err);
done:
    moeq_layer_result_free(&res);
    free(final_norm);
    moeq_mtp_weights_free(&w);
    moeq_mtp_close(&mtp);
    return rc;
}

/* ---- overlapped memory mode: helper threads */

/* Pins (page-locks) or unpins the large host arrays of a layer so that
 * their uploads run at full speed and asynchronously, to every GPU of the
 * run (portable). Pinning is an optimisation: an array that cannot be
 * pinned is uploaded from pageable memory, so failures are ignored (and
 * the sticky-free error cleared). The experts' arrays are pinned on
 * several threads: page-locking gigabytes costs about as much as reading
 * them. */
typedef struct pin_job {
    const moeq_config *cfg;
    const moeq_layer_weights *lw;
    int pin, device;
} pin_job;

static void pin_array(void *p, size_t bytes, int pin)
{
    if (!p)
        return;
    if (pin)
        (void)cudaHostRegister(p, bytes, cudaHostRegisterPortable);
    else
        (void)cudaHostUnregister(p);
}

/* Item i: MLP i of the layer (its experts, then the shared expert or the
 * dense MLP), or, last, the token mixer's projections. */
static moeq_code pin_item(void *ctx, int i, moeq_error *err)
{
    (void)err;
    const pin_job *j = ctx;
    const moeq_config *cfg = j->cfg;
    const moeq_layer_weights *lw = j->lw;
    const size_t H = (size_t)cfg->hidden_size, qd = (size_t)cfg->num_heads * cfg->head_dim,
                 kvd = (size_t)cfg->num_kv_heads * cfg->head_dim;
    const int n_mlps = lw->is_moe ? lw->n_experts + lw->has_shared : 1;
    if (cudaSetDevice(j->device) != cudaSuccess) { /* the threads are new */
        (void)cudaGetLastError();
        return MOEQ_OK;
    }
    if (i == n_mlps && lw->is_linear) {
        const moeq_deltanet_weights *w = &lw->la;
        const size_t kd = (size_t)cfg->la_num_k_heads * cfg->la_k_head_dim,
                     vd = (size_t)cfg->la_num_v_heads * cfg->la_v_head_dim;
        pin_array(w->in_qkvz, sizeof(float) * (2 * kd + 2 * vd) * H, j->pin);
        pin_array(w->in_qkv, sizeof(float) * (2 * kd + vd) * H, j->pin);
        pin_array(w->in_z, sizeof(float) * vd * H, j->pin);
        pin_array(w->out, sizeof(float) * H * vd, j->pin);
    } else if (i == n_mlps && cfg->attention == MOEQ_ATTENTION_MLA) {
        gpu_mla_linear lin[GPU_MLA_MAX_LINEARS];
        for (int k = 0, count = gpu_mla_linears(cfg, lw, lin); k < count; k++)
            pin_array((void *)lin[k].w, sizeof(float) * (size_t)lin[k].rows * lin[k].cols,
                      j->pin);
    } else if (i == n_mlps) {
        pin_array(lw->q, sizeof(float) * (cfg->attn_output_gate ? 2 : 1) * qd * H, j->pin);
        pin_array(lw->k, sizeof(float) * kvd * H, j->pin);
        pin_array(lw->v, sizeof(float) * kvd * H, j->pin);
        pin_array(lw->o, sizeof(float) * H * qd, j->pin);
    } else {
        const moeq_mlp_weights *w = !lw->is_moe ? &lw->dense
                                    : i < lw->n_experts ? &lw->experts[i]
                                                        : &lw->shared;
        const size_t count = H * (size_t)w->intermediate;
        pin_array(w->gate, sizeof(float) * count, j->pin);
        pin_array(w->up, sizeof(float) * count, j->pin);
        pin_array(w->down, sizeof(float) * count, j->pin);
        pin_array(w->gate16, 2 * count, j->pin);
        pin_array(w->up16, 2 * count, j->pin);
        pin_array(w->down16, 2 * count, j->pin);
    }
    (void)cudaGetLastError();
    return MOEQ_OK;
}

static void layer_pin(const moeq_config *cfg, const moeq_layer_weights *lw, int device, int pin)
{
    pin_job j = {cfg, lw, pin, device};
    const int n_items = (lw->is_moe ? lw->n_experts + lw->has_shared : 1) + 1;
    moeq_error ignored = {0};
    (void)moeq_parallel_for(n_items, 0, pin_item, &j, &ignored);
}

/* Reads one layer's weights on a helper thread, and pins them. */
typedef struct loader {
    pthread_t thread;
    int running;
    int device;
    const moeq_model *model;
    int layer;
    moeq_layer_weights lw;
    unsigned flags; /* of moeq_layer_weights_load_flags */
    double seconds, seconds_pin; /* all of it; pinning the weights (part of it) */
    moeq_code rc;
    moeq_error err;
} loader;

static void *loader_main(void *arg)
{
    loader *ld = arg;
    double t0 = moeq_now_seconds();
    ld->rc = moeq_layer_weights_load_flags(ld->model, ld->layer, ld->flags, &ld->lw, &ld->err);
    double t1 = moeq_now_seconds();
    if (!ld->rc && cudaSetDevice(ld->device) == cudaSuccess)
        layer_pin(&ld->model->cfg, &ld->lw, ld->device, 1);
    (void)cudaGetLastError();
    ld->seconds = moeq_now_seconds() - t0;
    ld->seconds_pin = moeq_now_seconds() - t1;
    return NULL;
}

static moeq_code loader_start(loader *ld, const moeq_model *model, int device, int layer,
                              moeq_error *err)
{
    ld->model = model;
    ld->device = device;
    ld->layer = layer;
    ld->rc = MOEQ_OK;
    int e = pthread_create(&ld->thread, NULL, loader_main, ld);
    if (e)
        return moeq_fail(err, MOEQ_ERR_OOM, "cannot start the weight reader thread: %s",
                         strerror(e));
    ld->running = 1;
    return MOEQ_OK;
}

/* Waits for the reader; on success *lw holds its layer's weights. */
static moeq_code loader_finish(loader *ld, moeq_layer_weights *lw, double *seconds,
                               moeq_error *err)
{
    if (!ld->running)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "no weight reader is running");
    pthread_join(ld->thread, NULL);
    ld->running = 0;
    if (ld->rc) {
        *err = ld->err;
        return ld->rc;
    }
    *lw = ld->lw;
    *seconds = ld->seconds;
    return MOEQ_OK;
}

/* Packs and writes one finished layer on a helper thread, then unpins and
 * frees that layer's source weights (unpinning gigabytes takes a while). */
typedef struct writer {
    pthread_t thread;
    int running;
    const moeq_layer_sink *sink;
    const moeq_config *cfg;
    int device; /* the primary GPU (unpinning) */
    moeq_layer_result res;
    moeq_layer_weights lw;
    const float *hidden; /* the layer's output on the host, for layer_done (borrowed) */
    size_t hidden_count;
    moeq_code rc;
    moeq_error err;
} writer;

static void writer_work(writer *w, moeq_error *err)
{
    int layer = w->res.layer;
    w->rc = w->sink ? w->sink->write_layer(w->sink->ctx, &w->res, err) : MOEQ_OK;
    if (!w->rc && w->sink && w->sink->layer_done && w->hidden)
        w->rc = w->sink->layer_done(w->sink->ctx, layer, w->hidden, w->hidden_count, err);
    w->hidden = NULL;
    moeq_layer_result_free(&w->res);
    layer_pin(w->cfg, &w->lw, w->device, 0);
    moeq_layer_weights_free(&w->lw);
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    writer_work(w, &w->err);
    return NULL;
}

/* Hands *res and *lw to the writer thread (both are zeroed: the writer
 * frees them); hidden is read until writer_finish. */
static moeq_code writer_start(writer *w, const moeq_layer_sink *sink, const moeq_config *cfg,
                              moeq_layer_result *res, moeq_layer_weights *lw,
                              const float *hidden, size_t hidden_count, moeq_error *err)
{
    w->sink = sink;
    w->cfg = cfg;
    w->hidden = hidden; /* stays valid until writer_finish */
    w->hidden_count = hidden_count;
    w->res = *res;
    w->lw = *lw;
    memset(res, 0, sizeof *res);
    memset(lw, 0, sizeof *lw);
    w->rc = MOEQ_OK;
    if (pthread_create(&w->thread, NULL, writer_main, w)) { /* do it here instead */
        writer_work(w, err);
        return w->rc;
    }
    w->running = 1;
    return MOEQ_OK;
}

/* Waits for the writer (if one runs) and returns its result. */
static moeq_code writer_finish(writer *w, moeq_error *err)
{
    if (!w->running)
        return MOEQ_OK;
    pthread_join(w->thread, NULL);
    w->running = 0;
    if (w->rc)
        *err = w->err;
    return w->rc;
}

int moeq_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver or no device: clear the sticky error */
        return 0;
    }
    return n;
}

moeq_code moeq_cuda_pipeline_supports(const moeq_model *model, const moeq_quantize_options *opt,
                                      moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    if (!opt->true_sequential)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "the CUDA pipeline calibrates true-sequentially only: drop "
                         "--true-sequential false or use --device cpu");
    if (model->arch.linear_attention != MOEQ_LINEAR_ATTENTION_NONE &&
        (cfg->la_k_head_dim > MOEQ_K_DELTA_MAX_DK || cfg->la_v_head_dim > MOEQ_K_DELTA_MAX_DV))
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "Gated DeltaNet heads of linear_key_head_dim %d and "
                         "linear_value_head_dim %d (%s; the CUDA delta rule holds at most %d and "
                         "%d) are not in the CUDA pipeline: use --device cpu",
                         cfg->la_k_head_dim, cfg->la_v_head_dim, model->arch.name,
                         MOEQ_K_DELTA_MAX_DK, MOEQ_K_DELTA_MAX_DV);
    /* The MTP layer runs through the stages of a numbered layer (the
     * model's attention kind, MoE like its sparse layers), so the checks
     * below are its checks too; here only its form (one layer). */
    if (opt->quantize_mtp) {
        moeq_mtp mtp;
        moeq_code rc = moeq_mtp_open(model, &mtp, err);
        if (rc)
            return rc;
        moeq_mtp_close(&mtp);
    }
    if (cfg->num_experts > 0 && cfg->n_group > MOEQ_K_ROUTER_MAX_GROUPS)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "group-limited expert choice over n_group = %d groups (the CUDA router "
                         "takes at most %d) is not in the CUDA pipeline: use --device cpu",
                         cfg->n_group, MOEQ_K_ROUTER_MAX_GROUPS);
    const char *awq_missing = opt->method == MOEQ_METHOD_AWQ ? moeq_awq_missing(model, opt) : NULL;
    if (awq_missing)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "--method awq is not implemented for %s: use --method gptq", awq_missing);
    if (opt->method == MOEQ_METHOD_AWQ && opt->n_devices > 1)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "AWQ (--method awq) on several GPUs (--devices) is not in the CUDA "
                         "pipeline: use one GPU or --device cpu");
    return MOEQ_OK;
}

/* The layer loop over calib's windows: quantizing (sink receives each
 * layer), or, forward_only, the model's own forward, whose final hidden
 * states (before the final norm) land in *hidden_out. */
static moeq_code run_layers(const moeq_model *model, const moeq_calib_set *calib,
                            const moeq_quantize_options *opt, const moeq_layer_sink *sink,
                            int forward_only, float **hidden_out, size_t *peak_device_bytes,
                            moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    gpu_run g = {.model = model, .cfg = cfg, .opt = opt, .S = calib->nsamples,
                 .T = calib->seqlen, .forward_only = forward_only};
    g.n = g.S * g.T;
    g.qdim = moeq_o_proj_in_dim(cfg); /* GQA: Hq D; MLA: Hq v_head_dim */
    g.kvdim = cfg->num_kv_heads * cfg->head_dim;
    /* Expert products run over chunks of 32768 tokens (GEMMs large enough
     * for the tensor cores), fewer under a small budget: the chunk's scratch
     * is about (6 H + 12 I) bytes a token, I the widest MLP the model runs
     * (intermediate_size only counts when a layer is dense). */
    g.chunk = 32768;
    if (opt->vram_budget) {
        int widest = cfg->num_experts ? cfg->moe_intermediate_size : cfg->intermediate_size;
        for (int l = 0; l < cfg->num_layers; l++)
            if (!cfg->layer_is_moe[l] && cfg->intermediate_size > widest)
                widest = cfg->intermediate_size;
        if (cfg->shared_expert_intermediate_size > widest)
            widest = cfg->shared_expert_intermediate_size;
        size_t per_token = 6 * (size_t)cfg->hidden_size + 12 * (size_t)widest;
        size_t fit = opt->vram_budget / 32 / per_token;
        g.chunk = fit < 1024 ? 1024 : fit < (size_t)g.chunk ? (int)fit : g.chunk;
    }
    if (opt->token_chunk > 0 && opt->token_chunk < g.chunk)
        g.chunk = opt->token_chunk;
    moeq_rope_cache rope = {0};
    float *x = NULL;
    loader ld = {0};
    writer wr = {0};
    float *hidden_host[2] = {NULL, NULL};
    const int ranks = opt->n_devices > 1 ? opt->n_devices : 1;
    team tm = {.run = {&g}};
    gpu_run *peers = NULL; /* ranks 1.. */
    moeq_code rc;
    if ((rc = moeq_cuda_pipeline_supports(model, opt, err)))
        return rc;
    pthread_mutex_init(&tm.mu, NULL);
    pthread_cond_init(&tm.cv, NULL);
    g.team = &tm;
    const size_t nh = (size_t)g.n * cfg->hidden_size;
    /* The primary, each further GPU, then NCCL over all of them; the
     * primary is this thread's device from then on. */
    if ((rc = moeq_cuda_init(&g.cu, opt->devices[0], err)))
        goto done;
    g.cu.budget_bytes = opt->vram_budget;
    wr.device = g.cu.device;
    /* MLP and expert weights stay bf16 on the host when stored so: half the
     * memory, bytes to pin and bytes to upload; widened on the device. */
    ld.flags = opt->host_fp32_weights ? 0 : MOEQ_WEIGHTS_KEEP_BF16;
    /* AWQ folds its scales into the weights on the host, in fp32 as the
     * CPU loop. */
    const int awq = opt->method == MOEQ_METHOD_AWQ && !forward_only;
    if (awq)
        ld.flags = 0;
    if (ranks > 1) {
        if (!(peers = calloc((size_t)ranks, sizeof *peers))) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
            goto done;
        }
        for (int k = 1; k < ranks; k++) {
            gpu_run *p = &peers[k];
            *p = (gpu_run){.model = model, .cfg = cfg, .opt = opt, .S = g.S, .T = g.T, .n = g.n,
                           .chunk = g.chunk, .qdim = g.qdim, .kvdim = g.kvdim, .rank = k,
                           .team = &tm, .forward_only = forward_only};
            tm.run[k] = p;
            if ((rc = moeq_cuda_init(&p->cu, opt->devices[k], err)))
                goto done;
            p->cu.budget_bytes = opt->vram_budget;
        }
    }
    if ((rc = moeq_cuda_comm_init(&tm.comm, opt->devices, ranks, err)) ||
        (rc = MOEQ_CU(cudaSetDevice(g.cu.device))))
        goto done;
    if (ranks > 1 && cfg->num_experts > 0 && opt->vram_budget) {
        /* What a further GPU holds during a MoE layer besides its experts:
         * the normed input and its block output, the routing, the router
         * probabilities (weighted) and the shared gate/up preparation. */
        const size_t H = (size_t)cfg->hidden_size, nk = (size_t)g.n * cfg->num_experts_per_tok;
        size_t need = nh * 6 + nk * 8 + sizeof(float) * H * H +
                      (opt->expert_calib == MOEQ_EXPERT_CALIB_WEIGHTED
                           ? sizeof(float) * (size_t)g.n * cfg->num_experts
                           : 0) +
                      expert_bytes(&g, cfg->moe_intermediate_size);
        if (need > opt->vram_budget) {
            rc = moeq_fail(err, MOEQ_ERR_OOM,
                           "--vram-budget %.2f GiB is below the %.2f GiB that each further GPU "
                           "needs for one expert and the layer's shared inputs and outputs "
                           "(%d calibration tokens, hidden %d): raise the budget, lower "
                           "--nsamples or --seqlen, or use one GPU",
                           opt->vram_budget / 1073741824.0, need / 1073741824.0, g.n,
                           cfg->hidden_size);
            goto done;
        }
    }
    if (opt->progress && ranks > 1) {
        fprintf(opt->progress, "GPUs:");
        for (int k = 0; k < ranks; k++)
            fprintf(opt->progress, " %d (%s)%s", tm.run[k]->cu.device, tm.run[k]->cu.device_name,
                    k ? "" : " primary: attention, routing, residual stream");
        fprintf(opt->progress, "; experts split over all by FLOPs, NCCL between them\n");
    }
    if ((rc = moeq_rope_cache_init(cfg, &rope, err)))
        goto done;
    g.rotary_dim = rope.rotary_dim;
    g.attention_factor = rope.attention_factor;
    /* Where the activations live. On the device: the residual stream twice
     * (fp32), the normed input and the attention output (bf16; MLA: and
     * its latents and the rope part of its keys). When the budget cannot
     * hold that, the residual stream moves to pinned host memory and the
     * device keeps the normed input, the larger of the token mixer's
     * activations and the MLP accumulator (never both at once), and a
     * chunk of the stream. */
    int odim = g.qdim; /* the widest token-mixer output: attention's, or DeltaNet's */
    for (int l = 0; l < cfg->num_layers; l++)
        if (cfg->layer_is_linear[l] && cfg->la_num_v_heads * cfg->la_v_head_dim > odim)
            odim = cfg->la_num_v_heads * cfg->la_v_head_dim;
    const size_t o_bytes = cfg->attention == MOEQ_ATTENTION_MLA
                               ? gpu_mla_activation_bytes(cfg, g.n)
                               : (size_t)g.n * odim * 2,
                 acc_bytes = nh * 4;
    const size_t on_device = nh * (4 + 4 + 2) + o_bytes;
    const size_t with_host = nh * 2 + (o_bytes > acc_bytes ? o_bytes : acc_bytes) +
                             sizeof(float) * (size_t)g.chunk * cfg->hidden_size;
    g.resid_host = opt->vram_budget > 0 && on_device > opt->vram_budget;
    if (g.resid_host && with_host > opt->vram_budget) {
        rc = moeq_fail(err, MOEQ_ERR_OOM,
                       "--vram-budget %.2f GiB is below the %.2f GiB that the activations of "
                       "%d calibration tokens need on the device even with the residual "
                       "stream in host memory (%.2f GiB with it on the device; hidden %d, "
                       "token-mixer output width %d): lower --nsamples or --seqlen, or raise "
                       "the budget",
                       opt->vram_budget / 1073741824.0, with_host / 1073741824.0, g.n,
                       on_device / 1073741824.0, cfg->hidden_size, odim);
        goto done;
    }
    if (g.resid_host) {
        if (opt->progress)
            fprintf(opt->progress,
                    "activations: %.2f GiB would not fit --vram-budget %.2f GiB on the device; "
                    "the residual stream (%.2f GiB) stays in pinned host memory\n",
                    on_device / 1073741824.0, opt->vram_budget / 1073741824.0,
                    2 * acc_bytes / 1073741824.0);
        if ((rc = moeq_cuda_host_alloc((void **)&g.xh, acc_bytes, "the residual stream", err)) ||
            (rc = moeq_cuda_host_alloc((void **)&g.x1h, acc_bytes, "the residual stream", err)) ||
            (rc = moeq_cuda_alloc(&g.cu, &g.stage, sizeof(float) * (size_t)g.chunk *
                                                       cfg->hidden_size,
                                  "residual stream chunk", err)))
            goto done;
        x = g.xh;
    } else if (!(x = malloc(acc_bytes))) {
        rc = moeq_fail(err, MOEQ_ERR_OOM,
                       "out of memory for the activations of %d calibration tokens", g.n);
        goto done;
    }
    if (opt->start_layer > 0)
        memcpy(x, opt->start_hidden, acc_bytes);
    else if ((rc = moeq_model_embed(model, calib->tokens, (size_t)g.n, x, err)))
        goto done;
    if ((!g.resid_host &&
         ((rc = gpu_upload_f32(&g, x, nh, "hidden states", &g.x, err)) ||
          (rc = moeq_cuda_alloc(&g.cu, &g.x1, sizeof(float) * nh, "hidden states", err)))) ||
        (rc = moeq_cuda_alloc(&g.cu, &g.h, 2 * nh, "normed hidden states", err)) ||
        (rc = gpu_upload_f32(&g, rope.inv_freq, (size_t)(rope.rotary_dim / 2), "RoPE frequencies",
                             &g.inv_freq, err)))
        goto done;
    if (!g.resid_host)
        free(x);
    x = NULL;
    const int overlap = !opt->wait_for_layer;
    if (overlap && (rc = loader_start(&ld, model, g.cu.device, opt->start_layer, err)))
        goto done;
    if (!forward_only && (opt->method == MOEQ_METHOD_GPTQ || opt->method == MOEQ_METHOD_AWQ) &&
        (rc = codes_pin_for_run(&g, opt->start_layer, opt->progress, err)))
        goto done;
    for (int l = opt->start_layer; l < cfg->num_layers; l++) {
        moeq_layer_result res = {.layer = l, .routing_changes = -1};
        gpu_layer L = {.g = &g, .res = &res};
        moeq_layer_weights lw;
        char pin_note[96] = "";
        double t_layer = moeq_now_seconds();
        if (overlap) {
            if ((rc = loader_finish(&ld, &lw, &res.seconds_load, err)))
                goto done;
            snprintf(pin_note, sizeof pin_note, " (%.2f s of it pinning; beside the previous layer)",
                     ld.seconds_pin);
            if (l + 1 < cfg->num_layers &&
                (rc = loader_start(&ld, model, g.cu.device, l + 1, err))) {
                layer_pin(cfg, &lw, g.cu.device, 0);
                moeq_layer_weights_free(&lw);
                goto done;
            }
        } else {
            if ((rc = moeq_layer_weights_load_flags(model, l, ld.flags, &lw, err)))
                goto done;
            res.seconds_load = moeq_now_seconds() - t_layer;
        }
        if (opt->progress && forward_only)
            fprintf(opt->progress, "  forward %s: layer %d/%d on %s\n", model->dir, l + 1,
                    cfg->num_layers, g.cu.device_name);
        else if (opt->progress)
            fprintf(opt->progress,
                    "layer %d/%d: weights read in %.2f s%s, quantizing %s on %s\n", l + 1,
                    cfg->num_layers, res.seconds_load,
                    overlap ? pin_note : "",
                    lw.is_linear ? (lw.is_moe ? "linear attention and experts"
                                              : "linear attention and MLP")
                                 : lw.is_moe ? "attention and experts" : "attention and MLP",
                    g.cu.device_name);
        L.t_stage = moeq_now_seconds();
        rc = gpu_uses_hessians(&L)
                 ? codes_for_layer(&g, l, &lw, 0, err)
                 : MOEQ_OK;
        if (!rc)
            rc = layer_stages(&L, &lw, err);
        gpu_trace_flush(l);
        /* The layer's output on the host, for the resumable record: two
         * pinned buffers taken in turn (the writer may still read the
         * other one, the previous layer's). */
        float *hidden = NULL;
        if (!rc && sink && sink->layer_done &&
            moeq_saves_state_after(opt, l, cfg->num_layers)) {
            /* Both pinned at the first save: a one-time cost of one layer. */
            for (int b = 0; b < 2 && !rc; b++)
                if (!hidden_host[b])
                    rc = moeq_cuda_host_alloc((void **)&hidden_host[b], sizeof(float) * nh,
                                              "the layer output", err);
            hidden = hidden_host[l & 1];
            if (!rc && g.resid_host)
                memcpy(hidden, g.xh, sizeof(float) * nh); /* the next layer rewrites xh */
            else if (!rc)
                rc = moeq_cuda_download(&g.cu, hidden, g.x.ptr, g.x.bytes, err);
            if (!rc)
                rc = moeq_cuda_sync(&g.cu, err);
        }
        if (!rc && overlap) {
            /* The previous layer's writer must be done first: one layer is
             * packed and written at a time. */
            if (!(rc = writer_finish(&wr, err))) {
                res.seconds_wall = moeq_now_seconds() - t_layer;
                rc = writer_start(&wr, sink, cfg, &res, &lw, hidden, nh, err);
            }
        } else if (!rc && sink) {
            res.seconds_wall = moeq_now_seconds() - t_layer;
            rc = sink->write_layer(sink->ctx, &res, err);
            if (!rc && hidden)
                rc = sink->layer_done(sink->ctx, l, hidden, nh, err);
        }
        if (overlap)
            layer_pin(cfg, &lw, g.cu.device, 0); /* lw is empty unless writer_start did not run */
        moeq_layer_weights_free(&lw);
        moeq_layer_result_free(&res);
        if (rc)
            goto done;
    }
    rc = writer_finish(&wr, err);
    if (!rc && opt->quantize_mtp)
        rc = mtp_layer(&g, model, calib, sink, err);
    if (!rc && hidden_out) { /* the last layer's output */
        if (!(*hidden_out = malloc(sizeof(float) * nh)))
            rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the final hidden states");
        else if (g.resid_host)
            memcpy(*hidden_out, g.xh, sizeof(float) * nh);
        else if ((rc = moeq_cuda_download(&g.cu, *hidden_out, g.x.ptr, g.x.bytes, err)) ||
                 (rc = moeq_cuda_sync(&g.cu, err))) {
            free(*hidden_out);
            *hidden_out = NULL;
        }
    }
done:
    if (rc) { /* stop the helpers; their own errors are secondary now */
        moeq_error ignored = {0};
        writer_finish(&wr, &ignored);
        moeq_layer_weights lw;
        double unused;
        if (ld.running && loader_finish(&ld, &lw, &unused, &ignored) == MOEQ_OK) {
            layer_pin(cfg, &lw, g.cu.device, 0);
            moeq_layer_weights_free(&lw);
        }
    }
    if (peak_device_bytes)
        for (int k = 0; k < ranks; k++)
            peak_device_bytes[k] = k == 0 ? g.cu.peak_bytes : peers ? peers[k].cu.peak_bytes : 0;
    moeq_cuda_host_free(hidden_host[0]);
    moeq_cuda_host_free(hidden_host[1]);
    moeq_cuda_host_free(g.codes_host[0]); /* the writer is done with them */
    moeq_cuda_host_free(g.codes_host[1]);
    if (!g.resid_host)
        free(x);
    moeq_cuda_host_free(g.xh);
    moeq_cuda_host_free(g.x1h);
    moeq_rope_cache_free(&rope);
    moeq_cuda_buf *bufs[] = {&g.x, &g.x1, &g.h, &g.o, &g.stage, &g.acc, &g.inv_freq};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moeq_cuda_free(&g.cu, bufs[i]);
    moeq_cuda_free_ctx(&g.cu);
    for (int k = 1; peers && k < ranks; k++)
        moeq_cuda_free_ctx(&peers[k].cu);
    free(peers);
    moeq_cuda_comm_free(&tm.comm);
    pthread_mutex_destroy(&tm.mu);
    pthread_cond_destroy(&tm.cv);
    return rc;
}

moeq_code moeq_quantize_layers_cuda(const moeq_model *model, const moeq_calib_set *calib,
                                    const moeq_quantize_options *opt, const moeq_layer_sink *sink,
                                    size_t *peak_device_bytes, moeq_error *err)
{
    return run_layers(model, calib, opt, sink, 0, NULL, peak_device_bytes, err);
}

moeq_code moeq_forward_hidden_cuda(const moeq_model *model, const int32_t *tokens,
                                   size_t n_windows, int seqlen, const int *devices,
                                   int n_devices, FILE *progress, float **hidden, moeq_error *err)
{
    *hidden = NULL;
    if (n_windows * (size_t)seqlen > INT32_MAX)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "%zu windows of %d tokens are too many for one forward", n_windows,
                         seqlen);
    /* The loop's forward with nothing quantized: no Hessians (RTN's path),
     * every expert on its routed tokens (bypass's bookkeeping, which warns
     * about no expert), no state saved. */
    moeq_quantize_options opt = {.method = MOEQ_METHOD_RTN, .gptq = moeq_gptq_default_config(),
                                 .expert_calib = MOEQ_EXPERT_CALIB_ALL, .true_sequential = 1,
                                 .n_devices = n_devices, .progress = progress};
    memcpy(opt.devices, devices, sizeof(int) * (size_t)(n_devices > 0 ? n_devices : 1));
    const moeq_calib_set windows = {.nsamples = (int)n_windows, .seqlen = seqlen,
                                    .tokens = (int32_t *)tokens};
    return run_layers(model, &windows, &opt, NULL, 1, hidden, NULL, err);
}
