/* forward.c: the fp32 CPU reference forward of a decoder layer: pre-norm
 * GQA attention with RoPE (optional q/k biases, q/k RMSNorm per head or over
 * the whole projection; gpt-oss's sinks and per-layer sliding window;
 * Llama-4's interleaved RoPE, layers without RoPE, q/k L2 norm, temperature
 * tuning and chunked attention) or multi-head latent attention (mla.c),
 * then a SwiGLU MLP (or gpt-oss's clamped one) or a routed MoE block
 * (softmax top-k with optional renormalisation, router bias and groups;
 * DeepSeek-V3's sigmoid scores with a bias-corrected, group-limited choice;
 * Llama-4's sigmoid top-k on the expert input; optional scaling; optional
 * sigmoid-gated or plain shared expert). It follows the transformers modeling code of the
 * supported families operation by operation, in fp32. The full attention of
 * Qwen3-Next / Qwen3.5 gates its output per head (attn * sigmoid(gate), the
 * gate from q_proj); their linear layers run the Gated DeltaNet block of
 * deltanet.c instead. */
#include "model/forward.h"

#include "backend/cpu/cpu_ops.h"
#include "model/deltanet.h"
#include "model/mla.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

moeq_code moeq_rope_cache_init(const moeq_config *cfg, moeq_rope_cache *rc, moeq_error *err)
{
    memset(rc, 0, sizeof *rc);
    rc->rotary_dim = cfg->rope.rotary_dim;
    rc->inv_freq = malloc(sizeof(float) * (size_t)(rc->rotary_dim / 2 + 1));
    if (!rc->inv_freq)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for RoPE frequencies");
    moeq_code code = moeq_rope_compute(&cfg->rope, 0, rc->inv_freq, &rc->attention_factor, err);
    if (code)
        moeq_rope_cache_free(rc);
    return code;
}

void moeq_rope_cache_free(moeq_rope_cache *rc)
{
    free(rc->inv_freq);
    rc->inv_freq = NULL;
}

cpu_router_params moeq_router_params(const moeq_config *cfg)
{
    cpu_router_params p = {.scoring = CPU_ROUTER_SOFTMAX,
                           .top_k = cfg->num_experts_per_tok,
                           .norm_topk_prob = cfg->norm_topk_prob,
                           .n_group = cfg->n_group,
                           .topk_group = cfg->topk_group,
                           .routed_scaling_factor = cfg->routed_scaling_factor};
    /* DeepSeek-V3 (noaux_tc), GLM-4.5, MiniMax-M2: sigmoid scores; the
     * layer's e_score_correction_bias joins in moeq_route. */
    if (cfg->router == MOEQ_ROUTER_SIGMOID_TOPK)
        p.scoring = CPU_ROUTER_SIGMOID;
    /* Llama-4 (Llama4Router): top-k of the logits, each weighted by
     * sigmoid(logit): sigmoid scoring without bias, groups or renorm. */
    if (cfg->router == MOEQ_ROUTER_TOPK_SIGMOID_INPUT) {
        p.scoring = CPU_ROUTER_SIGMOID;
        p.norm_topk_prob = 0;
    }
    return p;
}

void moeq_mlp_gate(const moeq_config *cfg, float *g, const float *u, size_t n)
{
    if (cfg->swiglu_limit > 0)
        cpu_swiglu_clamped(g, u, n, cfg->swiglu_alpha, cfg->swiglu_limit, g);
    else
        cpu_silu_mul(g, u, n, g);
}

/* One SwiGLU MLP over rows tokens: out = down(act(gate(x), up(x))).
 * scratch holds 2 * rows * I floats. */
static void mlp_forward(const moeq_config *cfg, const moeq_mlp_weights *w, const float *x,
                        int rows, float *scratch, float *out)
{
    int inter = w->intermediate, hidden = cfg->hidden_size;
    float *g = scratch, *u = scratch + (size_t)rows * inter;
    cpu_linear(x, rows, hidden, w->gate, w->gate_bias, inter, g);
    cpu_linear(x, rows, hidden, w->up, w->up_bias, inter, u);
    moeq_mlp_gate(cfg, g, u, (size_t)rows * inter);
    cpu_linear(g, rows, inter, w->down, w->down_bias, hidden, out);
}

