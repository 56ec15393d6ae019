/* quantize.c: the CPU layer loop (see quantize.h for the expert
 * calibration modes). True-sequential order inside a layer: q/k/v (one
 * shared Hessian), then o_proj from the attention output of the quantized
 * q/k/v (MLA: the a-projections, then q_b/kv_b_proj on their latents, then
 * o_proj), then the MLP or experts from the normed output of the quantized
 * attention block; gate/up before down, down's inputs computed with the
 * quantized gate/up. The layer output uses every quantized weight and the
 * real top-k routing, in every mode. */
#include "pipeline/quantize.h"

#include "backend/cpu/cpu_ops.h"
#include "common/clock.h"
#include "common/failpoint.h"
#include "model/deltanet.h"
#include "model/forward.h"
#include "model/mtp.h"
#include "model/weights.h"
#include "pipeline/quantize_awq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *moeq_expert_calib_name(moeq_expert_calib mode)
{
    switch (mode) {
    case MOEQ_EXPERT_CALIB_ROUTED: return "routed";
    case MOEQ_EXPERT_CALIB_ALL: return "all";
    case MOEQ_EXPERT_CALIB_WEIGHTED: return "weighted";
    }
    return "?";
}

void moeq_warn_expert_fallback(const moeq_quantize_options *opt, int expert, int layer,
                               int tokens)
{
    if (opt->progress)
        fprintf(opt->progress,
                "warning: expert %d of layer %d saw %d calibration tokens (fewer than "
                "--min-expert-tokens %d): calibrating it on all tokens; use --expert-calib "
                "weighted or all to calibrate every expert fully\n",
                expert, layer, tokens, opt->min_expert_tokens);
}

const char *moeq_method_name(moeq_method method)
{
    switch (method) {
    case MOEQ_METHOD_GPTQ: return "gptq";
    case MOEQ_METHOD_RTN: return "rtn";
    case MOEQ_METHOD_AWQ: return "awq";
    }
    return "?";
}

/* The state of one layer's quantization. */
typedef struct layer_ctx {
    const moeq_config *cfg;
    const moeq_quantize_options *opt;
    int layer;
    moeq_layer_result *res;
    int cap;
    float **targets; /* [cap]: the fp32 weight each result replaces */
} layer_ctx;

static const char *role_label(moeq_tensor_role role, int expert, char *buf, size_t bytes)
{
    if (expert >= 0)
        snprintf(buf, bytes, "expert %d %s", expert, moeq_tensor_role_key(role));
    else
        snprintf(buf, bytes, "%s", moeq_tensor_role_key(role));
    return buf;
}

moeq_code moeq_check_finite(int layer, const float *x, size_t n, const char *what,
                            moeq_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return moeq_fail(err, MOEQ_ERR_NUMERIC,
                             "layer %d: non-finite activation in %s (element %zu): the model "
                             "or the calibration data produce NaN/Inf",
                             layer, what, i);
    return MOEQ_OK;
}

/* H = alpha * x^T diag(w) x (w NULL: unweighted), over rows tokens. */
static moeq_code hessian(float *H, const float *x, int rows, int n, const float *w, float alpha,
                         moeq_error *err)
{
    memset(H, 0, sizeof(float) * (size_t)n * n);
    if (rows == 0)
        return MOEQ_OK;
    if (!w) {
        cpu_hessian_accumulate(H, x, rows, n, alpha);
        return MOEQ_OK;
    }
    return cpu_hessian_accumulate_weighted(H, x, w, rows, n, alpha, err);
}

static moeq_code prepare(const layer_ctx *c, const float *H, int cols, const char *what,
                         moeq_gptq_prepared *prep, moeq_error *err)
{
    memset(prep, 0, sizeof *prep);
    if (c->opt->method != MOEQ_METHOD_GPTQ)
        return MOEQ_OK;
    double t0 = moeq_now_seconds();
    moeq_code rc = moeq_gptq_prepare(H, cols, &c->opt->gptq, prep, err);
    c->res->seconds_prepare += moeq_now_seconds() - t0;
    if (rc)
        return moeq_wrap(err, "layer %d, %s: ", c->layer, what);
    return MOEQ_OK;
}

/* Quantizes w [rows, cols] (GPTQ against prep, or RTN), records it, and
 * (true-sequential) overwrites w with its dequantized value for the stages
 * that follow. */
