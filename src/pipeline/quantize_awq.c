/* quantize_awq.c: AWQ (Lin et al. 2023; AutoAWQ's quantizer) in the CPU
 * layer loop. Per layer, true-sequentially:
 *  1. q/k/v: one input scale searched on the attention block's output,
 *     folded into input_layernorm; o_proj on clipped grids (AutoAWQ scales
 *     o_proj through v_proj only when their shapes match, i.e. without GQA;
 *     moeq does not implement that scale).
 *  2. gate/up: one scale for every consumer of post_attention_layernorm's
 *     output (a dense MLP's gate/up; or ALL experts' gate/up and the shared
 *     expert's), searched on the output of the whole MLP / MoE block and
 *     folded into that norm. On MoE layers the router (and a shared-expert
 *     gate) read the same normed activations: their columns are multiplied
 *     by the same scale, which is rounded to a power of two so that the norm
 *     divided by it and the router multiplied by it are exact in the
 *     checkpoint's dtype and the router logits are bit for bit the
 *     original's (res->routing_changes counts any top-k change: 0).
 *  3. down_proj of each expert (and of the dense MLP and shared expert):
 *     its own scale, searched on its own output, folded into its up_proj's
 *     rows.
 *  4. every weight: RTN on grids picked by AWQ's clipping search, scored by
 *     the output error with the second moment of its (scaled) inputs.
 * Expert calibration modes choose the tokens and weights of every
 * per-expert statistic and loss, as for GPTQ (quantize.h): routed: the
 * expert's routed tokens (fallback to all below --min-expert-tokens), all:
 * every token, weighted: every token weighted by the expert's router
 * probability; the shared gate/up scale is scored on the MoE block output
 * with the experts combined by the top-k weights (routed), the router
 * probabilities (weighted) or all with weight 1 (all). */
#include "pipeline/quantize_awq.h"

#include "backend/cpu/cpu_ops.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "quant/awq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Tokens each scale search scores its 20 candidates on: every k-th token
 * (attention: whole windows, up to this many tokens). AutoAWQ scores on
 * its whole calibration batch on a GPU; on the CPU this bounds the cost. */
#define AWQ_SEARCH_TOKENS 8192

typedef struct awq_ctx {
    const moeq_model *model;
    const moeq_config *cfg;
    const moeq_quantize_options *opt;
    moeq_layer_result *res;
    int layer;
} awq_ctx;

static moeq_code oom(const awq_ctx *c, moeq_error *err)
{
    return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for AWQ", c->layer);
}

float moeq_awq_stored_value(float v, st_dtype dtype)
{
    if (dtype == ST_F32)
        return v;
    if (dtype == ST_F16)
        return moeq_f16_to_f32(moeq_f32_to_f16(v));
    return moeq_bf16_to_f32(moeq_f32_to_bf16(v));
}

st_dtype moeq_awq_source_dtype(const moeq_model *model, moeq_tensor_role role, int layer)
{
    moeq_error ignored;
    const st_tensor *t = moeq_model_find(model, role, layer, -1, &ignored);
    return t ? t->dtype : ST_BF16;
}

static st_dtype source_dtype(const awq_ctx *c, moeq_tensor_role role)
{
    return moeq_awq_source_dtype(c->model, role, c->layer);
}

static double mean_sq_diff(const float *a, const float *b, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        sum += d * d;
    }
    return n ? sum / (double)n : 0.0;
}

void moeq_awq_scale_columns(float *W, int rows, int cols, const float *s)
{
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++)
            W[(size_t)r * cols + j] *= s[j];
}

/* H = x^T diag(w) x / sum w over rows tokens (w NULL: 1 each). */
static moeq_code second_moment(float *H, const float *x, int rows, int n, const float *w,
                               moeq_error *err)
{
    memset(H, 0, sizeof(float) * (size_t)n * n);
    if (rows == 0)
        return MOEQ_OK;
    if (!w) {
        cpu_hessian_accumulate(H, x, rows, n, 1.0f / (float)rows);
        return MOEQ_OK;
    }
    double sum = 0.0;
    for (int t = 0; t < rows; t++)
        sum += w[t];
    return cpu_hessian_accumulate_weighted(H, x, w, rows, n, sum > 0 ? (float)(1.0 / sum) : 0.0f,
                                           err);
}

/* Means of |x| per column (weighted by w) and of the group-normalised |W|
 * over the weights ws (n_w of them, each [rows[i], cols]). */
