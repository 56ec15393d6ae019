/* awq_cuda.c: AWQ (--method awq) in the CUDA layer loop, with the
 * algorithm and the decisions of the CPU's (src/pipeline/quantize_awq.c;
 * the numbers of src/quant/awq.h). Before each of the loop's two stages,
 * the input scales are searched and folded into the weights on the host:
 *  - attention: one scale for q/k/v, each alpha's candidate scored by the
 *    attention block's output (o_proj applied) with q/k/v fake-quantized,
 *    folded into input_layernorm;
 *  - MLP: one scale shared by every consumer of post_attention_layernorm's
 *    output (all experts' gate/up and the shared expert's, or a dense
 *    MLP's), scored by the whole block output, folded into that norm; on
 *    MoE layers rounded to powers of two and the router (and a shared-
 *    expert gate) multiplied by it, so the router logits stay bit for bit;
 *    then each down_proj's own scale, scored by its own output over its
 *    calibration tokens, folded into its up_proj's rows.
 * The stages then quantize every weight with AWQ's clipping search against
 * the second moments of its real inputs (stack_cuda.c), which they compute
 * as GPTQ's Hessians, and run the forward with the quantized weights.
 *
 * Expert calibration modes choose the tokens and weights of every
 * per-expert statistic and loss as on the CPU: routed, the expert's routed
 * tokens (all below --min-expert-tokens); all, every token; weighted,
 * every token weighted by the expert's router probability; the shared
 * scale is scored on the block output with the experts combined by the
 * top-k weights (routed), the probabilities (weighted) or 1 (all).
 *
 * Every candidate is fake-quantized by a kernel and scored with GEMMs over
 * all calibration tokens (the CPU scores at most 8192, AWQ_SEARCH_TOKENS of
 * quantize_awq.c); activations are bf16 as in the rest of the GPU loop.
 * Weights whose candidates are scored together stay on the device when
 * --vram-budget allows, else they are uploaded again for each candidate. */
#include "pipeline/layer_cuda.h"

#include "kernels.h"
#include "pipeline/quantize_awq.h"
#include "quant/awq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MOEQ_K_AWQ_CLIP_GRID == MOEQ_AWQ_CLIP_GRID &&
                   MOEQ_K_AWQ_CLIP_STEPS == MOEQ_AWQ_CLIP_STEPS,
               "the CUDA clipping search must try the CPU's candidates");

struct gpu_awq {
    double alpha_attn, alpha_gu, alpha_down_mlp; /* dense MLP or shared expert */
    double *alpha_down;                          /* [E] */
    double *weight_sum;                          /* [E] weighted: sum of p_e */
    int32_t *tope;                               /* [n, k] before the scaling */
    float *topw;
};

static moeq_code oom(const gpu_layer *L, moeq_error *err)
{
    return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for AWQ", L->res->layer);
}

static st_dtype source_dtype(const gpu_layer *L, moeq_tensor_role role)
{
    return moeq_awq_source_dtype(L->g->model, role, L->res->layer);
}

static moeq_code add_replaced(gpu_layer *L, moeq_tensor_role role, const float *data,
                              size_t count, moeq_error *err)
{
    return moeq_awq_add_replaced(L->res, L->res->layer, role, data, count, err);
}

static moeq_code fold_into_norm(gpu_layer *L, moeq_tensor_role role, float *norm, float *s,
                                moeq_error *err)
{
    const int H = L->g->cfg->hidden_size;
    moeq_awq_fold_norm(norm, s, H, source_dtype(L, role));
    return add_replaced(L, role, norm, (size_t)H, err);
}

/* w_mean over the weights ws (n_w of them, rows[i] x cols each), as
 * channel_means of quantize_awq.c (the weights are on the host). */
static void weight_means(const float *const *ws, const int *rows, int n_w, int cols,
                         int group_size, double *w_mean)
{
    memset(w_mean, 0, sizeof(double) * (size_t)cols);
    long n_rows = 0;
    for (int i = 0; i < n_w; i++) {
        moeq_awq_weight_abs_sum(ws[i], rows[i], cols, group_size, w_mean);
        n_rows += rows[i];
    }
    for (int j = 0; j < cols; j++)
        w_mean[j] = n_rows ? w_mean[j] / (double)n_rows : 0.0;
}

/* The scratch of one scale search over `cols` input columns: on the host
 * the column means of the activations and of the weights and the best
 * scale found; on the device the candidate scale, the per-column sums and
 * the loss. */
typedef struct search_state {
    double *x_mean, *w_mean;
    float *best_s;
    moeq_cuda_buf s, acc, partial, total;
    int cols;
} search_state;

/* The host half, made first of all a search needs; -1 when out of memory
 * (search_free frees what was made). */
static int search_host_alloc(search_state *d, int cols)
{
    d->cols = cols;
    d->x_mean = malloc(sizeof(double) * cols);
    d->w_mean = malloc(sizeof(double) * cols);
    d->best_s = malloc(sizeof(float) * cols);
    return d->x_mean && d->w_mean && d->best_s ? 0 : -1;
}

static void search_free(gpu_run *g, search_state *d)
{
    moeq_cuda_buf *b[] = {&d->s, &d->acc, &d->partial, &d->total};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++)
        moeq_cuda_free(&g->cu, b[i]);
    free(d->x_mean);
    free(d->w_mean);
    free(d->best_s);
    d->x_mean = d->w_mean = NULL;
    d->best_s = NULL;
}