static moeq_code quantize_weight(layer_ctx *c, const moeq_gptq_prepared *prep,
                                 moeq_tensor_role role, int expert, float *w, int rows, int cols,
                                 int64_t tokens, int fallback, moeq_error *err)
{
    if (c->res->n_linears == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        moeq_quantized_linear *l = realloc(c->res->linears, sizeof *l * (size_t)cap);
        if (l)
            c->res->linears = l;
        float **t = l ? realloc(c->targets, sizeof *t * (size_t)cap) : NULL;
        if (!t)
            return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory", c->layer);
        c->targets = t;
        c->cap = cap;
    }
    moeq_quantized_linear *ql = &c->res->linears[c->res->n_linears];
    memset(ql, 0, sizeof *ql);
    ql->role = role;
    ql->expert = expert;
    ql->tokens = tokens;
    ql->fallback = fallback;
    char what[96];
    moeq_code rc;
    if (c->opt->method == MOEQ_METHOD_GPTQ) {
        ql->damp = prep->damp_used;
        rc = moeq_gptq_sweep(prep, &c->opt->gptq, w, rows, &ql->q, &ql->loss, err);
    } else {
        rc = moeq_rtn_quantize(w, rows, cols, &c->opt->gptq, &ql->q, err);
    }
    if (rc)
        return moeq_wrap(err, "layer %d, %s: ", c->layer, role_label(role, expert, what, sizeof what));
    c->targets[c->res->n_linears++] = w;
    /* True-sequential: later stages see this weight quantized. Otherwise
     * the whole layer is calibrated on the original weights and the
     * replacement waits for the end of the layer (apply_quantized). */
    if (c->opt->true_sequential)
        moeq_quantized_dequantize(&ql->q, w);
    return MOEQ_OK;
}

/* Quantizes one SwiGLU MLP (dense MLP, expert or shared expert) on the
 * tokens x [rows, H], each weighted by token_w (NULL: all 1). prep_gu, when
 * not NULL, is the gate/up factorisation shared with other experts;
 * otherwise it is built from x. down_proj's Hessian comes from
 * act(gate(x), up(x)) with the quantized gate/up, in token chunks. */
static moeq_code quantize_swiglu(layer_ctx *c, moeq_mlp_weights *mlp,
                                 const moeq_tensor_role roles[3], int expert, const float *x,
                                 int rows, const float *token_w, float alpha,
                                 const moeq_gptq_prepared *prep_gu, int64_t tokens, int fallback,
                                 moeq_layer_result *res, moeq_error *err)
{
    const int hidden = c->cfg->hidden_size, inter = mlp->intermediate;
    const int chunk = c->opt->token_chunk > 0 ? c->opt->token_chunk : MOEQ_DEFAULT_TOKEN_CHUNK;
    double t0 = moeq_now_seconds();
    moeq_gptq_prepared own_gu = {0}, prep_down = {0};
    char what[96];
    float *H = NULL, *g = NULL, *u = NULL;
    moeq_code rc = MOEQ_OK;
    int gptq = c->opt->method == MOEQ_METHOD_GPTQ;
    if (gptq && !prep_gu) {
        if (!(H = malloc(sizeof(float) * (size_t)hidden * hidden))) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory", c->layer);
            goto done;
        }
        if ((rc = hessian(H, x, rows, hidden, token_w, alpha, err)))
            goto done;
        res->seconds_hessian += moeq_now_seconds() - t0;
        t0 = moeq_now_seconds();
        if ((rc = prepare(c, H, hidden, role_label(roles[0], expert, what, sizeof what), &own_gu,
                          err)))
            goto done;
        prep_gu = &own_gu;
        free(H);
        H = NULL;
    }
    t0 = moeq_now_seconds();
    if ((rc = quantize_weight(c, prep_gu, roles[0], expert, mlp->gate, inter, hidden, tokens,
                              fallback, err)) ||
        (rc = quantize_weight(c, prep_gu, roles[1], expert, mlp->up, inter, hidden, tokens,
                              fallback, err)))
        goto done;
    res->seconds_solve += moeq_now_seconds() - t0;
    if (gptq) {
        t0 = moeq_now_seconds();
        H = calloc((size_t)inter * inter, sizeof(float));
        g = malloc(sizeof(float) * (size_t)chunk * inter);
        u = malloc(sizeof(float) * (size_t)chunk * inter);
        if (!H || !g || !u) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for down_proj inputs",
                           c->layer);
            goto done;
        }
        for (int r0 = 0; r0 < rows; r0 += chunk) {
            int m = rows - r0 < chunk ? rows - r0 : chunk;
            const float *xc = x + (size_t)r0 * hidden;
            cpu_linear(xc, m, hidden, mlp->gate, mlp->gate_bias, inter, g);
            cpu_linear(xc, m, hidden, mlp->up, mlp->up_bias, inter, u);
            moeq_mlp_gate(c->cfg, g, u, (size_t)m * inter);
            if ((rc = moeq_check_finite(c->layer, g, (size_t)m * inter,
                                        role_label(roles[2], expert, what, sizeof what), err)))
                goto done;
            if (token_w)
                rc = cpu_hessian_accumulate_weighted(H, g, token_w + r0, m, inter, alpha, err);
            else
                cpu_hessian_accumulate(H, g, m, inter, alpha);
            if (rc)
                goto done;
        }
        res->seconds_hessian += moeq_now_seconds() - t0;
        if ((rc = prepare(c, H, inter, role_label(roles[2], expert, what, sizeof what),
                          &prep_down, err)))
            goto done;
    }
    t0 = moeq_now_seconds();
    rc = quantize_weight(c, &prep_down, roles[2], expert, mlp->down, hidden, inter, tokens,
                         fallback, err);
    res->seconds_solve += moeq_now_seconds() - t0;
