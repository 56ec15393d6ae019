/* mla.c: the fp32 CPU reference of multi-head latent attention, step by
 * step as transformers' DeepseekV3Attention.forward (and DeepseekV2's) runs
 * it in eager mode:
 *   q      = q_proj(h)                     or q_b(rmsnorm(q_a(h)))
 *   ckv    = kv_a_proj_with_mqa(h)         = [latent (kv_lora_rank) | k_rot (rope dim)]
 *   kv     = kv_b_proj(rmsnorm(latent))    per head [k_nope | v]
 *   q_rot, k_rot turned by RoPE; k = [k_nope | k_rot] with k_rot shared by all heads
 *   out    = softmax(scale * q k^T + causal) v
 * The two latent norms are DeepseekV3RMSNorm(rank) with its default eps of
 * 1e-6, not rms_norm_eps. With rope_interleave (DeepSeek-V3's default, and
 * DeepSeek-V2's complex rotation) adjacent pairs turn; transformers then lays
 * q_rot and k_rot out de-interleaved, which permutes both the same way and
 * leaves q k^T unchanged. */
#include "model/mla.h"

#include "backend/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double moeq_mla_softmax_scale(const moeq_config *cfg)
{
    double scale = pow((double)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim), -0.5);
    const moeq_rope_params *r = &cfg->rope;
    if (r->type != MOEQ_ROPE_DEFAULT && r->mscale_all_dim != 0.0) {
        double m = moeq_rope_yarn_mscale(r->factor, r->mscale_all_dim);
        scale = scale * m * m;
    }
    return scale;
}

moeq_code moeq_mla_attention(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const moeq_rope_cache *rope, const float *h, int n_seqs,
                             int seq_len, float *attn, moeq_layer_trace *trace, moeq_error *err)
{
    const int hidden = cfg->hidden_size, heads = cfg->num_heads;
    const int nope = cfg->qk_nope_head_dim, rot = cfg->qk_rope_head_dim, vd = cfg->v_head_dim;
    const int qk = nope + rot, rq = cfg->q_lora_rank, rkv = cfg->kv_lora_rank;
    const int n = n_seqs * seq_len;
    const size_t qrow = (size_t)heads * qk, kvrow = (size_t)heads * (nope + vd);
    const size_t vrow = (size_t)heads * vd;
    float *q = malloc(sizeof(float) * (size_t)n * qrow);
    float *qa = rq ? malloc(sizeof(float) * (size_t)n * rq) : NULL;
    float *ckv = malloc(sizeof(float) * (size_t)n * (rkv + rot));
    float *latent = malloc(sizeof(float) * (size_t)n * rkv);
    float *k_rot = malloc(sizeof(float) * (size_t)n * rot);
    float *kv = malloc(sizeof(float) * (size_t)n * kvrow);
    float *k = malloc(sizeof(float) * (size_t)n * qrow);
    float *v = malloc(sizeof(float) * (size_t)n * vrow);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)(seq_len > 0 ? seq_len : 1));
    moeq_code rc = MOEQ_OK;
    if (!q || (rq && !qa) || !ckv || !latent || !k_rot || !kv || !k || !v || !pos) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the MLA of %d tokens",
                       lw->layer, n);
        goto done;
    }
    if (rq) {
        cpu_linear(h, n, hidden, lw->q_a, lw->q_a_bias, rq, qa);
        cpu_rmsnorm(qa, lw->q_a_norm, n, rq, MOEQ_MLA_LATENT_NORM_EPS, qa);
        if (trace && trace->q_b_in)
            memcpy(trace->q_b_in, qa, sizeof(float) * (size_t)n * rq);
        cpu_linear(qa, n, rq, lw->q_b, NULL, (int)qrow, q);
    } else {
        cpu_linear(h, n, hidden, lw->q, NULL, (int)qrow, q);
    }
    cpu_linear(h, n, hidden, lw->kv_a, lw->kv_a_bias, rkv + rot, ckv);
    for (int t = 0; t < n; t++) {
        const float *row = ckv + (size_t)t * (rkv + rot);
        memcpy(latent + (size_t)t * rkv, row, sizeof(float) * (size_t)rkv);
        memcpy(k_rot + (size_t)t * rot, row + rkv, sizeof(float) * (size_t)rot);
    }
    cpu_rmsnorm(latent, lw->kv_a_norm, n, rkv, MOEQ_MLA_LATENT_NORM_EPS, latent);
    if (trace && trace->kv_b_in)
        memcpy(trace->kv_b_in, latent, sizeof(float) * (size_t)n * rkv);
    cpu_linear(latent, n, rkv, lw->kv_b, NULL, (int)kvrow, kv);
    for (int t = 0; t < seq_len; t++)
        pos[t] = t;
    const float scale = (float)moeq_mla_softmax_scale(cfg);
    for (int s = 0; s < n_seqs; s++) {
        size_t t0 = (size_t)s * seq_len;
        /* The rope part sits after the nope part of each q head: rotate
         * from that offset with the head stride. */
        cpu_rope_apply(q + t0 * qrow + nope, seq_len, heads, qk, rot, pos, rope->inv_freq,
                       rope->attention_factor, cfg->rope_interleaved);
        cpu_rope_apply(k_rot + t0 * rot, seq_len, 1, rot, rot, pos, rope->inv_freq,
                       rope->attention_factor, cfg->rope_interleaved);
    }
    for (int t = 0; t < n; t++)
        for (int hd = 0; hd < heads; hd++) {
            const float *src = kv + (size_t)t * kvrow + (size_t)hd * (nope + vd);
            float *kh = k + (size_t)t * qrow + (size_t)hd * qk;
            memcpy(kh, src, sizeof(float) * (size_t)nope);
            memcpy(kh + nope, k_rot + (size_t)t * rot, sizeof(float) * (size_t)rot);
            memcpy(v + (size_t)t * vrow + (size_t)hd * vd, src + nope, sizeof(float) * (size_t)vd);
        }
    for (int s = 0; s < n_seqs; s++) {
        size_t t0 = (size_t)s * seq_len;
        if ((rc = cpu_attention_causal(q + t0 * qrow, k + t0 * qrow, v + t0 * vrow, seq_len,
                                       heads, heads, qk, vd, scale, 0, NULL, attn + t0 * vrow,
                                       err)))
            goto done;
    }
done:
    free(q);
    free(qa);
    free(ckv);
    free(latent);
    free(k_rot);
    free(kv);
    free(k);
    free(v);
    free(pos);
    return rc;
}