/* The device half, for d->cols columns. */
static moeq_code search_alloc(gpu_run *g, search_state *d, moeq_error *err)
{
    const int cols = d->cols;
    moeq_code rc;
    if ((rc = moeq_cuda_alloc(&g->cu, &d->s, sizeof(float) * (size_t)cols, "AWQ scale", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &d->acc, sizeof(double) * (size_t)cols, "AWQ statistics",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &d->partial,
                              sizeof(double) * (size_t)MOEQ_K_AWQ_PARTS * cols, "AWQ sums", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &d->total, sizeof(double), "AWQ loss", err)))
        search_free(g, d);
    return rc;
}

static moeq_code zero_acc(gpu_run *g, search_state *d, moeq_error *err)
{
    return MOEQ_CU(cudaMemsetAsync(d->acc.ptr, 0, d->acc.bytes, g->cu.stream));
}

/* d->x_mean[j] = acc[j] / total (0 for no weight). */
static moeq_code download_means(gpu_run *g, search_state *d, double total, moeq_error *err)
{
    moeq_code rc = moeq_cuda_download(&g->cu, d->x_mean, d->acc.ptr, d->acc.bytes, err);
    if (!rc)
        rc = moeq_cuda_sync(&g->cu, err);
    for (int j = 0; !rc && j < d->cols; j++)
        d->x_mean[j] = total > 0 ? d->x_mean[j] / total : 0.0;
    return rc;
}

/* What a scale search scores: score(ctx, d) adds the candidate's squared
 * output error (scale in d->s) to d->total. */
typedef moeq_code (*score_fn)(gpu_layer *L, void *ctx, search_state *d, moeq_error *err);

/* The alpha grid of quantize_awq.c's search_scale over d->x_mean and
 * d->w_mean: the candidate with the smallest loss (ties: the smaller alpha)
 * lands in d->best_s; returns its alpha in *alpha. denom normalises the
 * loss (it does not change the choice). */
static moeq_code search_scale(gpu_layer *L, int pow2, score_fn score, void *ctx, search_state *d,
                              double denom, double *alpha, moeq_error *err)
{
    gpu_run *g = L->g;
    const int cols = d->cols;
    float *s = malloc(sizeof(float) * (size_t)cols);
    if (!s)
        return oom(L, err);
    double best = INFINITY;
    *alpha = 0.0;
    moeq_code rc = MOEQ_OK;
    for (int i = 0; i < MOEQ_AWQ_ALPHA_GRID && !rc; i++) {
        const double a = (double)i / MOEQ_AWQ_ALPHA_GRID;
        double total = 0.0;
        moeq_awq_scales(d->x_mean, d->w_mean, cols, a, pow2, s);
        if ((rc = moeq_cuda_upload(&g->cu, d->s.ptr, s, sizeof(float) * (size_t)cols, err)) ||
            (rc = MOEQ_CU(cudaMemsetAsync(d->total.ptr, 0, sizeof(double), g->cu.stream))) ||
            (rc = score(L, ctx, d, err)) ||
            (rc = moeq_cuda_download(&g->cu, &total, d->total.ptr, sizeof(double), err)) ||
            (rc = moeq_cuda_sync(&g->cu, err)))
            break;
        const double loss = denom > 0 ? total / denom : 0.0;
        if (!isfinite(loss)) {
            rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                           "layer %d: AWQ's scale search met a non-finite output (alpha %.2f): "
                           "the model or the calibration data produce NaN/Inf",
                           L->res->layer, a);
        } else if (loss < best) {
            best = loss;
            *alpha = a;
            memcpy(d->best_s, s, sizeof(float) * (size_t)cols);
        }
    }
    free(s);
    return rc;
}

/* Adds the squared difference of y [rows, H] (device) from rows [r0, r0 +
 * rows) of the reference (device, or pinned host through stage) to
 * d->total, weighted by w (device [rows] or NULL). */
static moeq_code add_error(gpu_run *g, search_state *d, const float *y, const float *ref_dev,
                           const float *ref_host, float *stage, size_t r0, int rows,
                           const float *w, moeq_error *err)
{
    const int H = g->cfg->hidden_size;
    const float *ref = ref_dev ? ref_dev + r0 * H : stage;
    moeq_code rc = MOEQ_OK;
    if (!ref_dev)
        rc = moeq_cuda_upload(&g->cu, stage, ref_host + r0 * H, sizeof(float) * (size_t)rows * H,
                              err);
    if (!rc)
        rc = MOEQ_CU(moeq_k_awq_sq_error(y, ref, rows, H, w, d->partial.ptr, d->total.ptr,
                                         g->cu.stream));
    return rc;
}

/* A [n, H] fp32 reference: in device memory the stage leaves unused
 * (spare), in its own when --vram-budget has room for it, else in pinned
 * host memory, read back through stage a chunk at a time. */
typedef struct reference {
    float *dev;
    moeq_cuda_buf own, stage;
    float *host;
} reference;

static void reference_free(gpu_run *g, reference *r)
{
    moeq_cuda_free(&g->cu, &r->own);
    moeq_cuda_free(&g->cu, &r->stage);
    moeq_cuda_host_free(r->host);
    memset(r, 0, sizeof *r);
}

static moeq_code reference_alloc(gpu_run *g, float *spare, int stage_rows, reference *r,
                                 moeq_error *err)
{
    const size_t bytes = sizeof(float) * (size_t)g->n * g->cfg->hidden_size;
    const size_t budget = gpu_memory_limit(g);
    memset(r, 0, sizeof *r);
    r->dev = spare;
    if (spare)
        return MOEQ_OK;
    moeq_code rc;
    if (g->cu.bytes_in_use + bytes + budget / 16 <= budget) {
        rc = moeq_cuda_alloc(&g->cu, &r->own, bytes, "AWQ reference outputs", err);
        r->dev = r->own.ptr;
        return rc;
    }
    rc = moeq_cuda_host_alloc((void **)&r->host, bytes, "AWQ reference outputs", err);
    if (!rc)
        rc = moeq_cuda_alloc(&g->cu, &r->stage,
                             sizeof(float) * (size_t)stage_rows * g->cfg->hidden_size,
                             "AWQ reference chunk", err);
    return rc;
}