done:
    moeq_gptq_prepared_free(&own_gu);
    moeq_gptq_prepared_free(&prep_down);
    free(H);
    free(g);
    free(u);
    return rc;
}

/* h = rmsnorm(x) over n tokens (checked finite), and for GPTQ its
 * all-token Hessian (2/n) h^T h in H, factorised into prep for module. */
static moeq_code normed_input(layer_ctx *c, const float *x, const float *norm, int n, float *h,
                              float *H, const char *input, const char *module,
                              moeq_gptq_prepared *prep, moeq_error *err)
{
    const int hidden = c->cfg->hidden_size;
    double t0 = moeq_now_seconds();
    cpu_rmsnorm(x, norm, n, hidden, c->cfg->rms_norm_eps, h);
    moeq_code rc = moeq_check_finite(c->layer, h, (size_t)n * hidden, input, err);
    c->res->seconds_capture += moeq_now_seconds() - t0;
    if (rc || c->opt->method != MOEQ_METHOD_GPTQ)
        return rc;
    t0 = moeq_now_seconds();
    if ((rc = hessian(H, h, n, hidden, NULL, 2.0f / (float)n, err)))
        return rc;
    c->res->seconds_hessian += moeq_now_seconds() - t0;
    return prepare(c, H, hidden, module, prep, err);
}

const moeq_tensor_role MOEQ_DENSE_ROLES[3] = {MOEQ_T_GATE_PROJ, MOEQ_T_UP_PROJ,
                                              MOEQ_T_DOWN_PROJ};
const moeq_tensor_role MOEQ_EXPERT_ROLES[3] = {MOEQ_T_EXPERT_GATE_PROJ, MOEQ_T_EXPERT_UP_PROJ,
                                               MOEQ_T_EXPERT_DOWN_PROJ};
const moeq_tensor_role MOEQ_SHARED_ROLES[3] = {MOEQ_T_SHARED_GATE_PROJ, MOEQ_T_SHARED_UP_PROJ,
                                               MOEQ_T_SHARED_DOWN_PROJ};

/* Quantizes w [rows, cols] against the Hessian (2/n) in^T in of its
 * captured inputs in [n, cols] (checked finite; H has room for cols^2). */
static moeq_code quantize_on_inputs(layer_ctx *c, const float *in, int n, int cols,
                                    moeq_tensor_role role, float *w, int rows, float *H,
                                    moeq_error *err)
{
    char what[96];
    const char *name = role_label(role, -1, what, sizeof what);
    char input[128];
    snprintf(input, sizeof input, "the input of %s", name);
    moeq_gptq_prepared prep = {0};
    moeq_code rc = moeq_check_finite(c->layer, in, (size_t)n * cols, input, err);
    if (!rc && c->opt->method == MOEQ_METHOD_GPTQ) {
        double t0 = moeq_now_seconds();
        if (!(rc = hessian(H, in, n, cols, NULL, 2.0f / (float)n, err))) {
            c->res->seconds_hessian += moeq_now_seconds() - t0;
            rc = prepare(c, H, cols, name, &prep, err);
        }
    }
    if (!rc) {
        double t0 = moeq_now_seconds();
        rc = quantize_weight(c, &prep, role, -1, w, rows, cols, n, 0, err);
        c->res->seconds_solve += moeq_now_seconds() - t0;
    }
    moeq_gptq_prepared_free(&prep);
    return rc;
}

/* The last step of an attention stage: the attention block once more with
 * every earlier projection quantized, its o_proj inputs o_in [n, odim]
 * captured; o_proj quantized on them; x1 = x + o_q(o_in). h [n, H] and H
 * (odim^2) are scratch. */
static moeq_code quantize_o_proj(layer_ctx *c, moeq_layer_weights *lw,
                                 const moeq_rope_cache *rope, const float *x, int S, int T,
                                 int odim, float *o_in, float *h, float *H, float *x1,
                                 moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int n = S * T, hidden = cfg->hidden_size;
    double t0 = moeq_now_seconds();
    moeq_layer_trace trace = {.o_in = o_in};
    moeq_code rc = moeq_attention_block(cfg, lw, rope, x, S, T, x1, &trace, err);
    if (rc)
        return rc;
    c->res->seconds_capture += moeq_now_seconds() - t0;
    if ((rc = quantize_on_inputs(c, o_in, n, odim, MOEQ_T_O_PROJ, lw->o, hidden, H, err)))
        return rc;
    t0 = moeq_now_seconds();
    cpu_linear(o_in, n, odim, lw->o, lw->o_bias, hidden, h);
    for (size_t i = 0; i < (size_t)n * hidden; i++)
        x1[i] = x[i] + h[i];
    c->res->seconds_forward += moeq_now_seconds() - t0;
    return MOEQ_OK;
}

/* q/k/v against one Hessian of the normed input, then o_proj against the
 * attention output computed with the quantized q/k/v; x1 = x + attn(x). */