moeq_code moeq_route(const moeq_config *cfg, const moeq_layer_weights *lw, const float *x, int n,
                     float *weights, int32_t *experts, float *scores, moeq_error *err)
{
    const int E = cfg->num_experts;
    float *logits = malloc(sizeof(float) * (size_t)n * E);
    if (!logits)
        return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the router logits",
                         lw->layer);
    cpu_linear(x, n, cfg->hidden_size, lw->router, lw->router_bias, E, logits);
    cpu_router_params p = moeq_router_params(cfg);
    p.e_score_correction_bias = lw->router_correction_bias;
    moeq_code rc = cpu_router_topk(logits, n, E, &p, weights, experts, err);
    if (!rc && scores) {
        if (p.scoring == CPU_ROUTER_SIGMOID)
            cpu_sigmoid(logits, (size_t)n * E, scores);
        else
            cpu_softmax_rows(logits, n, E, scores);
    }
    free(logits);
    if (rc)
        return moeq_wrap(err, "layer %d: ", lw->layer);
    return MOEQ_OK;
}

/* Routed experts plus the shared expert; out[N, H] is overwritten. */
static moeq_code moe_forward(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const float *x, int n, float *out, moeq_layer_trace *trace,
                             moeq_error *err)
{
    int hidden = cfg->hidden_size, n_exp = cfg->num_experts, k = cfg->num_experts_per_tok;
    int inter = cfg->moe_intermediate_size > cfg->shared_expert_intermediate_size
                    ? cfg->moe_intermediate_size
                    : cfg->shared_expert_intermediate_size;
    float *weights = malloc(sizeof(float) * (size_t)n * k);
    int32_t *experts = malloc(sizeof(int32_t) * (size_t)n * k);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)n);
    float *rows_w = malloc(sizeof(float) * (size_t)n);
    float *xs = malloc(sizeof(float) * (size_t)n * hidden);
    float *ys = malloc(sizeof(float) * (size_t)n * hidden);
    float *scratch = malloc(sizeof(float) * 2 * (size_t)n * inter);
    moeq_code rc = MOEQ_OK;
    if (!weights || !experts || !rows || !rows_w || !xs || !ys || !scratch) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory in the MoE block", lw->layer);
        goto done;
    }
    if ((rc = moeq_route(cfg, lw, x, n, weights, experts, NULL, err)))
        goto done;
    /* Llama-4 scales the expert's input by the routing weight instead of
     * its output (transformers Llama4TextMoe: routed_in * router_scores). */
    const int scale_input = cfg->router == MOEQ_ROUTER_TOPK_SIGMOID_INPUT;
    memset(out, 0, sizeof(float) * (size_t)n * hidden);
    /* Gather each expert's tokens, run it once over them, scatter back. */
    for (int e = 0; e < n_exp; e++) {
        int m = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                if (experts[(size_t)t * k + j] == e) {
                    rows[m] = t;
                    rows_w[m] = weights[(size_t)t * k + j];
                    m++;
                }
        if (m == 0)
            continue;
        for (int i = 0; i < m; i++)
            for (int h = 0; h < hidden; h++)
                xs[(size_t)i * hidden + h] =
                    x[(size_t)rows[i] * hidden + h] * (scale_input ? rows_w[i] : 1.0f);
        mlp_forward(cfg, &lw->experts[e], xs, m, scratch, ys);
        for (int i = 0; i < m; i++) {
            float *dst = out + (size_t)rows[i] * hidden;
            const float *src = ys + (size_t)i * hidden;
            float w = scale_input ? 1.0f : rows_w[i];
            for (int h = 0; h < hidden; h++)
                dst[h] += w * src[h];
        }
    }
    if (lw->has_shared) {
        mlp_forward(cfg, &lw->shared, x, n, scratch, ys);
        for (int t = 0; t < n; t++) {
            float gate = 1.0f;
            if (lw->shared_gate) {
                float s;
                cpu_linear(x + (size_t)t * hidden, 1, hidden, lw->shared_gate, NULL, 1, &s);
                gate = 1.0f / (1.0f + expf(-s));
            }
            for (int h = 0; h < hidden; h++)
                out[(size_t)t * hidden + h] += gate * ys[(size_t)t * hidden + h];
        }
    }
    if (trace && trace->topk_experts)
        memcpy(trace->topk_experts, experts, sizeof(int32_t) * (size_t)n * k);
    if (trace && trace->topk_weights)
        memcpy(trace->topk_weights, weights, sizeof(float) * (size_t)n * k);