/* Stores y [rows, H] (device) as rows [r0, r0 + rows) of the reference. */
static moeq_code reference_store(gpu_run *g, reference *r, const float *y, size_t r0, int rows,
                                 moeq_error *err)
{
    const size_t bytes = sizeof(float) * (size_t)rows * g->cfg->hidden_size;
    const size_t off = r0 * g->cfg->hidden_size;
    if (r->dev)
        return MOEQ_CU(cudaMemcpyAsync(r->dev + off, y, bytes,
                                       cudaMemcpyDeviceToDevice, g->cu.stream));
    moeq_code rc = moeq_cuda_download(&g->cu, r->host + off, y, bytes, err);
    return rc ? rc : moeq_cuda_sync(&g->cu, err);
}

static moeq_code reference_error(gpu_run *g, reference *r, search_state *d, const float *y,
                                 size_t r0, int rows, const float *w, moeq_error *err)
{
    return add_error(g, d, y, r->dev, r->host, r->stage.ptr, r0, rows, w, err);
}

/* ---- attention */

typedef struct attn_search {
    moeq_cuda_buf src;   /* [qd + 2 kvd, H] fp32 q/k/v */
    moeq_cuda_buf wqkv;  /* the same, fake-quantized (or not) in bf16 */
    moeq_cuda_buf wo;    /* [H, qd] bf16 */
    moeq_cuda_buf o, y;  /* a batch of windows: [Sw T, qd] bf16, [Sw T, H] fp32 */
    gpu_attn a;
    reference ref;
    int Sw;              /* windows per batch */
} attn_search;

/* y of every batch of windows with the weights in wqkv: stored as the
 * reference (store) or scored against it. */
static moeq_code attention_pass(gpu_layer *L, attn_search *as, search_state *d, int store,
                                moeq_error *err)
{
    gpu_run *g = L->g;
    const int H = g->cfg->hidden_size, T = g->T, qd = g->qdim;
    moeq_code rc = MOEQ_OK;
    for (int s0 = 0; s0 < g->S && !rc; s0 += as->Sw) {
        const int c = g->S - s0 < as->Sw ? g->S - s0 : as->Sw;
        const size_t r0 = (size_t)s0 * T;
        if ((rc = gpu_attn_windows(g, &as->a, as->wqkv.ptr, s0, c, as->o.ptr, err)) ||
            (rc = gpu_gemm_nt(g, as->o.ptr, qd, as->wo.ptr, qd, as->y.ptr, H, 0, c * T, H, qd,
                              1.0f, 0.0f, err)))
            break;
        rc = store ? reference_store(g, &as->ref, as->y.ptr, r0, c * T, err)
                   : reference_error(g, &as->ref, d, as->y.ptr, r0, c * T, NULL, err);
    }
    return rc;
}

static moeq_code score_attention(gpu_layer *L, void *ctx, search_state *d, moeq_error *err)
{
    attn_search *as = ctx;
    gpu_run *g = L->g;
    const moeq_gptq_config *gc = &g->opt->gptq;
    const moeq_k_awq_grid kq = {gc->bits, gc->sym, gc->scale_bf16, gc->group_size};
    const int rows = g->qdim + 2 * g->kvdim;
    moeq_code rc = MOEQ_CU(moeq_k_awq_fake_quant(as->src.ptr, 0, rows, g->cfg->hidden_size,
                                                 d->s.ptr, &kq, as->wqkv.ptr, 1, g->cu.stream));
    return rc ? rc : attention_pass(L, as, d, 0, err);
}