static moeq_code quantize_attention(layer_ctx *c, moeq_layer_weights *lw,
                                    const moeq_rope_cache *rope, const float *x, int S, int T,
                                    float *x1, moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int n = S * T, hidden = cfg->hidden_size;
    const int qdim = cfg->num_heads * cfg->head_dim, kvdim = cfg->num_kv_heads * cfg->head_dim;
    const int q_rows = cfg->attn_output_gate ? 2 * qdim : qdim; /* [query | gate] per head */
    moeq_layer_result *res = c->res;
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *o_in = malloc(sizeof(float) * (size_t)n * qdim);
    float *H = malloc(sizeof(float) * (size_t)(qdim > hidden ? qdim : hidden) *
                      (size_t)(qdim > hidden ? qdim : hidden));
    moeq_gptq_prepared prep = {0};
    moeq_code rc = MOEQ_OK;
    if (!h || !o_in || !H) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the attention stage",
                       c->layer);
        goto done;
    }
    if ((rc = normed_input(c, x, lw->attn_norm, n, h, H, "the input of q/k/v_proj",
                           "q/k/v_proj", &prep, err)))
        goto done;
    double t0 = moeq_now_seconds();
    if ((rc = quantize_weight(c, &prep, MOEQ_T_Q_PROJ, -1, lw->q, q_rows, hidden, n, 0, err)) ||
        (rc = quantize_weight(c, &prep, MOEQ_T_K_PROJ, -1, lw->k, kvdim, hidden, n, 0, err)) ||
        (rc = quantize_weight(c, &prep, MOEQ_T_V_PROJ, -1, lw->v, kvdim, hidden, n, 0, err)))
        goto done;
    res->seconds_solve += moeq_now_seconds() - t0;
    moeq_gptq_prepared_free(&prep);
    rc = quantize_o_proj(c, lw, rope, x, S, T, qdim, o_in, h, H, x1, err);
done:
    moeq_gptq_prepared_free(&prep);
    free(h);
    free(o_in);
    free(H);
    return rc;
}

/* A Gated DeltaNet layer: every in_proj against one Hessian of the normed
 * input (they all read it), then out_proj against the gated-norm output of
 * the core computed with the quantized in_proj; x1 = x + out_proj(core).
 * in_proj_b / in_proj_a (in_proj_ba) only with opt->quantize_linear_ba. */
static moeq_code quantize_linear_attention(layer_ctx *c, moeq_layer_weights *lw,
                                           const float *x, int S, int T, float *x1,
                                           moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int n = S * T, hidden = cfg->hidden_size, hv = cfg->la_num_v_heads;
    const int kd = cfg->la_num_k_heads * cfg->la_k_head_dim, vd = hv * cfg->la_v_head_dim;
    const int side = vd > hidden ? vd : hidden;
    moeq_deltanet_weights *w = &lw->la;
    moeq_layer_result *res = c->res;
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *o_in = malloc(sizeof(float) * (size_t)n * vd);
    float *H = malloc(sizeof(float) * (size_t)side * side);
    moeq_gptq_prepared prep = {0};
    moeq_code rc = MOEQ_OK;
    if (!h || !o_in || !H) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the linear attention "
                       "stage", c->layer);
        goto done;
    }
    if ((rc = normed_input(c, x, lw->attn_norm, n, h, H, "the input of the linear attention",
                           "linear attention in_proj", &prep, err)))
        goto done;
    /* The in_proj linears this layer quantizes: fused (Qwen3-Next) or
     * separate (Qwen3.5); b/a only when asked. */
    typedef struct {
        moeq_tensor_role role;
        float *weight;
        int rows;
    } in_proj;
    in_proj in[4];
    int n_in = 0, ba = c->opt->quantize_linear_ba;
    if (w->in_qkvz) {
        in[n_in++] = (in_proj){MOEQ_T_LA_IN_QKVZ, w->in_qkvz, 2 * kd + 2 * vd};
        if (ba)
            in[n_in++] = (in_proj){MOEQ_T_LA_IN_BA, w->in_ba, 2 * hv};
    } else {
        in[n_in++] = (in_proj){MOEQ_T_LA_IN_QKV, w->in_qkv, 2 * kd + vd};
        in[n_in++] = (in_proj){MOEQ_T_LA_IN_Z, w->in_z, vd};
        if (ba) {
            in[n_in++] = (in_proj){MOEQ_T_LA_IN_B, w->in_b, hv};
            in[n_in++] = (in_proj){MOEQ_T_LA_IN_A, w->in_a, hv};
        }
    }
    double t0 = moeq_now_seconds();
    for (int i = 0; i < n_in && !rc; i++)
        rc = quantize_weight(c, &prep, in[i].role, -1, in[i].weight, in[i].rows, hidden, n, 0,
                             err);
    res->seconds_solve += moeq_now_seconds() - t0;
    moeq_gptq_prepared_free(&prep);
    if (rc)
        goto done;

    t0 = moeq_now_seconds();
    if ((rc = moeq_deltanet_core(cfg, lw, h, S, T, o_in, err)) ||
        (rc = moeq_check_finite(c->layer, o_in, (size_t)n * vd, "the input of out_proj", err)))
        goto done;
    res->seconds_capture += moeq_now_seconds() - t0;
    if (c->opt->method == MOEQ_METHOD_GPTQ) {
        t0 = moeq_now_seconds();
        if ((rc = hessian(H, o_in, n, vd, NULL, 2.0f / (float)n, err)))
            goto done;
        res->seconds_hessian += moeq_now_seconds() - t0;
        if ((rc = prepare(c, H, vd, "out_proj", &prep, err)))
            goto done;
    }
    t0 = moeq_now_seconds();
    if ((rc = quantize_weight(c, &prep, MOEQ_T_LA_OUT_PROJ, -1, w->out, hidden, vd, n, 0, err)))
        goto done;
    res->seconds_solve += moeq_now_seconds() - t0;
    t0 = moeq_now_seconds();
    cpu_linear(o_in, n, vd, w->out, NULL, hidden, h);
    for (size_t i = 0; i < (size_t)n * hidden; i++)
        x1[i] = x[i] + h[i];
    res->seconds_forward += moeq_now_seconds() - t0;