done:
    free(weights);
    free(experts);
    free(rows);
    free(rows_w);
    free(xs);
    free(ys);
    free(scratch);
    return rc;
}

float moeq_attn_temperature(const moeq_config *cfg, int pos)
{
    return log1pf(floorf(((float)pos + 1.0f) / cfg->floor_scale)) * cfg->attn_scale + 1.0f;
}

/* Llama-4 after RoPE (transformers Llama4TextAttention.forward): on RoPE
 * layers q and k are RMS-normalised per head without a weight
 * (Llama4TextL2Norm, eps rms_norm_eps); on the others q is scaled by
 * moeq_attn_temperature of its position, in fp32. */
static moeq_code llama4_qk(const moeq_config *cfg, int use_rope, float *q, float *k, int n_seqs,
                           int seq_len, moeq_error *err)
{
    const int hq = cfg->num_heads, hkv = cfg->num_kv_heads, d = cfg->head_dim;
    const int n = n_seqs * seq_len;
    if (use_rope && cfg->qk_l2_norm) {
        float *ones = malloc(sizeof(float) * (size_t)d);
        if (!ones)
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the q/k norm");
        for (int i = 0; i < d; i++)
            ones[i] = 1.0f;
        cpu_rmsnorm(q, ones, n * hq, d, cfg->rms_norm_eps, q);
        cpu_rmsnorm(k, ones, n * hkv, d, cfg->rms_norm_eps, k);
        free(ones);
    }
    if (!use_rope && cfg->attn_temperature_tuning)
        for (int t = 0; t < n; t++) {
            float s = moeq_attn_temperature(cfg, t % seq_len);
            float *row = q + (size_t)t * hq * d;
            for (int i = 0; i < hq * d; i++)
                row[i] *= s;
        }
    return MOEQ_OK;
}

/* attn[N, Hq*D] = grouped-query attention of the normed input h[N, H],
 * gated per head when attn_output_gate. */