static void channel_means(const float *x, int tokens, int cols, const float *w,
                          const float *const *ws, const int *rows, int n_w, int group_size,
                          double *x_mean, double *w_mean)
{
    memset(x_mean, 0, sizeof(double) * (size_t)cols);
    memset(w_mean, 0, sizeof(double) * (size_t)cols);
    moeq_awq_act_abs_sum(x, tokens, cols, w, x_mean);
    double total = 0.0;
    for (int t = 0; t < tokens; t++)
        total += w ? w[t] : 1.0;
    long n_rows = 0;
    for (int i = 0; i < n_w; i++) {
        moeq_awq_weight_abs_sum(ws[i], rows[i], cols, group_size, w_mean);
        n_rows += rows[i];
    }
    for (int j = 0; j < cols; j++) {
        x_mean[j] = total > 0 ? x_mean[j] / total : 0.0;
        w_mean[j] = n_rows ? w_mean[j] / (double)n_rows : 0.0;
    }
}

/* Quantizes W [rows, cols] (scaled) with AWQ's clipping against H (NULL:
 * none), records it, and writes its dequantized value to W. */
static moeq_code add_linear(awq_ctx *c, moeq_tensor_role role, int expert, float *W, int rows,
                            int cols, const float *H, double alpha, int64_t tokens, int fallback,
                            moeq_error *err)
{
    moeq_layer_result *res = c->res;
    moeq_quantized_linear *l = realloc(res->linears, sizeof *l * (size_t)(res->n_linears + 1));
    if (!l)
        return oom(c, err);
    res->linears = l;
    moeq_quantized_linear *ql = &l[res->n_linears];
    memset(ql, 0, sizeof *ql);
    ql->role = role;
    ql->expert = expert;
    ql->tokens = tokens;
    ql->fallback = fallback;
    ql->awq_alpha = alpha;
    moeq_code rc = moeq_awq_quantize(W, rows, cols, H, &c->opt->gptq, &ql->q, &ql->loss, err);
    if (rc) {
        if (expert >= 0)
            return moeq_wrap(err, "layer %d, expert %d %s: ", c->layer, expert,
                             moeq_tensor_role_key(role));
        return moeq_wrap(err, "layer %d, %s: ", c->layer, moeq_tensor_role_key(role));
    }
    res->n_linears++;
    moeq_quantized_dequantize(&ql->q, W);
    return MOEQ_OK;
}

moeq_code moeq_awq_add_replaced(moeq_layer_result *res, int layer, moeq_tensor_role role,
                                const float *data, size_t count, moeq_error *err)
{
    moeq_replaced_tensor *r = realloc(res->replaced, sizeof *r * (size_t)(res->n_replaced + 1));
    if (!r)
        return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for AWQ", layer);
    res->replaced = r;
    float *copy = malloc(sizeof(float) * count);
    if (!copy)
        return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for AWQ", layer);
    memcpy(copy, data, sizeof(float) * count);
    r[res->n_replaced++] = (moeq_replaced_tensor){role, -1, copy, count};
    return MOEQ_OK;
}

static moeq_code add_replaced(awq_ctx *c, moeq_tensor_role role, const float *data, size_t count,
                              moeq_error *err)
{
    return moeq_awq_add_replaced(c->res, c->layer, role, data, count, err);
}

void moeq_awq_fold_norm(float *norm, float *s, int n, st_dtype dtype)
{
    for (int j = 0; j < n; j++) {
        float folded = moeq_awq_stored_value(norm[j] / s[j], dtype);
        if (norm[j] == 0.0f || folded == 0.0f || !isfinite(folded)) {
            s[j] = 1.0f;
            continue;
        }
        s[j] = norm[j] / folded;
        norm[j] = folded;
    }
}

static moeq_code fold_into_norm(awq_ctx *c, moeq_tensor_role role, float *norm, float *s,
                                moeq_error *err)
{
    moeq_awq_fold_norm(norm, s, c->cfg->hidden_size, source_dtype(c, role));
    return add_replaced(c, role, norm, (size_t)c->cfg->hidden_size, err);
}

/* The candidate scales' scores: score(ctx, s) for alpha = 0, 1/20, ...;
 * s (cols) receives the best scale, the return value its alpha. */
typedef double (*awq_score_fn)(void *ctx, const float *s, moeq_error *err);

static double search_scale(const double *x_mean, const double *w_mean, int cols, int pow2,
                           awq_score_fn score, void *ctx, float *best_s, float *s,
                           moeq_code *rc, moeq_error *err)
{
    double best = INFINITY, best_alpha = 0.0;
    for (int i = 0; i < MOEQ_AWQ_ALPHA_GRID && !*rc; i++) {
        double alpha = (double)i / MOEQ_AWQ_ALPHA_GRID;
        moeq_awq_scales(x_mean, w_mean, cols, alpha, pow2, s);
        double loss = score(ctx, s, err);
        if (isnan(loss))
            *rc = err->code ? err->code : MOEQ_ERR_NUMERIC;
        else if (loss < best) {
            best = loss;
            best_alpha = alpha;
            memcpy(best_s, s, sizeof(float) * (size_t)cols);
        }
    }
    return best_alpha;
}