done:
    moeq_gptq_prepared_free(&prep);
    free(h);
    free(o_in);
    free(H);
    return rc;
}

/* Multi-head latent attention: the a-projections (q_a_proj, or q_proj
 * without q_lora_rank, and kv_a_proj_with_mqa) share the Hessian of the
 * normed input; q_b_proj and kv_b_proj are calibrated on their normed
 * latents computed with the quantized a-projections, o_proj on the attention
 * output of all of them. x1 = x + attn(x). */
static moeq_code quantize_mla(layer_ctx *c, moeq_layer_weights *lw, const moeq_rope_cache *rope,
                              const float *x, int S, int T, float *x1, moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int n = S * T, hidden = cfg->hidden_size, heads = cfg->num_heads;
    const int rq = cfg->q_lora_rank, rkv = cfg->kv_lora_rank;
    const int q_rows = heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim);
    const int kv_a_rows = rkv + cfg->qk_rope_head_dim;
    const int kv_b_rows = heads * (cfg->qk_nope_head_dim + cfg->v_head_dim);
    const int odim = moeq_o_proj_in_dim(cfg);
    int wide = hidden > odim ? hidden : odim;
    wide = wide > rq ? wide : rq;
    wide = wide > rkv ? wide : rkv;
    moeq_layer_result *res = c->res;
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *H = malloc(sizeof(float) * (size_t)wide * wide);
    float *q_b_in = rq ? malloc(sizeof(float) * (size_t)n * rq) : NULL;
    float *kv_b_in = malloc(sizeof(float) * (size_t)n * rkv);
    float *o_in = malloc(sizeof(float) * (size_t)n * odim);
    moeq_gptq_prepared prep = {0};
    moeq_code rc = MOEQ_OK;
    if (!h || !H || (rq && !q_b_in) || !kv_b_in || !o_in) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the MLA stage", c->layer);
        goto done;
    }
    if ((rc = normed_input(c, x, lw->attn_norm, n, h, H, "the input of the MLA a-projections",
                           rq ? "q_a_proj/kv_a_proj" : "q_proj/kv_a_proj", &prep, err)))
        goto done;
    double t0 = moeq_now_seconds();
    if ((rc = rq ? quantize_weight(c, &prep, MOEQ_T_Q_A_PROJ, -1, lw->q_a, rq, hidden, n, 0, err)
                 : quantize_weight(c, &prep, MOEQ_T_Q_PROJ, -1, lw->q, q_rows, hidden, n, 0,
                                   err)) ||
        (rc = quantize_weight(c, &prep, MOEQ_T_KV_A_PROJ, -1, lw->kv_a, kv_a_rows, hidden, n, 0,
                              err)))
        goto done;
    res->seconds_solve += moeq_now_seconds() - t0;

    t0 = moeq_now_seconds();
    moeq_layer_trace latents = {.q_b_in = q_b_in, .kv_b_in = kv_b_in};
    if ((rc = moeq_attention_block(cfg, lw, rope, x, S, T, x1, &latents, err)))
        goto done;
    res->seconds_capture += moeq_now_seconds() - t0;
    if ((rq && (rc = quantize_on_inputs(c, q_b_in, n, rq, MOEQ_T_Q_B_PROJ, lw->q_b, q_rows, H,
                                        err))) ||
        (rc = quantize_on_inputs(c, kv_b_in, n, rkv, MOEQ_T_KV_B_PROJ, lw->kv_b, kv_b_rows, H,
                                 err)))
        goto done;
    rc = quantize_o_proj(c, lw, rope, x, S, T, odim, o_in, h, H, x1, err);
done:
    moeq_gptq_prepared_free(&prep);
    free(h);
    free(H);
    free(q_b_in);
    free(kv_b_in);
    free(o_in);
    return rc;
}

/* Experts of a MoE layer by the chosen calibration mode, plus the shared
 * expert on all tokens. h [n, H] is the normed MLP input; prep_all the
 * factorisation of its all-token Hessian. */