static moeq_code gqa_attention(const moeq_config *cfg, const moeq_layer_weights *lw,
                               const moeq_rope_cache *rope, const float *h, int n_seqs,
                               int seq_len, float *attn, moeq_error *err)
{
    const int hidden = cfg->hidden_size, hq = cfg->num_heads, hkv = cfg->num_kv_heads,
              d = cfg->head_dim;
    const int n = n_seqs * seq_len;
    const size_t qdim = (size_t)hq * d, kvdim = (size_t)hkv * d;
    /* With the output gate, q_proj yields [query | gate] per head. */
    const size_t qrows = cfg->attn_output_gate ? 2 * qdim : qdim;
    float *q = malloc(sizeof(float) * (size_t)n * qrows);
    float *gate = cfg->attn_output_gate ? malloc(sizeof(float) * (size_t)n * qdim) : NULL;
    float *kk = malloc(sizeof(float) * (size_t)n * kvdim);
    float *v = malloc(sizeof(float) * (size_t)n * kvdim);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)(seq_len > 0 ? seq_len : 1));
    moeq_code rc = MOEQ_OK;
    if (!q || !kk || !v || !pos || (cfg->attn_output_gate && !gate)) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the attention of %d tokens",
                       lw->layer, n);
        goto done;
    }
    for (int t = 0; t < seq_len; t++)
        pos[t] = t;
    cpu_linear(h, n, hidden, lw->q, lw->q_bias, (int)qrows, q);
    if (gate) /* Qwen3NextAttention: chunk(view(..., heads, 2 D), 2) per head */
        for (size_t i = 0; i < (size_t)n * hq; i++) {
            memcpy(gate + i * d, q + i * 2 * d + d, sizeof(float) * (size_t)d);
            memmove(q + i * d, q + i * 2 * d, sizeof(float) * (size_t)d);
        }
    cpu_linear(h, n, hidden, lw->k, lw->k_bias, (int)kvdim, kk);
    cpu_linear(h, n, hidden, lw->v, lw->v_bias, (int)kvdim, v);
    if (lw->q_norm && cfg->qk_norm_full) {
        /* MiniMaxM2Attention: one RMSNorm over all heads of q, one over k. */
        cpu_rmsnorm(q, lw->q_norm, n, (int)qdim, cfg->rms_norm_eps, q);
        cpu_rmsnorm(kk, lw->k_norm, n, (int)kvdim, cfg->rms_norm_eps, kk);
    } else if (lw->q_norm) {
        cpu_rmsnorm(q, lw->q_norm, n * hq, d, cfg->rms_norm_eps, q);
        cpu_rmsnorm(kk, lw->k_norm, n * hkv, d, cfg->rms_norm_eps, kk);
    }
    const float scale = 1.0f / sqrtf((float)d);
    const int use_rope = moeq_config_layer_rope(cfg, lw->layer);
    for (int s = 0; use_rope && s < n_seqs; s++) {
        size_t t0 = (size_t)s * seq_len;
        cpu_rope_apply(q + t0 * qdim, seq_len, hq, d, rope->rotary_dim, pos, rope->inv_freq,
                       rope->attention_factor, cfg->rope_interleaved);
        cpu_rope_apply(kk + t0 * kvdim, seq_len, hkv, d, rope->rotary_dim, pos, rope->inv_freq,
                       rope->attention_factor, cfg->rope_interleaved);
    }
    if ((rc = llama4_qk(cfg, use_rope, q, kk, n_seqs, seq_len, err)))
        goto done;
    /* Chunked attention (Llama-4) is causal attention within each chunk. */
    const int chunk = cfg->layer_chunked && cfg->layer_chunked[lw->layer]
                          ? cfg->attention_chunk_size
                          : seq_len;
    for (int s = 0; s < n_seqs; s++)
        for (int c0 = 0; c0 < seq_len; c0 += chunk) {
            size_t t0 = (size_t)s * seq_len + (size_t)c0;
            int len = seq_len - c0 < chunk ? seq_len - c0 : chunk;
            if ((rc = cpu_attention_causal(q + t0 * qdim, kk + t0 * kvdim, v + t0 * kvdim, len,
                                           hq, hkv, d, d, scale,
                                           moeq_config_layer_window(cfg, lw->layer), lw->sinks,
                                           attn + t0 * qdim, err)))
                goto done;
        }
    if (gate)
        for (size_t i = 0; i < (size_t)n * qdim; i++)
            attn[i] *= 1.0f / (1.0f + expf(-gate[i]));
done:
    free(q);
    free(gate);
    free(kk);
    free(v);
    free(pos);
    return rc;
}


int moeq_o_proj_in_dim(const moeq_config *cfg)
{
    return cfg->num_heads *
           (cfg->attention == MOEQ_ATTENTION_MLA ? cfg->v_head_dim : cfg->head_dim);
}