const char *moeq_awq_missing(const moeq_model *model, const moeq_quantize_options *opt)
{
    const moeq_config *cfg = &model->cfg;
    int linear_layers = 0;
    for (int l = 0; l < cfg->num_layers; l++)
        linear_layers += cfg->layer_is_linear[l];
    return !opt->true_sequential ? "calibration that is not true-sequential"
           : cfg->mlp_bias ? "MLP biases (down_proj's scale would fold into up_proj's bias)"
           : linear_layers ? "linear-attention layers"
           : cfg->attn_output_gate ? "output-gated attention"
           : cfg->attention == MOEQ_ATTENTION_MLA ? "multi-head latent attention"
           : cfg->qk_norm && cfg->qk_norm_full ? "q/k norms over the whole projection"
           : cfg->num_experts && cfg->router != MOEQ_ROUTER_SOFTMAX_TOPK
               ? "routers other than softmax top-k"
           : cfg->router_bias ? "routers with a bias"
           : model->arch.mlp_act != MOEQ_MLP_ACT_SILU ? "MLP activations other than SiLU"
           : model->arch.tensors[MOEQ_T_ATTN_SINKS] ? "attention sinks"
           : opt->quantize_mtp ? "--quantize-mtp"
                               : NULL;
}

/* ---- attention ---- */

typedef struct attn_search {
    const moeq_config *cfg;
    const moeq_layer_weights *lw;
    const moeq_rope_cache *rope;
    const moeq_gptq_config *g;
    const float *x, *ref;
    int S, T;
    float *q, *k, *v, *out;
} attn_search;

static double score_attention(void *ctx, const float *s, moeq_error *err)
{
    attn_search *a = ctx;
    const moeq_config *cfg = a->cfg;
    const int H = cfg->hidden_size, qd = cfg->num_heads * cfg->head_dim,
              kvd = cfg->num_kv_heads * cfg->head_dim;
    moeq_awq_pseudo_quantize(a->lw->q, qd, H, s, a->g, a->q);
    moeq_awq_pseudo_quantize(a->lw->k, kvd, H, s, a->g, a->k);
    moeq_awq_pseudo_quantize(a->lw->v, kvd, H, s, a->g, a->v);
    moeq_layer_weights tmp = *a->lw;
    tmp.q = a->q;
    tmp.k = a->k;
    tmp.v = a->v;
    if (moeq_attention_block(cfg, &tmp, a->rope, a->x, a->S, a->T, a->out, NULL, err))
        return NAN;
    return mean_sq_diff(a->out, a->ref, (size_t)a->S * a->T * H);
}