static moeq_code quantize_experts(layer_ctx *c, moeq_layer_weights *lw, const float *h, int n,
                                  const moeq_gptq_prepared *prep_all, moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int hidden = cfg->hidden_size, E = cfg->num_experts, k = cfg->num_experts_per_tok;
    const moeq_expert_calib mode = c->opt->expert_calib;
    moeq_layer_result *res = c->res;
    float *probs = mode == MOEQ_EXPERT_CALIB_WEIGHTED ? malloc(sizeof(float) * (size_t)n * E)
                                                      : NULL;
    float *topw = malloc(sizeof(float) * (size_t)n * k);
    int32_t *tope = malloc(sizeof(int32_t) * (size_t)n * k);
    float *xe = mode == MOEQ_EXPERT_CALIB_ROUTED ? malloc(sizeof(float) * (size_t)n * hidden) : NULL;
    float *pe = mode == MOEQ_EXPERT_CALIB_WEIGHTED ? malloc(sizeof(float) * (size_t)n) : NULL;
    res->expert_tokens = calloc((size_t)E, sizeof(int64_t));
    moeq_code rc = MOEQ_OK;
    if ((mode == MOEQ_EXPERT_CALIB_WEIGHTED && !probs) || !topw || !tope || !res->expert_tokens ||
        (mode == MOEQ_EXPERT_CALIB_ROUTED && !xe) || (mode == MOEQ_EXPERT_CALIB_WEIGHTED && !pe)) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for routing", c->layer);
        goto done;
    }
    double t0 = moeq_now_seconds();
    /* Llama-4 scales each expert's input by its routing weight. */
    const int scale_input = cfg->router == MOEQ_ROUTER_TOPK_SIGMOID_INPUT;
    if ((rc = moeq_route(cfg, lw, h, n, topw, tope, probs, err)))
        goto done;
    for (size_t i = 0; i < (size_t)n * k; i++)
        res->expert_tokens[tope[i]]++;
    res->seconds_capture += moeq_now_seconds() - t0;

    for (int e = 0; e < E; e++) {
        const float *x = h, *w = NULL;
        int rows = n, fallback = 0;
        float alpha = 2.0f / (float)n;
        const moeq_gptq_prepared *shared_prep = prep_all;
        if (mode == MOEQ_EXPERT_CALIB_ROUTED) {
            int m = 0;
            /* Llama-4's experts see their input scaled by the routing
             * weight: routed calibration uses what they see. */
            for (int t = 0; t < n; t++)
                for (int j = 0; j < k; j++)
                    if (tope[(size_t)t * k + j] == e) {
                        float s = scale_input ? topw[(size_t)t * k + j] : 1.0f;
                        for (int i = 0; i < hidden; i++)
                            xe[(size_t)m * hidden + i] = h[(size_t)t * hidden + i] * s;
                        m++;
                    }
            if (m < c->opt->min_expert_tokens) {
                fallback = 1;
                moeq_warn_expert_fallback(c->opt, e, c->layer, m);
            } else {
                x = xe;
                rows = m;
                alpha = 2.0f / (float)m;
                shared_prep = NULL;
            }
        } else if (mode == MOEQ_EXPERT_CALIB_WEIGHTED) {
            for (int t = 0; t < n; t++)
                pe[t] = probs[(size_t)t * E + e];
            w = pe;
            shared_prep = NULL;
        }
        rc = quantize_swiglu(c, &lw->experts[e], MOEQ_EXPERT_ROLES, e, x, rows, w, alpha,
                             c->opt->method == MOEQ_METHOD_GPTQ ? shared_prep : NULL,
                             mode == MOEQ_EXPERT_CALIB_ROUTED && !fallback ? rows : n, fallback,
                             res, err);
        if (rc)
            goto done;
    }
    if (lw->has_shared)
        rc = quantize_swiglu(c, &lw->shared, MOEQ_SHARED_ROLES, -1, h, n, NULL, 2.0f / (float)n,
                             prep_all, n, 0, res, err);
done:
    free(probs);
    free(topw);
    free(tope);
    free(xe);
    free(pe);
    return rc;
}

/* The MLP half: dense SwiGLU or experts, on the normed output x1 of the
 * attention block. */
static moeq_code quantize_mlp(layer_ctx *c, moeq_layer_weights *lw, const float *x1, int n,
                              moeq_error *err)
{
    const moeq_config *cfg = c->cfg;
    const int hidden = cfg->hidden_size;
    moeq_layer_result *res = c->res;
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *H = malloc(sizeof(float) * (size_t)hidden * hidden);
    moeq_gptq_prepared prep = {0};
    moeq_code rc = MOEQ_OK;
    if (!h || !H) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the MLP stage", c->layer);
        goto done;
    }
    /* The all-token gate/up Hessian: dense MLP, shared expert, bypass mode
     * and the routed fallback all use it. */
    if ((rc = normed_input(c, x1, lw->mlp_norm, n, h, H, "the input of the MLP",
                           lw->is_moe ? "gate/up_proj (all tokens)" : "gate/up_proj", &prep,
                           err)))
        goto done;
    if (lw->is_moe)
        rc = quantize_experts(c, lw, h, n, &prep, err);
    else
        rc = quantize_swiglu(c, &lw->dense, MOEQ_DENSE_ROLES, -1, h, n, NULL, 2.0f / (float)n,
                             c->opt->method == MOEQ_METHOD_GPTQ ? &prep : NULL, n, 0, res, err);