moeq_code gpu_awq_attention_scales(gpu_layer *L, moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size, n = g->n, T = g->T, qd = g->qdim, kvd = g->kvdim;
    const int rows = qd + 2 * kvd;
    attn_search as = {0};
    search_state d = {0};
    moeq_cuda_buf norm = {0};
    const int host_oom = search_host_alloc(&d, H);
    moeq_code rc = MOEQ_OK;
    if (!L->awq && !(L->awq = calloc(1, sizeof *L->awq)))
        rc = oom(L, err);
    if (rc || host_oom) {
        rc = rc ? rc : oom(L, err);
        goto done;
    }
    as.Sw = g->chunk / T > 0 ? g->chunk / T : 1;
    as.Sw = as.Sw < g->S ? as.Sw : g->S;
    /* Statistics of the normed input (the original norm) and of q/k/v. */
    if ((rc = gpu_upload_f32(g, lw->attn_norm, (size_t)H, "attention norm", &norm, err)) ||
        (rc = gpu_norm_residual(g, &g->x, g->xh, norm.ptr, err)) ||
        (rc = search_alloc(g, &d, err)) || (rc = zero_acc(g, &d, err)) ||
        (rc = MOEQ_CU(moeq_k_awq_act_abs_sum(g->h.ptr, H, NULL, NULL, n, H, d.partial.ptr,
                                             d.acc.ptr, g->cu.stream))) ||
        (rc = download_means(g, &d, (double)n, err)))
        goto done;
    const float *ws[3] = {lw->q, lw->k, lw->v};
    const int wr[3] = {qd, kvd, kvd};
    weight_means(ws, wr, 3, H, g->opt->gptq.group_size, d.w_mean);
    /* The original block's outputs, then each candidate's. */
    if ((rc = moeq_cuda_alloc(&g->cu, &as.src, sizeof(float) * (size_t)rows * H, "q/k/v for AWQ",
                              err)) ||
        (rc = moeq_cuda_upload(&g->cu, as.src.ptr, lw->q, sizeof(float) * (size_t)qd * H, err)) ||
        (rc = moeq_cuda_upload(&g->cu, (float *)as.src.ptr + (size_t)qd * H, lw->k,
                               sizeof(float) * (size_t)kvd * H, err)) ||
        (rc = moeq_cuda_upload(&g->cu, (float *)as.src.ptr + (size_t)(qd + kvd) * H, lw->v,
                               sizeof(float) * (size_t)kvd * H, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &as.wqkv, 2 * (size_t)rows * H, "q/k/v candidates", err)) ||
        (rc = MOEQ_CU(moeq_k_to_bf16(as.src.ptr, (size_t)rows * H, as.wqkv.ptr, g->cu.stream))) ||
        (rc = gpu_upload_bf16(g, lw->o, (size_t)H * qd, "o_proj", &as.wo, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &as.o, 2 * (size_t)as.Sw * T * qd, "attention outputs",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &as.y, sizeof(float) * (size_t)as.Sw * T * H,
                              "attention block outputs", err)) ||
        (rc = reference_alloc(g, g->resid_host ? NULL : g->x1.ptr, as.Sw * T, &as.ref,
                              err)) ||
        (rc = gpu_attn_init(g, lw, &as.a, err)) || (rc = attention_pass(L, &as, &d, 1, err)) ||
        (rc = search_scale(L, 0, score_attention, &as, &d, (double)n * H, &L->awq->alpha_attn,
                           err)))
        goto done;
    if ((rc = fold_into_norm(L, MOEQ_T_ATTN_NORM, lw->attn_norm, d.best_s, err)))
        goto done;
    moeq_awq_scale_columns(lw->q, qd, H, d.best_s);
    moeq_awq_scale_columns(lw->k, kvd, H, d.best_s);
    moeq_awq_scale_columns(lw->v, kvd, H, d.best_s);
    rc = gpu_sync_time(L, &L->res->seconds_solve, err);
done:
    gpu_attn_free(g, &as.a);
    reference_free(g, &as.ref);
    moeq_cuda_buf *bufs[] = {&as.src, &as.wqkv, &as.wo, &as.o, &as.y, &norm};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moeq_cuda_free(&g->cu, bufs[i]);
    search_free(g, &d);
    return rc;
}

/* ---- MLP and experts */

/* The block the shared scale is scored on: MLP i < n_mlps (the experts, or
 * the one dense MLP) on tokens idx[i] (count[i] of them) with weights
 * wts[i] (device), and the shared expert (all tokens, its sigmoid gate). */
typedef struct block_search {
    moeq_mlp_weights *mlps;
    int n_mlps;
    moeq_mlp_weights *shared;
    moeq_cuda_buf shared_gate;     /* [H] bf16 or empty */
    const int32_t **idx;
    const float **wts;
    const int *count;
    int resident;                  /* every MLP's weights stay on the device */
    moeq_cuda_buf *src, *down;     /* per MLP (resident) or one slot: fp32 [2I, H], bf16 [H, I] */
    moeq_cuda_buf fake;            /* [2I, H] bf16 */
    moeq_cuda_buf out_own;         /* [n, H] fp32 in host mode */
    float *out;                    /* that, or the residual stream x, unused here */
    mlp_scratch sc;
    reference ref;
} block_search;

static moeq_mlp_weights *block_mlp(const block_search *b, int i)
{
    return i < b->n_mlps ? &b->mlps[i] : b->shared;
}

/* MLP i's original gate/up (fp32) and down (bf16) in its device slot. */
static moeq_code block_upload(gpu_run *g, block_search *b, int i, moeq_error *err)
{
    const moeq_mlp_weights *m = block_mlp(b, i);
    const int slot = b->resident ? i : 0;
    const size_t c = (size_t)m->intermediate * g->cfg->hidden_size;
    float *src = b->src[slot].ptr;
    moeq_code rc;
    if ((rc = moeq_cuda_upload(&g->cu, src, m->gate, sizeof(float) * c, err)) ||
        (rc = moeq_cuda_upload(&g->cu, src + c, m->up, sizeof(float) * c, err)))
        return rc;
    return gpu_upload_bf16_into(g, m->down, c, b->down[slot].ptr, err);
}

/* out = the block's output with every gate/up fake-quantized with scale s
 * (device; NULL: the original weights). */
static moeq_code block_output(gpu_layer *L, block_search *b, const float *s, moeq_error *err)
{
    gpu_run *g = L->g;
    const int H = g->cfg->hidden_size, n = g->n;
    const moeq_gptq_config *gc = &g->opt->gptq;
    const moeq_k_awq_grid kq = {gc->bits, gc->sym, gc->scale_bf16, gc->group_size};
    moeq_code rc = MOEQ_CU(cudaMemsetAsync(b->out, 0, sizeof(float) * (size_t)n * H,
                                           g->cu.stream));
    for (int i = 0; i <= b->n_mlps && !rc; i++) {
        const moeq_mlp_weights *m = block_mlp(b, i);
        if (!m)
            break;
        const int I = m->intermediate, slot = b->resident ? i : 0;
        if (!b->resident && (rc = block_upload(g, b, i, err)))
            break;
        rc = s ? MOEQ_CU(moeq_k_awq_fake_quant(b->src[slot].ptr, 0, 2 * I, H, s, &kq,
                                               b->fake.ptr, 1, g->cu.stream))
               : MOEQ_CU(moeq_k_to_bf16(b->src[slot].ptr, (size_t)2 * I * H, b->fake.ptr,
                                        g->cu.stream));
        if (rc)
            break;
        const int shared = i == b->n_mlps;
        rc = gpu_mlp_forward(g, &b->sc, b->fake.ptr, NULL, b->down[slot].ptr, NULL, I,
                             shared ? NULL : b->idx[i], shared ? NULL : b->wts[i],
                             shared ? n : b->count[i], shared ? b->shared_gate.ptr : NULL,
                             b->out, err);
        if (!b->resident && !rc)
            rc = moeq_cuda_sync(&g->cu, err); /* the slot is uploaded again next */
    }
    return rc;
}