moeq_code moeq_awq_attention(const moeq_model *model, const moeq_quantize_options *opt,
                             moeq_layer_weights *lw, const moeq_rope_cache *rope, const float *x,
                             int S, int T, float *x1, moeq_layer_result *res, moeq_error *err)
{
    awq_ctx c = {model, &model->cfg, opt, res, lw->layer};
    const double t0 = moeq_now_seconds();
    const moeq_config *cfg = c.cfg;
    const int n = S * T, H = cfg->hidden_size, qd = cfg->num_heads * cfg->head_dim,
              kvd = cfg->num_kv_heads * cfg->head_dim;
    const int S_sub = T >= AWQ_SEARCH_TOKENS ? 1 : S < AWQ_SEARCH_TOKENS / T ? S
                                                                            : AWQ_SEARCH_TOKENS / T;
    const size_t nsub = (size_t)S_sub * T;
    float *h = malloc(sizeof(float) * (size_t)n * H);
    float *Hm = malloc(sizeof(float) * (size_t)(qd > H ? qd : H) * (qd > H ? qd : H));
    float *o_in = malloc(sizeof(float) * (size_t)n * qd);
    float *ref = malloc(sizeof(float) * nsub * H), *out = malloc(sizeof(float) * nsub * H);
    float *pq = malloc(sizeof(float) * (size_t)(qd + 2 * kvd) * H);
    float *s = malloc(sizeof(float) * H), *best_s = malloc(sizeof(float) * H);
    double *xm = malloc(sizeof(double) * H), *wm = malloc(sizeof(double) * H);
    moeq_code rc = MOEQ_OK;
    if (!h || !Hm || !o_in || !ref || !out || !pq || !s || !best_s || !xm || !wm) {
        rc = oom(&c, err);
        goto done;
    }
    cpu_rmsnorm(x, lw->attn_norm, n, H, cfg->rms_norm_eps, h);
    if ((rc = moeq_check_finite(c.layer, h, (size_t)n * H, "the input of q/k/v_proj", err)))
        goto done;
    const float *ws[3] = {lw->q, lw->k, lw->v};
    const int rows[3] = {qd, kvd, kvd};
    channel_means(h, n, H, NULL, ws, rows, 3, opt->gptq.group_size, xm, wm);
    if ((rc = moeq_attention_block(cfg, lw, rope, x, S_sub, T, ref, NULL, err)))
        goto done;
    attn_search a = {cfg, lw, rope, &opt->gptq, x, ref, S_sub, T,
                     pq, pq + (size_t)qd * H, pq + (size_t)(qd + kvd) * H, out};
    double alpha = search_scale(xm, wm, H, 0, score_attention, &a, best_s, s, &rc, err);
    if (rc || (rc = fold_into_norm(&c, MOEQ_T_ATTN_NORM, lw->attn_norm, best_s, err)))
        goto done;
    moeq_awq_scale_columns(lw->q, qd, H, best_s);
    moeq_awq_scale_columns(lw->k, kvd, H, best_s);
    moeq_awq_scale_columns(lw->v, kvd, H, best_s);
    /* The folded norm's output is what q/k/v now read. */
    cpu_rmsnorm(x, lw->attn_norm, n, H, cfg->rms_norm_eps, h);
    if ((rc = second_moment(Hm, h, n, H, NULL, err)) ||
        (rc = add_linear(&c, MOEQ_T_Q_PROJ, -1, lw->q, qd, H, NULL, alpha, n, 0, err)) ||
        (rc = add_linear(&c, MOEQ_T_K_PROJ, -1, lw->k, kvd, H, NULL, alpha, n, 0, err)) ||
        (rc = add_linear(&c, MOEQ_T_V_PROJ, -1, lw->v, kvd, H, Hm, alpha, n, 0, err)))
        goto done;
    moeq_layer_trace trace = {.o_in = o_in};
    if ((rc = moeq_attention_block(cfg, lw, rope, x, S, T, x1, &trace, err)) ||
        (rc = moeq_check_finite(c.layer, o_in, (size_t)n * qd, "the input of o_proj", err)) ||
        (rc = second_moment(Hm, o_in, n, qd, NULL, err)) ||
        (rc = add_linear(&c, MOEQ_T_O_PROJ, -1, lw->o, H, qd, Hm, -1.0, n, 0, err)))
        goto done;
    /* x1 = x + o_q(o_in): the attention output with every weight quantized. */
    cpu_linear(o_in, n, qd, lw->o, lw->o_bias, H, h);
    for (size_t i = 0; i < (size_t)n * H; i++)
        x1[i] = x[i] + h[i];
done:
    res->seconds_solve += moeq_now_seconds() - t0; /* scale searches, clipping, rounding */
    free(h);
    free(Hm);
    free(o_in);
    free(ref);
    free(out);
    free(pq);
    free(s);
    free(best_s);
    free(xm);
    free(wm);
    return rc;
}

/* ---- MLP and experts ---- */

/* A SwiGLU's output y [m, H] on x [m, H] with gate and up given (possibly
 * pseudo-quantized) and its own down_proj; g, u scratch [m, I]. */
static void swiglu(const moeq_config *cfg, const moeq_mlp_weights *w, const float *gate,
                   const float *up, const float *x, int m, float *g, float *u, float *y)
{
    const int H = cfg->hidden_size, I = w->intermediate;
    cpu_linear(x, m, H, gate, w->gate_bias, I, g);
    cpu_linear(x, m, H, up, w->up_bias, I, u);
    cpu_silu_mul(g, u, (size_t)m * I, g);
    cpu_linear(g, m, I, w->down, w->down_bias, H, y);
}

/* The consumers of the normed MLP input: routed experts (or the one dense
 * MLP) combined by coef [m, n_mlps] (0: the token skips that expert), and a
 * shared expert behind an optional sigmoid gate. */
typedef struct mlp_block {
    const moeq_config *cfg;
    moeq_mlp_weights *mlps;
    int n_mlps;
    moeq_mlp_weights *shared; /* NULL when none */
    const float *shared_gate; /* [H] or NULL */
    const moeq_gptq_config *g;
    const float *x;    /* [m, H] the search tokens */
    const float *coef; /* [m, n_mlps] */
    int m;
    const float *ref;  /* [m, H] the unquantized block output */
    float *out, *xs, *ys, *gbuf, *ubuf, *pg, *pu; /* scratch */
    int32_t *rows;
} mlp_block;

/* out = the block's output on the search tokens, each SwiGLU's gate/up
 * pseudo-quantized with scale s (NULL: the original weights). */