done:
    moeq_gptq_prepared_free(&prep);
    free(h);
    free(H);
    return rc;
}

/* The MTP block after the last layer: its true inputs are the quantized
 * model's final normed hidden state at t and the embedding of token t + 1
 * (mtp.h), over windows one token shorter. fc against the Hessian of that
 * concatenation (kept as it is where the architecture says mtp_keep_fc),
 * then its decoder layer like any full-attention layer of the model (GQA or
 * MLA). x is the last layer's output [S * T, H]. */
static moeq_code quantize_mtp_block(const moeq_model *model, const moeq_calib_set *calib,
                                    const moeq_quantize_options *opt,
                                    const moeq_rope_cache *rope, const float *x,
                                    const moeq_layer_sink *sink, moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    const int S = calib->nsamples, T = calib->seqlen, T1 = T - 1, n = S * T1;
    const int H = cfg->hidden_size;
    moeq_mtp mtp = {0};
    moeq_mtp_weights w = {0};
    moeq_head_weights head = {0};
    moeq_layer_result res = {.layer = cfg->num_layers};
    layer_ctx c = {NULL, opt, cfg->num_layers, &res, 0, NULL};
    float *hidden = NULL, *fc_in = NULL, *x0 = NULL, *x1 = NULL, *Hm = NULL;
    moeq_gptq_prepared prep = {0};
    double t_block = moeq_now_seconds(), t0 = t_block;
    moeq_code rc;
    if (T1 < 1)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--quantize-mtp needs windows of at least 2 tokens (--seqlen)");
    if ((rc = moeq_mtp_open(model, &mtp, err)) || (rc = moeq_mtp_weights_load(&mtp, &w, err)) ||
        (rc = moeq_head_weights_load(model, &head, err)))
        goto done;
    res.names = &mtp.view.arch;
    c.cfg = &mtp.view.cfg;
    res.seconds_load = moeq_now_seconds() - t0;
    const int quantize_fc = !model->arch.mtp_keep_fc;
    if (opt->progress)
        fprintf(opt->progress, "MTP block: loaded in %.2f s, quantizing %sattention and %s\n",
                res.seconds_load, quantize_fc ? "fc, " : "", w.layer.is_moe ? "experts" : "MLP");
    hidden = malloc(sizeof(float) * (size_t)S * T * H);
    fc_in = malloc(sizeof(float) * (size_t)n * 2 * H);
    x0 = malloc(sizeof(float) * (size_t)n * H);
    x1 = malloc(sizeof(float) * (size_t)n * H);
    Hm = malloc(sizeof(float) * (size_t)4 * H * H);
    if (!hidden || !fc_in || !x0 || !x1 || !Hm) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the MTP block's inputs");
        goto done;
    }
    t0 = moeq_now_seconds();
    cpu_rmsnorm(x, head.final_norm, S * T, H, cfg->rms_norm_eps, hidden);
    if ((rc = moeq_mtp_input(&mtp, &w, calib->tokens, hidden, S, T, fc_in, err)) ||
        (rc = moeq_check_finite(c.layer, fc_in, (size_t)n * 2 * H, "the input of the MTP fc", err)))
        goto done;
    res.seconds_capture += moeq_now_seconds() - t0;
    if (quantize_fc && opt->method == MOEQ_METHOD_GPTQ) {
        t0 = moeq_now_seconds();
        if ((rc = hessian(Hm, fc_in, n, 2 * H, NULL, 2.0f / (float)n, err)))
            goto done;
        res.seconds_hessian += moeq_now_seconds() - t0;
        if ((rc = prepare(&c, Hm, 2 * H, "MTP fc", &prep, err)))
            goto done;
    }
    t0 = moeq_now_seconds();
    if (quantize_fc &&
        (rc = quantize_weight(&c, &prep, MOEQ_T_MTP_FC, -1, w.fc, H, 2 * H, n, 0, err)))
        goto done;
    res.seconds_solve += moeq_now_seconds() - t0;
    cpu_linear(fc_in, n, 2 * H, w.fc, NULL, H, x0);
    rc = c.cfg->attention == MOEQ_ATTENTION_MLA
             ? quantize_mla(&c, &w.layer, rope, x0, S, T1, x1, err)
             : quantize_attention(&c, &w.layer, rope, x0, S, T1, x1, err);
    if (rc || (rc = quantize_mlp(&c, &w.layer, x1, n, err)))
        goto done;
    res.seconds_wall = moeq_now_seconds() - t_block;
    if (sink)
        rc = sink->write_layer(sink->ctx, &res, err);
done:
    moeq_gptq_prepared_free(&prep);
    free(c.targets);
    moeq_layer_result_free(&res);
    free(hidden);
    free(fc_in);
    free(x0);
    free(x1);
    free(Hm);
    moeq_head_weights_free(&head);
    moeq_mtp_weights_free(&w);
    moeq_mtp_close(&mtp);
    return rc;
}