static moeq_code score_block(gpu_layer *L, void *ctx, search_state *d, moeq_error *err)
{
    block_search *b = ctx;
    gpu_run *g = L->g;
    moeq_code rc = block_output(L, b, d->s.ptr, err);
    for (int c0 = 0; c0 < g->n && !rc; c0 += g->chunk) {
        const int m = g->n - c0 < g->chunk ? g->n - c0 : g->chunk;
        rc = reference_error(g, &b->ref, d, b->out + (size_t)c0 * g->cfg->hidden_size,
                             (size_t)c0, m, NULL, err);
    }
    return rc;
}

/* One down_proj's search: the act of its MLP (gate/up already scaled, in
 * wgu) over its tokens (idx NULL: all) weighted by w (NULL: 1), its output
 * with the original down_proj as the reference. When the tokens fit one
 * chunk, act and reference are computed once. */
typedef struct down_search {
    const moeq_mlp_weights *mlp;
    const int32_t *idx;
    const float *w;
    int count;
    moeq_cuda_buf wgu, src, wd, fake, ref; /* bf16 [2I, H]; fp32, bf16, bf16 [H, I]; fp32 [c, H] */
    mlp_scratch sc;
    int once, ready;
} down_search;

/* act and reference of chunk c0 of the down_proj's tokens, in sc.a and ref. */
static moeq_code down_chunk(gpu_run *g, down_search *ds, int c0, int m, moeq_error *err)
{
    const int H = g->cfg->hidden_size, I = ds->mlp->intermediate;
    const uint16_t *x;
    moeq_code rc;
    if ((rc = gpu_chunk_rows(g, &ds->sc, ds->idx, NULL, c0, m, &x, err)) ||
        (rc = gpu_swiglu_chunk(g, &ds->sc, x, m, I, ds->wgu.ptr, NULL, err)))
        return rc;
    return gpu_gemm_nt(g, ds->sc.a.ptr, I, ds->wd.ptr, I, ds->ref.ptr, H, 0, m, H, I, 1.0f, 0.0f,
                       err);
}

static moeq_code score_down(gpu_layer *L, void *ctx, search_state *d, moeq_error *err)
{
    down_search *ds = ctx;
    gpu_run *g = L->g;
    const moeq_gptq_config *gc = &g->opt->gptq;
    const moeq_k_awq_grid kq = {gc->bits, gc->sym, gc->scale_bf16, gc->group_size};
    const int H = g->cfg->hidden_size, I = ds->mlp->intermediate;
    moeq_code rc = MOEQ_CU(moeq_k_awq_fake_quant(ds->src.ptr, 0, H, I, d->s.ptr, &kq,
                                                 ds->fake.ptr, 1, g->cu.stream));
    for (int c0 = 0; c0 < ds->count && !rc; c0 += g->chunk) {
        const int m = ds->count - c0 < g->chunk ? ds->count - c0 : g->chunk;
        if (!(ds->once && ds->ready) && (rc = down_chunk(g, ds, c0, m, err)))
            break;
        if ((rc = gpu_gemm_nt(g, ds->sc.a.ptr, I, ds->fake.ptr, I, ds->sc.y.ptr, H, 0, m, H, I,
                              1.0f, 0.0f, err)))
            break;
        rc = add_error(g, d, ds->sc.y.ptr, ds->ref.ptr, NULL, NULL, 0, m, ds->w ? ds->w + c0 : NULL,
                       err);
    }
    ds->ready = 1;
    return rc;
}

/* Searches the down_proj scale of mlp (gate/up already carrying the shared
 * scale) on its tokens, folds it into up_proj's rows and down_proj's
 * columns (host), and returns its alpha. wsum: the sum of the tokens'
 * weights (their count without weights). */