static void block_output(mlp_block *b, const float *s)
{
    const int H = b->cfg->hidden_size, m = b->m;
    memset(b->out, 0, sizeof(float) * (size_t)m * H);
    for (int e = 0; e <= b->n_mlps; e++) {
        const moeq_mlp_weights *w = e < b->n_mlps ? &b->mlps[e] : b->shared;
        if (!w)
            break;
        const int I = w->intermediate;
        int k = 0;
        for (int t = 0; t < m; t++)
            if (e == b->n_mlps || b->coef[(size_t)t * b->n_mlps + e] != 0.0f)
                b->rows[k++] = t;
        if (!k)
            continue;
        for (int i = 0; i < k; i++)
            memcpy(b->xs + (size_t)i * H, b->x + (size_t)b->rows[i] * H, sizeof(float) * H);
        const float *gate = w->gate, *up = w->up;
        if (s) {
            moeq_awq_pseudo_quantize(w->gate, I, H, s, b->g, b->pg);
            moeq_awq_pseudo_quantize(w->up, I, H, s, b->g, b->pu);
            gate = b->pg;
            up = b->pu;
        }
        swiglu(b->cfg, w, gate, up, b->xs, k, b->gbuf, b->ubuf, b->ys);
        for (int i = 0; i < k; i++) {
            const int t = b->rows[i];
            float c = 1.0f;
            if (e < b->n_mlps)
                c = b->coef[(size_t)t * b->n_mlps + e];
            else if (b->shared_gate) {
                float z = 0.0f;
                for (int j = 0; j < H; j++)
                    z += b->x[(size_t)t * H + j] * b->shared_gate[j];
                c = 1.0f / (1.0f + expf(-z));
            }
            for (int j = 0; j < H; j++)
                b->out[(size_t)t * H + j] += c * b->ys[(size_t)i * H + j];
        }
    }
}

static double score_block(void *ctx, const float *s, moeq_error *err)
{
    (void)err;
    mlp_block *b = ctx;
    block_output(b, s);
    return mean_sq_diff(b->out, b->ref, (size_t)b->m * b->cfg->hidden_size);
}

/* down_proj's scale search: act [m, I] weighted by w (NULL: 1) against
 * its output with the original weight. */
typedef struct down_search {
    const moeq_config *cfg;
    const moeq_mlp_weights *mlp;
    const moeq_gptq_config *g;
    const float *act, *w, *ref;
    int m;
    float *pd, *out;
} down_search;

static double score_down(void *ctx, const float *s, moeq_error *err)
{
    (void)err;
    down_search *d = ctx;
    const int H = d->cfg->hidden_size, I = d->mlp->intermediate;
    moeq_awq_pseudo_quantize(d->mlp->down, H, I, s, d->g, d->pd);
    cpu_linear(d->act, d->m, I, d->pd, NULL, H, d->out);
    double sum = 0.0, wsum = 0.0;
    for (int t = 0; t < d->m; t++) {
        double wt = d->w ? d->w[t] : 1.0, e = 0.0;
        for (int j = 0; j < H; j++) {
            double diff = (double)d->out[(size_t)t * H + j] - d->ref[(size_t)t * H + j];
            e += diff * diff;
        }
        sum += wt * e;
        wsum += wt;
    }
    return wsum > 0 ? sum / wsum : 0.0;
}

/* One SwiGLU whose gate/up already carry the shared input scale (alpha
 * alpha_gu): its tokens x [m, H] (the folded norm's output) with weights w
 * (NULL: 1); searches its down_proj scale, folds it into up_proj, and
 * quantizes gate, up, then down on the quantized gate/up's output. */