moeq_code moeq_attention_block(const moeq_config *cfg, const moeq_layer_weights *lw,
                               const moeq_rope_cache *rope, const float *x, int n_seqs,
                               int seq_len, float *out, moeq_layer_trace *trace,
                               moeq_error *err)
{
    const int hidden = cfg->hidden_size, n = n_seqs * seq_len;
    const size_t odim = (size_t)moeq_o_proj_in_dim(cfg);
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *attn = malloc(sizeof(float) * (size_t)n * odim);
    moeq_code rc = MOEQ_OK;
    if (!h || !attn) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the attention of %d tokens",
                       lw->layer, n);
        goto done;
    }
    cpu_rmsnorm(x, lw->attn_norm, n, hidden, cfg->rms_norm_eps, h);
    if (trace && trace->attn_in)
        memcpy(trace->attn_in, h, sizeof(float) * (size_t)n * hidden);
    rc = cfg->attention == MOEQ_ATTENTION_MLA
             ? moeq_mla_attention(cfg, lw, rope, h, n_seqs, seq_len, attn, trace, err)
             : gqa_attention(cfg, lw, rope, h, n_seqs, seq_len, attn, err);
    if (rc)
        goto done;
    if (trace && trace->o_in)
        memcpy(trace->o_in, attn, sizeof(float) * (size_t)n * odim);
    /* h is free again: it takes the block output before the residual. */
    cpu_linear(attn, n, (int)odim, lw->o, lw->o_bias, hidden, h);
    if (trace && trace->attn_out)
        memcpy(trace->attn_out, h, sizeof(float) * (size_t)n * hidden);
    for (size_t i = 0; i < (size_t)n * hidden; i++)
        out[i] = x[i] + h[i];
done:
    free(h);
    free(attn);
    return rc;
}

moeq_code moeq_mlp_block(const moeq_config *cfg, const moeq_layer_weights *lw, const float *x,
                         int n, float *out, moeq_layer_trace *trace, moeq_error *err)
{
    const int hidden = cfg->hidden_size;
    float *h = malloc(sizeof(float) * (size_t)n * hidden);
    float *block = malloc(sizeof(float) * (size_t)n * hidden);
    float *scratch = lw->is_moe ? NULL
                                : malloc(sizeof(float) * 2 * (size_t)n * lw->dense.intermediate);
    moeq_code rc = MOEQ_OK;
    if (!h || !block || (!lw->is_moe && !scratch)) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the MLP of %d tokens",
                       lw->layer, n);
        goto done;
    }
    cpu_rmsnorm(x, lw->mlp_norm, n, hidden, cfg->rms_norm_eps, h);
    if (trace && trace->mlp_in)
        memcpy(trace->mlp_in, h, sizeof(float) * (size_t)n * hidden);
    if (lw->is_moe) {
        if ((rc = moe_forward(cfg, lw, h, n, block, trace, err)))
            goto done;
    } else {
        mlp_forward(cfg, &lw->dense, h, n, scratch, block);
    }
    if (trace && trace->mlp_out)
        memcpy(trace->mlp_out, block, sizeof(float) * (size_t)n * hidden);
    for (size_t i = 0; i < (size_t)n * hidden; i++)
        out[i] = x[i] + block[i];
done:
    free(h);
    free(block);
    free(scratch);
    return rc;
}

moeq_code moeq_layer_forward(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const moeq_rope_cache *rope, const float *x, int n_seqs,
                             int seq_len, float *out, moeq_layer_trace *trace,
                             moeq_error *err)
{
    size_t n = (size_t)n_seqs * seq_len;
    float *mid = malloc(sizeof(float) * n * (size_t)cfg->hidden_size);
    if (!mid)
        return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for %zu tokens", lw->layer,
                         n);
    moeq_code rc =
        lw->is_linear
            ? moeq_linear_attention_block(cfg, lw, x, n_seqs, seq_len, mid, trace, err)
            : moeq_attention_block(cfg, lw, rope, x, n_seqs, seq_len, mid, trace, err);
    if (!rc)
        rc = moeq_mlp_block(cfg, lw, mid, (int)n, out, trace, err);
    free(mid);
    return rc;
}

moeq_code moeq_head_forward(const moeq_config *cfg, const moeq_head_weights *hw,
                            const float *x, size_t n, float *logits, moeq_error *err)
{
    float *h = malloc(sizeof(float) * n * (size_t)cfg->hidden_size);
    if (!h)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the output head of %zu tokens", n);
    cpu_rmsnorm(x, hw->final_norm, (int)n, cfg->hidden_size, cfg->rms_norm_eps, h);
    cpu_linear(h, (int)n, cfg->hidden_size, hw->lm_head, NULL, cfg->vocab_size, logits);
    free(h);
    return MOEQ_OK;
}