static moeq_code search_down(gpu_layer *L, moeq_mlp_weights *mlp, const int32_t *idx,
                             const float *w, int count, double wsum, double *alpha,
                             moeq_error *err)
{
    gpu_run *g = L->g;
    const int H = g->cfg->hidden_size, I = mlp->intermediate;
    const int rows = count < g->chunk ? count : g->chunk;
    down_search ds = {.mlp = mlp, .idx = idx, .w = w, .count = count, .once = count <= g->chunk};
    search_state d = {0};
    const int host_oom = search_host_alloc(&d, I);
    float *gu = malloc(sizeof(float) * 2 * (size_t)I * H);
    moeq_code rc = MOEQ_OK;
    if (host_oom || !gu) {
        rc = oom(L, err);
        goto done;
    }
    memcpy(gu, mlp->gate, sizeof(float) * (size_t)I * H);
    memcpy(gu + (size_t)I * H, mlp->up, sizeof(float) * (size_t)I * H);
    if ((rc = gpu_scratch_alloc(g, I, &ds.sc, err)) || (rc = search_alloc(g, &d, err)) ||
        (rc = gpu_upload_bf16(g, gu, 2 * (size_t)I * H, "scaled gate/up", &ds.wgu, err)) ||
        (rc = gpu_upload_f32(g, mlp->down, (size_t)H * I, "down_proj for AWQ", &ds.src, err)) ||
        (rc = gpu_upload_bf16(g, mlp->down, (size_t)H * I, "down_proj", &ds.wd, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &ds.fake, 2 * (size_t)H * I, "down_proj candidates", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &ds.ref, sizeof(float) * (size_t)(rows > 0 ? rows : 1) * H,
                              "down_proj reference", err)) ||
        (rc = zero_acc(g, &d, err)))
        goto done;
    /* Statistics of down_proj's inputs (with the unquantized, scaled
     * gate/up, as quantize_swiglu of quantize_awq.c). */
    for (int c0 = 0; c0 < count && !rc; c0 += g->chunk) {
        const int m = count - c0 < g->chunk ? count - c0 : g->chunk;
        if (!(rc = down_chunk(g, &ds, c0, m, err)))
            rc = MOEQ_CU(moeq_k_awq_act_abs_sum(ds.sc.a.ptr, I, NULL, w ? w + c0 : NULL, m, I,
                                                d.partial.ptr, d.acc.ptr, g->cu.stream));
    }
    ds.ready = 1; /* one chunk: its act and reference are in place */
    if (rc || (rc = download_means(g, &d, wsum, err)))
        goto done;
    const float *wd[1] = {mlp->down};
    const int rd[1] = {H};
    weight_means(wd, rd, 1, I, g->opt->gptq.group_size, d.w_mean);
    if ((rc = search_scale(L, 0, score_down, &ds, &d, wsum, alpha, err)))
        goto done;
    for (int r = 0; r < I; r++)
        for (int j = 0; j < H; j++)
            mlp->up[(size_t)r * H + j] /= d.best_s[r];
    moeq_awq_scale_columns(mlp->down, H, I, d.best_s);
done:
    gpu_scratch_free(g, &ds.sc);
    moeq_cuda_buf *bufs[] = {&ds.wgu, &ds.src, &ds.wd, &ds.fake, &ds.ref};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moeq_cuda_free(&g->cu, bufs[i]);
    search_free(g, &d);
    free(gu);
    return rc;
}