static moeq_code quantize_swiglu(awq_ctx *c, moeq_mlp_weights *mlp,
                                 const moeq_tensor_role roles[3], int expert, const float *x,
                                 int m, const float *w, double alpha_gu, int fallback,
                                 moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int H = cfg->hidden_size, I = mlp->intermediate;
    const int stride = m > AWQ_SEARCH_TOKENS ? (m + AWQ_SEARCH_TOKENS - 1) / AWQ_SEARCH_TOKENS : 1;
    const int ms = (m + stride - 1) / stride;
    float *g = malloc(sizeof(float) * ((size_t)m * I + 1));
    float *u = malloc(sizeof(float) * ((size_t)m * I + 1));
    float *sub = malloc(sizeof(float) * ((size_t)ms * I + 1));
    float *sub_w = w ? malloc(sizeof(float) * ((size_t)ms + 1)) : NULL;
    float *ref = malloc(sizeof(float) * ((size_t)ms * H + 1));
    float *out = malloc(sizeof(float) * ((size_t)ms * H + 1));
    float *pd = malloc(sizeof(float) * (size_t)H * I);
    float *Hm = malloc(sizeof(float) * (size_t)(H > I ? H : I) * (H > I ? H : I));
    float *s = malloc(sizeof(float) * I), *best_s = malloc(sizeof(float) * I);
    double *xm = malloc(sizeof(double) * I), *wm = malloc(sizeof(double) * I);
    moeq_code rc = MOEQ_OK;
    char what[96];
    snprintf(what, sizeof what, "the input of %s%s", expert >= 0 ? "an expert's " : "",
             moeq_tensor_role_key(roles[2]));
    if (!g || !u || !sub || (w && !sub_w) || !ref || !out || !pd || !Hm || !s || !best_s || !xm ||
        !wm) {
        rc = oom(c, err);
        goto done;
    }
    /* down_proj's inputs with the unquantized (scaled) gate/up, as AutoAWQ
     * takes every scale's statistics from the unquantized layer. */
    cpu_linear(x, m, H, mlp->gate, mlp->gate_bias, I, g);
    cpu_linear(x, m, H, mlp->up, mlp->up_bias, I, u);
    cpu_silu_mul(g, u, (size_t)m * I, g);
    if ((rc = moeq_check_finite(c->layer, g, (size_t)m * I, what, err)))
        goto done;
    const float *wd[1] = {mlp->down};
    const int rd[1] = {H};
    channel_means(g, m, I, w, wd, rd, 1, c->opt->gptq.group_size, xm, wm);
    for (int i = 0; i < ms; i++) {
        memcpy(sub + (size_t)i * I, g + (size_t)i * stride * I, sizeof(float) * I);
        if (w)
            sub_w[i] = w[(size_t)i * stride];
    }
    cpu_linear(sub, ms, I, mlp->down, NULL, H, ref);
    down_search d = {cfg, mlp, &c->opt->gptq, sub, sub_w, ref, ms, pd, out};
    double alpha_d = search_scale(xm, wm, I, 0, score_down, &d, best_s, s, &rc, err);
    if (rc)
        goto done;
    /* Fold: up_proj's rows divided by the scale, down_proj's columns
     * multiplied by it (silu(gate) * up is linear in up). */
    for (int r = 0; r < I; r++)
        for (int j = 0; j < H; j++)
            mlp->up[(size_t)r * H + j] /= best_s[r];
    moeq_awq_scale_columns(mlp->down, H, I, best_s);
    if ((rc = second_moment(Hm, x, m, H, w, err)) ||
        (rc = add_linear(c, roles[0], expert, mlp->gate, I, H, Hm, alpha_gu, m, fallback, err)) ||
        (rc = add_linear(c, roles[1], expert, mlp->up, I, H, Hm, alpha_gu, m, fallback, err)))
        goto done;
    cpu_linear(x, m, H, mlp->gate, mlp->gate_bias, I, g);
    cpu_linear(x, m, H, mlp->up, mlp->up_bias, I, u);
    cpu_silu_mul(g, u, (size_t)m * I, g);
    if ((rc = second_moment(Hm, g, m, I, w, err)))
        goto done;
    rc = add_linear(c, roles[2], expert, mlp->down, H, I, Hm, alpha_d, m, fallback, err);
done:
    free(g);
    free(u);
    free(sub);
    free(sub_w);
    free(ref);
    free(out);
    free(pd);
    free(Hm);
    free(s);
    free(best_s);
    free(xm);
    free(wm);
    return rc;
}

/* Router logits of the normed input h [n, H] and their top-k. */
static moeq_code route(const awq_ctx *c, const moeq_layer_weights *lw, const float *h, int n,
                       float *logits, float *topw, int32_t *tope, moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    cpu_linear(h, n, cfg->hidden_size, lw->router, NULL, cfg->num_experts, logits);
    cpu_router_params rp = moeq_router_params(cfg);
    return cpu_router_topk(logits, n, cfg->num_experts, &rp, topw, tope, err);
}