void moeq_layer_result_free(moeq_layer_result *r)
{
    for (int i = 0; i < r->n_linears; i++)
        moeq_quantized_free(&r->linears[i].q);
    free(r->linears);
    for (int i = 0; i < r->n_replaced; i++)
        free(r->replaced[i].data);
    free(r->replaced);
    free(r->expert_tokens);
    memset(r, 0, sizeof *r);
}

moeq_code moeq_quantize_layers(const moeq_model *model, const moeq_calib_set *calib,
                               const moeq_quantize_options *opt, const moeq_layer_sink *sink,
                               moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    const int S = calib->nsamples, T = calib->seqlen, n = S * T;
    const size_t nh = (size_t)n * cfg->hidden_size;
    const char *awq_missing = opt->method == MOEQ_METHOD_AWQ ? moeq_awq_missing(model, opt) : NULL;
    if (awq_missing)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "--method awq is not implemented for %s: use --method gptq", awq_missing);
    if (opt->token_chunk < 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "token chunk %d: must be 0 (the default) or more",
                         opt->token_chunk);
    float *x = malloc(sizeof(float) * nh), *x1 = malloc(sizeof(float) * nh);
    float *y = malloc(sizeof(float) * nh);
    moeq_rope_cache rope = {0};
    moeq_code rc = MOEQ_OK;
    if (!x || !x1 || !y) {
        rc = moeq_fail(err, MOEQ_ERR_OOM,
                       "out of memory for the activations of %d calibration tokens", n);
        goto done;
    }
    if (opt->start_layer > 0)
        memcpy(x, opt->start_hidden, sizeof(float) * nh);
    else if ((rc = moeq_model_embed(model, calib->tokens, (size_t)n, x, err)))
        goto done;
    if ((rc = moeq_rope_cache_init(cfg, &rope, err)))
        goto done;
    for (int l = opt->start_layer; l < cfg->num_layers; l++) {
        moeq_layer_result res = {.layer = l, .routing_changes = -1};
        layer_ctx c = {cfg, opt, l, &res, 0, NULL};
        moeq_layer_weights lw;
        double t0 = moeq_now_seconds(), t_layer = t0;
        if ((rc = moeq_layer_weights_load(model, l, &lw, err)))
            goto done;
        res.seconds_load = moeq_now_seconds() - t0;
        if (opt->progress)
            fprintf(opt->progress, "layer %d/%d: loaded in %.2f s, quantizing %s\n", l + 1,
                    cfg->num_layers, moeq_now_seconds() - t0,
                    lw.is_linear ? (lw.is_moe ? "linear attention and experts"
                                              : "linear attention and MLP")
                                 : lw.is_moe ? "attention and experts" : "attention and MLP");
        const int awq = opt->method == MOEQ_METHOD_AWQ;
        if (lw.is_linear)
            rc = quantize_linear_attention(&c, &lw, x, S, T, x1, err);
        else if (cfg->attention == MOEQ_ATTENTION_MLA)
            rc = quantize_mla(&c, &lw, &rope, x, S, T, x1, err);
        else if (awq)
            rc = moeq_awq_attention(model, opt, &lw, &rope, x, S, T, x1, &res, err);
        else
            rc = quantize_attention(&c, &lw, &rope, x, S, T, x1, err);
        char point[32];
        snprintf(point, sizeof point, "layer-%d-mid", l);
        moeq_failpoint(point, NULL); /* a test hook: killed mid-layer */
        if (!rc)
            rc = awq ? moeq_awq_mlp(model, opt, &lw, x1, n, &res, err)
                     : quantize_mlp(&c, &lw, x1, n, err);
        /* The output for the next layer: every weight quantized, real
         * routing. True-sequential already has x1 from the quantized
         * attention; otherwise the whole layer runs again. */
        if (!rc) {
            t0 = moeq_now_seconds();
            if (opt->true_sequential) {
                rc = moeq_mlp_block(cfg, &lw, x1, n, y, NULL, err);
            } else {
                for (int i = 0; i < res.n_linears; i++)
                    moeq_quantized_dequantize(&res.linears[i].q, c.targets[i]);
                rc = moeq_layer_forward(cfg, &lw, &rope, x, S, T, y, NULL, err);
            }
            res.seconds_forward += moeq_now_seconds() - t0;
        }
        free(c.targets);
        moeq_layer_weights_free(&lw);
        if (!rc)
            rc = moeq_check_finite(c.layer, y, nh, "the layer output", err);
        res.seconds_wall = moeq_now_seconds() - t_layer;
        if (!rc && sink)
            rc = sink->write_layer(sink->ctx, &res, err);
        if (!rc && sink && sink->layer_done && moeq_saves_state_after(opt, l, cfg->num_layers))
            rc = sink->layer_done(sink->ctx, l, y, nh, err);
        moeq_layer_result_free(&res);
        if (rc)
            goto done;
        float *t = x;
        x = y;
        y = t;
    }
    if (opt->quantize_mtp)
        rc = quantize_mtp_block(model, calib, opt, &rope, x, sink, err);
done:
    moeq_rope_cache_free(&rope);
    free(x);
    free(x1);
    free(y);
    return rc;
}