moeq_code gpu_awq_mlp_scales(gpu_layer *L, moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const moeq_quantize_options *opt = g->opt;
    const moeq_expert_calib mode = opt->expert_calib;
    const int H = cfg->hidden_size, n = g->n, moe = lw->is_moe;
    const int E = moe ? cfg->num_experts : 1;
    moeq_mlp_weights *mlps = moe ? lw->experts : &lw->dense;
    moeq_mlp_weights *shared = moe && lw->has_shared ? &lw->shared : NULL;
    const int n_mlps = E + (shared != NULL);
    routing rt = {0};
    block_search b = {.mlps = mlps, .n_mlps = E, .shared = shared};
    search_state d = {0};
    moeq_cuda_buf norm = {0}, iota = {0}, ones = {0};
    struct gpu_awq *aw = L->awq;
    const int host_oom = search_host_alloc(&d, H);
    const float **ws = calloc(2 * (size_t)n_mlps, sizeof *ws);
    int *wrows = calloc(2 * (size_t)n_mlps, sizeof *wrows);
    int32_t *iota_host = malloc(sizeof(int32_t) * (size_t)n);
    float *ones_host = malloc(sizeof(float) * (size_t)n), *probs = NULL;
    b.idx = calloc((size_t)E, sizeof *b.idx);
    b.wts = calloc((size_t)E, sizeof *b.wts);
    int *count = calloc((size_t)E, sizeof(int));
    b.count = count;
    b.src = calloc((size_t)n_mlps, sizeof *b.src);
    b.down = calloc((size_t)n_mlps, sizeof *b.down);
    moeq_code rc = MOEQ_OK;
    if (!aw && !(aw = L->awq = calloc(1, sizeof *L->awq)))
        rc = oom(L, err);
    if (rc || host_oom || !ws || !wrows || !iota_host || !ones_host || !b.idx || !b.wts ||
        !count || !b.src || !b.down) {
        rc = rc ? rc : oom(L, err);
        goto done;
    }
    for (int t = 0; t < n; t++) {
        iota_host[t] = t;
        ones_host[t] = 1.0f;
    }
    /* The normed input with the original norm, and its routing. */
    if ((rc = gpu_upload_f32(g, lw->mlp_norm, (size_t)H, "MLP norm", &norm, err)) ||
        (rc = gpu_norm_residual(g, &g->x1, g->x1h, norm.ptr, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &iota, sizeof(int32_t) * (size_t)n, "token indices", err)) ||
        (rc = moeq_cuda_upload(&g->cu, iota.ptr, iota_host, iota.bytes, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &ones, sizeof(float) * (size_t)n, "token weights", err)) ||
        (rc = moeq_cuda_upload(&g->cu, ones.ptr, ones_host, ones.bytes, err)))
        goto done;
    if (moe) {
        if ((rc = gpu_route(L, lw, &rt, err)))
            goto done;
        free(L->res->expert_tokens); /* the stage routes again, with the scaled router */
        L->res->expert_tokens = NULL;
        aw->tope = rt.tope_host;
        aw->topw = rt.topw_host;
        rt.tope_host = NULL;
        rt.topw_host = NULL;
        if (!(aw->alpha_down = calloc((size_t)E, sizeof(double)))) {
            rc = oom(L, err);
            goto done;
        }
        if (mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
            aw->weight_sum = calloc((size_t)E, sizeof(double));
            probs = malloc(sizeof(float) * (size_t)n * E);
            if (!aw->weight_sum || !probs) {
                rc = oom(L, err);
                goto done;
            }
            if ((rc = moeq_cuda_download(&g->cu, probs, rt.probs_t.ptr, rt.probs_t.bytes, err)) ||
                (rc = moeq_cuda_sync(&g->cu, err)))
                goto done;
            for (int e = 0; e < E; e++)
                for (int t = 0; t < n; t++)
                    aw->weight_sum[e] += probs[(size_t)e * n + t];
        }
    }
    for (int e = 0; e < E; e++) {
        b.idx[e] = iota.ptr;
        b.wts[e] = ones.ptr;
        count[e] = n;
        if (moe && mode == MOEQ_EXPERT_CALIB_ROUTED) {
            b.idx[e] = (const int32_t *)rt.d_idx.ptr + rt.offset[e];
            b.wts[e] = (const float *)rt.d_wts.ptr + rt.offset[e];
            count[e] = rt.count[e];
        } else if (moe && mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
            b.wts[e] = (const float *)rt.probs_t.ptr + (size_t)e * n;
        }
    }
    /* Statistics: |x| over all tokens, the gate/up weights of every MLP. */
    if ((rc = search_alloc(g, &d, err)) || (rc = zero_acc(g, &d, err)) ||
        (rc = MOEQ_CU(moeq_k_awq_act_abs_sum(g->h.ptr, H, NULL, NULL, n, H, d.partial.ptr,
                                             d.acc.ptr, g->cu.stream))) ||
        (rc = download_means(g, &d, (double)n, err)))
        goto done;
    int inter = 0;
    for (int i = 0; i < n_mlps; i++) {
        const moeq_mlp_weights *m = block_mlp(&b, i);
        ws[2 * i] = m->gate;
        ws[2 * i + 1] = m->up;
        wrows[2 * i] = wrows[2 * i + 1] = m->intermediate;
        inter = m->intermediate > inter ? m->intermediate : inter;
    }
    weight_means(ws, wrows, 2 * n_mlps, H, opt->gptq.group_size, d.w_mean);
    /* The block's weights stay on the device for all candidates when the
     * budget holds them (with the search's own buffers: a reserve of 1/16
     * of it plus 64 MiB, as the expert groups). */
    size_t weights_bytes = 0;
    for (int i = 0; i < n_mlps; i++)
        weights_bytes += (size_t)block_mlp(&b, i)->intermediate * H * (8 + 2);
    const size_t limit = gpu_memory_limit(g);
    b.resident = g->cu.bytes_in_use + weights_bytes + limit / 16 + ((size_t)64 << 20) +
                     (g->resid_host ? sizeof(float) * (size_t)n * H : 0) <=
                 limit;
    for (int i = 0; i < (b.resident ? n_mlps : 1) && !rc; i++) {
        const size_t c = (size_t)(b.resident ? block_mlp(&b, i)->intermediate : inter) * H;
        if (!(rc = moeq_cuda_alloc(&g->cu, &b.src[i], sizeof(float) * 2 * c, "gate/up for AWQ",
                                   err)))
            rc = moeq_cuda_alloc(&g->cu, &b.down[i], 2 * c, "down_proj for AWQ", err);
        if (!rc && b.resident)
            rc = block_upload(g, &b, i, err);
    }
    if (rc || (rc = moeq_cuda_alloc(&g->cu, &b.fake, 4 * (size_t)inter * H, "gate/up candidates",
                                    err)) ||
        (g->resid_host && (rc = moeq_cuda_alloc(&g->cu, &b.out_own, sizeof(float) * (size_t)n * H,
                                                "MLP block outputs", err))) ||
        (rc = gpu_scratch_alloc(g, inter, &b.sc, err)) ||
        (rc = gpu_upload_bf16(g, lw->shared_gate, (size_t)H, "shared expert gate",
                              &b.shared_gate, err)) ||
        (rc = reference_alloc(g, NULL, g->chunk, &b.ref, err)))
        goto done;
    b.out = g->resid_host ? b.out_own.ptr : g->x.ptr;
    if ((rc = block_output(L, &b, NULL, err)))
        goto done;
    for (int c0 = 0; c0 < n && !rc; c0 += g->chunk) {
        const int m = n - c0 < g->chunk ? n - c0 : g->chunk;
        rc = reference_store(g, &b.ref, b.out + (size_t)c0 * H, (size_t)c0, m, err);
    }
    /* A router reading the norm's output needs power-of-two scales. */
    if (rc || (rc = search_scale(L, moe, score_block, &b, &d, (double)n * H, &aw->alpha_gu, err)))
        goto done;
    /* The block's device buffers are not needed any more. */
    for (int i = 0; i < n_mlps; i++) {
        moeq_cuda_free(&g->cu, &b.src[i]);
        moeq_cuda_free(&g->cu, &b.down[i]);
    }
    moeq_cuda_free(&g->cu, &b.fake);
    moeq_cuda_free(&g->cu, &b.out_own);
    gpu_scratch_free(g, &b.sc);
    reference_free(g, &b.ref);
    if ((rc = fold_into_norm(L, MOEQ_T_MLP_NORM, lw->mlp_norm, d.best_s, err)))
        goto done;
    for (int i = 0; i < n_mlps; i++) {
        moeq_mlp_weights *m = block_mlp(&b, i);
        moeq_awq_scale_columns(m->gate, m->intermediate, H, d.best_s);
        moeq_awq_scale_columns(m->up, m->intermediate, H, d.best_s);
    }
    if (moe) {
        /* The router (and the shared-expert gate): the same logits from
         * the scaled activations. */
        const st_dtype rd = source_dtype(L, MOEQ_T_ROUTER);
        moeq_awq_scale_columns(lw->router, E, H, d.best_s);
        for (size_t i = 0; i < (size_t)E * H; i++)
            lw->router[i] = moeq_awq_stored_value(lw->router[i], rd);
        if ((rc = add_replaced(L, MOEQ_T_ROUTER, lw->router, (size_t)E * H, err)))
            goto done;
        if (lw->shared_gate) {
            const st_dtype gd = source_dtype(L, MOEQ_T_SHARED_EXPERT_GATE);
            for (int j = 0; j < H; j++)
                lw->shared_gate[j] = moeq_awq_stored_value(lw->shared_gate[j] * d.best_s[j], gd);
            if ((rc = add_replaced(L, MOEQ_T_SHARED_EXPERT_GATE, lw->shared_gate, (size_t)H,
                                   err)))
                goto done;
        }
    }
    /* Each down_proj's own scale, on the folded norm's output. */
    moeq_cuda_free(&g->cu, &norm);
    if ((rc = gpu_upload_f32(g, lw->mlp_norm, (size_t)H, "MLP norm", &norm, err)) ||
        (rc = gpu_norm_residual(g, &g->x1, g->x1h, norm.ptr, err)))
        goto done;
    for (int e = 0; e < E && !rc; e++) {
        const int32_t *idx = NULL;
        const float *w = NULL;
        int m = n;
        double wsum = n;
        if (moe && mode == MOEQ_EXPERT_CALIB_ROUTED && rt.count[e] >= opt->min_expert_tokens) {
            idx = (const int32_t *)rt.d_idx.ptr + rt.offset[e];
            m = rt.count[e];
            wsum = m;
        } else if (moe && mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
            w = (const float *)rt.probs_t.ptr + (size_t)e * n;
            wsum = aw->weight_sum[e];
        }
        rc = search_down(L, &mlps[e], idx, w, m, wsum, moe ? &aw->alpha_down[e]
                                                             : &aw->alpha_down_mlp, err);
        if (rc && moe)
            moeq_wrap(err, "layer %d, expert %d down_proj: ", L->res->layer, e);
    }
    if (!rc && shared)
        rc = search_down(L, shared, NULL, NULL, n, n, &aw->alpha_down_mlp, err);
    if (!rc)
        rc = gpu_sync_time(L, &L->res->seconds_solve, err);
done:
    if (b.src)
        for (int i = 0; i < n_mlps; i++) {
            moeq_cuda_free(&g->cu, &b.src[i]);
            moeq_cuda_free(&g->cu, &b.down[i]);
        }
    moeq_cuda_buf *bufs[] = {&b.fake, &b.out_own, &b.shared_gate, &norm, &iota, &ones};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moeq_cuda_free(&g->cu, bufs[i]);
    gpu_scratch_free(g, &b.sc);
    reference_free(g, &b.ref);
    gpu_routing_free(g, &rt);
    search_free(g, &d);
    free(b.src);
    free(b.down);
    free(b.idx);
    free(b.wts);
    free(count);
    free(ws);
    free(wrows);
    free(iota_host);
    free(ones_host);
    free(probs);
    return rc;
}