moeq_code moeq_awq_mlp(const moeq_model *model, const moeq_quantize_options *opt,
                       moeq_layer_weights *lw, const float *x1, int n, moeq_layer_result *res,
                       moeq_error *err)
{
    awq_ctx c = {model, &model->cfg, opt, res, lw->layer};
    const double t0 = moeq_now_seconds();
    const moeq_config *cfg = c.cfg;
    const int H = cfg->hidden_size, moe = lw->is_moe;
    const int E = moe ? cfg->num_experts : 1, k = moe ? cfg->num_experts_per_tok : 1;
    const moeq_expert_calib mode = opt->expert_calib;
    moeq_mlp_weights *mlps = moe ? lw->experts : &lw->dense;
    moeq_mlp_weights *shared = moe && lw->has_shared ? &lw->shared : NULL;
    int inter = 0;
    for (int e = 0; e < E; e++)
        inter = mlps[e].intermediate > inter ? mlps[e].intermediate : inter;
    if (shared && shared->intermediate > inter)
        inter = shared->intermediate;
    const int stride = n > AWQ_SEARCH_TOKENS ? (n + AWQ_SEARCH_TOKENS - 1) / AWQ_SEARCH_TOKENS : 1;
    const int ms = (n + stride - 1) / stride;
    float *h = malloc(sizeof(float) * (size_t)n * H);
    float *logits = malloc(sizeof(float) * (size_t)n * E);
    float *probs = malloc(sizeof(float) * (size_t)n * E);
    float *topw = malloc(sizeof(float) * (size_t)n * k), *topw2 = malloc(sizeof(float) * (size_t)n * k);
    int32_t *tope = malloc(sizeof(int32_t) * (size_t)n * k);
    int32_t *tope2 = malloc(sizeof(int32_t) * (size_t)n * k);
    float *coef = malloc(sizeof(float) * (size_t)ms * E);
    float *hs = malloc(sizeof(float) * (size_t)ms * H), *ref = malloc(sizeof(float) * (size_t)ms * H);
    float *out = malloc(sizeof(float) * (size_t)ms * H), *xs = malloc(sizeof(float) * (size_t)ms * H);
    float *ys = malloc(sizeof(float) * (size_t)ms * H);
    float *gbuf = malloc(sizeof(float) * (size_t)ms * inter);
    float *ubuf = malloc(sizeof(float) * (size_t)ms * inter);
    float *pg = malloc(sizeof(float) * (size_t)inter * H), *pu = malloc(sizeof(float) * (size_t)inter * H);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)(n > ms ? n : ms));
    float *xe = malloc(sizeof(float) * (size_t)n * H), *pe = malloc(sizeof(float) * (size_t)n);
    float *s = malloc(sizeof(float) * H), *best_s = malloc(sizeof(float) * H);
    double *xm = malloc(sizeof(double) * H), *wm = malloc(sizeof(double) * H);
    const float **ws = malloc(sizeof(float *) * (size_t)(2 * E + 2));
    int *wrows = malloc(sizeof(int) * (size_t)(2 * E + 2));
    if (moe)
        res->expert_tokens = calloc((size_t)E, sizeof(int64_t));
    moeq_code rc = MOEQ_OK;
    if (!h || !logits || !probs || !topw || !topw2 || !tope || !tope2 || !coef || !hs || !ref ||
        !out || !xs || !ys || !gbuf || !ubuf || !pg || !pu || !rows || !xe || !pe || !s ||
        !best_s || !xm || !wm || !ws || !wrows || (moe && !res->expert_tokens)) {
        rc = oom(&c, err);
        goto done;
    }
    cpu_rmsnorm(x1, lw->mlp_norm, n, H, cfg->rms_norm_eps, h);
    if ((rc = moeq_check_finite(c.layer, h, (size_t)n * H, "the input of the MLP", err)))
        goto done;
    if (moe) {
        if ((rc = route(&c, lw, h, n, logits, topw, tope, err)))
            goto done;
        cpu_softmax_rows(logits, n, E, probs);
        for (size_t i = 0; i < (size_t)n * k; i++)
            res->expert_tokens[tope[i]]++;
    }
    /* The search tokens and each expert's weight in the block output. */
    for (int i = 0; i < ms; i++) {
        const int t = i * stride;
        memcpy(hs + (size_t)i * H, h + (size_t)t * H, sizeof(float) * H);
        for (int e = 0; e < E; e++)
            coef[(size_t)i * E + e] = !moe || mode == MOEQ_EXPERT_CALIB_ALL ? 1.0f
                                      : mode == MOEQ_EXPERT_CALIB_WEIGHTED ? probs[(size_t)t * E + e]
                                                                           : 0.0f;
        if (moe && mode == MOEQ_EXPERT_CALIB_ROUTED)
            for (int j = 0; j < k; j++)
                coef[(size_t)i * E + tope[(size_t)t * k + j]] = topw[(size_t)t * k + j];
    }
    int n_w = 0;
    for (int e = 0; e <= E; e++) {
        const moeq_mlp_weights *m = e < E ? &mlps[e] : shared;
        if (!m)
            break;
        ws[n_w] = m->gate;
        wrows[n_w++] = m->intermediate;
        ws[n_w] = m->up;
        wrows[n_w++] = m->intermediate;
    }
    channel_means(h, n, H, NULL, ws, wrows, n_w, opt->gptq.group_size, xm, wm);
    mlp_block b = {cfg, mlps, E, shared, lw->shared_gate, &opt->gptq, hs, coef, ms, ref,
                   out, xs, ys, gbuf, ubuf, pg, pu, rows};
    block_output(&b, NULL); /* the reference: unquantized gate/up */
    memcpy(ref, out, sizeof(float) * (size_t)ms * H);
    /* A router reading the norm's output needs power-of-two scales. */
    double alpha = search_scale(xm, wm, H, moe, score_block, &b, best_s, s, &rc, err);
    if (rc || (rc = fold_into_norm(&c, MOEQ_T_MLP_NORM, lw->mlp_norm, best_s, err)))
        goto done;
    for (int e = 0; e <= E; e++) {
        moeq_mlp_weights *m = e < E ? &mlps[e] : shared;
        if (!m)
            break;
        moeq_awq_scale_columns(m->gate, m->intermediate, H, best_s);
        moeq_awq_scale_columns(m->up, m->intermediate, H, best_s);
    }
    cpu_rmsnorm(x1, lw->mlp_norm, n, H, cfg->rms_norm_eps, h);
    if (moe) {
        /* Compensate the router (and the shared-expert gate): same logits
         * from the scaled activations. */
        const st_dtype rd = source_dtype(&c, MOEQ_T_ROUTER);
        moeq_awq_scale_columns(lw->router, E, H, best_s);
        for (size_t i = 0; i < (size_t)E * H; i++)
            lw->router[i] = moeq_awq_stored_value(lw->router[i], rd);
        if ((rc = add_replaced(&c, MOEQ_T_ROUTER, lw->router, (size_t)E * H, err)))
            goto done;
        if (lw->shared_gate) {
            const st_dtype gd = source_dtype(&c, MOEQ_T_SHARED_EXPERT_GATE);
            for (int j = 0; j < H; j++)
                lw->shared_gate[j] = moeq_awq_stored_value(lw->shared_gate[j] * best_s[j], gd);
            if ((rc = add_replaced(&c, MOEQ_T_SHARED_EXPERT_GATE, lw->shared_gate, (size_t)H,
                                   err)))
                goto done;
        }
        if ((rc = route(&c, lw, h, n, logits, topw2, tope2, err)))
            goto done;
        res->routing_changes = 0;
        for (int t = 0; t < n; t++)
            res->routing_changes += memcmp(tope + (size_t)t * k, tope2 + (size_t)t * k,
                                           sizeof(int32_t) * (size_t)k) != 0 ||
                                    memcmp(topw + (size_t)t * k, topw2 + (size_t)t * k,
                                           sizeof(float) * (size_t)k) != 0;
        if (res->routing_changes && opt->progress)
            fprintf(opt->progress,
                    "warning: layer %d: the AWQ-scaled router changes the top-k of %lld "
                    "calibration tokens\n",
                    c.layer, (long long)res->routing_changes);
    }
    for (int e = 0; e < E && !rc; e++) {
        const float *x = h, *w = NULL;
        int m = n, fallback = 0;
        if (moe && mode == MOEQ_EXPERT_CALIB_ROUTED) {
            int r = 0;
            for (int t = 0; t < n; t++)
                for (int j = 0; j < k; j++)
                    if (tope[(size_t)t * k + j] == e)
                        memcpy(xe + (size_t)r++ * H, h + (size_t)t * H, sizeof(float) * H);
            if (r < opt->min_expert_tokens) {
                fallback = 1;
                moeq_warn_expert_fallback(opt, e, c.layer, r);
            } else {
                x = xe;
                m = r;
            }
        } else if (moe && mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
            for (int t = 0; t < n; t++)
                pe[t] = probs[(size_t)t * E + e];
            w = pe;
        }
        rc = quantize_swiglu(&c, &mlps[e], moe ? MOEQ_EXPERT_ROLES : MOEQ_DENSE_ROLES,
                             moe ? e : -1, x, m, w, alpha, fallback, err);
    }
    if (!rc && shared)
        rc = quantize_swiglu(&c, shared, MOEQ_SHARED_ROLES, -1, h, n, NULL, alpha, 0, err);
done:
    res->seconds_solve += moeq_now_seconds() - t0;
    free(h);
    free(logits);
    free(probs);
    free(topw);
    free(topw2);
    free(tope);
    free(tope2);
    free(coef);
    free(hs);
    free(ref);
    free(out);
    free(xs);
    free(ys);
    free(gbuf);
    free(ubuf);
    free(pg);
    free(pu);
    free(rows);
    free(xe);
    free(pe);
    free(s);
    free(best_s);
    free(xm);
    free(wm);
    free(ws);
    free(wrows);
    return rc;
}