void gpu_awq_routing_changes(gpu_layer *L, const routing *r)
{
    const struct gpu_awq *aw = L->awq;
    const int n = L->g->n, k = r->k;
    if (!aw || !aw->tope)
        return;
    int64_t changes = 0;
    for (int t = 0; t < n; t++)
        changes += memcmp(aw->tope + (size_t)t * k, r->tope_host + (size_t)t * k,
                          sizeof(int32_t) * (size_t)k) != 0 ||
                   memcmp(aw->topw + (size_t)t * k, r->topw_host + (size_t)t * k,
                          sizeof(float) * (size_t)k) != 0;
    L->res->routing_changes = changes;
    if (changes && L->g->opt->progress)
        fprintf(L->g->opt->progress,
                "warning: layer %d: the AWQ-scaled router changes the top-k of %lld "
                "calibration tokens\n",
                L->res->layer, (long long)changes);
}

void gpu_awq_finish_layer(gpu_layer *L)
{
    struct gpu_awq *aw = L->awq;
    if (!aw)
        return;
    const int n = L->g->n;
    for (int i = 0; i < L->res->n_linears; i++) {
        moeq_quantized_linear *ql = &L->res->linears[i];
        const moeq_tensor_role role = ql->role;
        const int down = role == MOEQ_EXPERT_ROLES[2] || role == MOEQ_SHARED_ROLES[2] ||
                         role == MOEQ_DENSE_ROLES[2];
        if (role == MOEQ_T_Q_PROJ || role == MOEQ_T_K_PROJ || role == MOEQ_T_V_PROJ)
            ql->awq_alpha = aw->alpha_attn;
        else if (role == MOEQ_T_O_PROJ)
            ql->awq_alpha = -1.0;
        else if (down)
            ql->awq_alpha = ql->expert >= 0 && aw->alpha_down ? aw->alpha_down[ql->expert]
                                                              : aw->alpha_down_mlp;
        else
            ql->awq_alpha = aw->alpha_gu;
        /* The stages' second moments carry GPTQ's scale, 2 / tokens (2 / n
         * with weights): AWQ's loss is over 1 / tokens (1 / sum of the
         * weights), as quantize_awq.c's second_moment. */
        ql->loss *= 0.5;
        if (ql->expert >= 0 && aw->weight_sum && aw->weight_sum[ql->expert] > 0)
            ql->loss *= (double)n / aw->weight_sum[ql->expert];
    }
    gpu_awq_free(L);
}

void gpu_awq_free(gpu_layer *L)
{
    struct gpu_awq *aw = L->awq;
    if (!aw)
        return;
    free(aw->alpha_down);
    free(aw->weight_sum);
    free(aw->tope);
    free(aw->topw);
    free(aw);
    L->awq = NULL;
}
