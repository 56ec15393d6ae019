/* deltanet.c: Gated DeltaNet token mixer, fp32 CPU reference (see
 * deltanet.h). Formulas from transformers' modeling_qwen3_next.py:
 * causal_conv1d_fn, l2norm, torch_recurrent_gated_delta_rule,
 * torch_chunk_gated_delta_rule, Qwen3NextRMSNormGated and
 * Qwen3NextGatedDeltaNet.forward (fix_query_key_value_ordering for the fused
 * projections); Qwen3_5GatedDeltaNet.forward for the separate ones. */
#include "model/deltanet.h"

#include "backend/cpu/cpu_ops.h"
#include "common/parallel.h"

#include <cblas.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

moeq_code moeq_delta_rule_recurrent(const moeq_delta_inputs *in, float *out, moeq_error *err)
{
    const int T = in->T, Hk = in->Hk, Hv = in->Hv, Dk = in->Dk, Dv = in->Dv, r = Hv / Hk;
    float *S = malloc(sizeof(float) * (size_t)Dk * Dv);
    float *delta = malloc(sizeof(float) * (size_t)Dv);
    if (!S || !delta) {
        free(S);
        free(delta);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the delta rule state");
    }
    for (int h = 0; h < Hv; h++) {
        memset(S, 0, sizeof(float) * (size_t)Dk * Dv);
        for (int t = 0; t < T; t++) {
            const float *q = in->q + ((size_t)t * Hk + h / r) * Dk;
            const float *k = in->k + ((size_t)t * Hk + h / r) * Dk;
            const float *v = in->v + ((size_t)t * Hv + h) * Dv;
            float decay = expf(in->g[(size_t)t * Hv + h]), beta = in->beta[(size_t)t * Hv + h];
            for (size_t i = 0; i < (size_t)Dk * Dv; i++)
                S[i] *= decay;
            /* delta = beta (v - S^T k): the part of v the state does not
             * already predict for key k. */
            for (int d = 0; d < Dv; d++) {
                float mem = 0.0f;
                for (int i = 0; i < Dk; i++)
                    mem += S[(size_t)i * Dv + d] * k[i];
                delta[d] = (v[d] - mem) * beta;
            }
            for (int i = 0; i < Dk; i++)
                for (int d = 0; d < Dv; d++)
                    S[(size_t)i * Dv + d] += k[i] * delta[d];
            float *o = out + ((size_t)t * Hv + h) * Dv;
            for (int d = 0; d < Dv; d++) {
                float acc = 0.0f;
                for (int i = 0; i < Dk; i++)
                    acc += S[(size_t)i * Dv + d] * q[i];
                o[d] = acc;
            }
        }
    }
    free(S);
    free(delta);
    return MOEQ_OK;
}

/* Scratch of one chunk of at most C tokens. */
typedef struct chunk_scratch {
    float *cum; /* [C] cumulative log decay inside the chunk */
    float *L;   /* [C, C] strictly lower: (beta_i k_i . k_j) exp(cum_i - cum_j) */
    float *A;   /* [C, C] lower with diagonal: (q_i . k_j) exp(cum_i - cum_j) */
    float *U;   /* [C, Dv] solved values ("u" of the paper), then U - W S */
    float *W;   /* [C, Dk] solved decayed keys that read the old state */
    float *Kd;  /* [C, Dk] k_j exp(cum_last - cum_j): what the chunk writes with */
} chunk_scratch;

/* One chunk of c tokens from t0 for value head h; S [Dk, Dv] is carried in
 * and out. The rows of q, k (stride Hk Dk), v and out (stride Hv Dv) are
 * read in place as strided matrices; the products are BLAS calls. */
static void delta_chunk(const moeq_delta_inputs *in, int h, int t0, int c, float *S,
                        chunk_scratch *s, float *out)
{
    const int Hk = in->Hk, Hv = in->Hv, Dk = in->Dk, Dv = in->Dv, kh = h / (Hv / Hk);
    const int ldk = Hk * Dk, ldv = Hv * Dv;
    const float *Q = in->q + ((size_t)t0 * Hk + kh) * Dk;
    const float *K = in->k + ((size_t)t0 * Hk + kh) * Dk;
    const float *V = in->v + ((size_t)t0 * Hv + h) * Dv;
    float *O = out + ((size_t)t0 * Hv + h) * Dv;
    const float *beta = in->beta + (size_t)t0 * Hv + h;
    float acc = 0.0f;
    for (int i = 0; i < c; i++) {
        acc += in->g[(size_t)(t0 + i) * Hv + h];
        s->cum[i] = acc;
    }
    /* K K^T and Q K^T, then their decays (pairwise exp(cum_i - cum_j)). */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c, c, Dk, 1.0f, K, ldk, K, ldk, 0.0f,
                s->L, c);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c, c, Dk, 1.0f, Q, ldk, K, ldk, 0.0f,
                s->A, c);
    for (int i = 0; i < c; i++)
        for (int j = 0; j < c; j++) {
            float d = j <= i ? expf(s->cum[i] - s->cum[j]) : 0.0f;
            s->L[(size_t)i * c + j] = j < i ? beta[(size_t)i * Hv] * s->L[(size_t)i * c + j] * d
                                            : 0.0f;
            s->A[(size_t)i * c + j] *= d;
        }
    /* (I + L) U = beta v and (I + L) W = beta k exp(cum): the delta-rule
     * updates of the chunk in closed form (a unit lower-triangular solve). */
    for (int i = 0; i < c; i++) {
        float b = beta[(size_t)i * Hv], e = expf(s->cum[i]);
        for (int d = 0; d < Dv; d++)
            s->U[(size_t)i * Dv + d] = b * V[(size_t)i * ldv + d];
        for (int d = 0; d < Dk; d++)
            s->W[(size_t)i * Dk + d] = b * e * K[(size_t)i * ldk + d];
    }
    cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasUnit, c, Dv, 1.0f, s->L,
                c, s->U, Dv);
    cblas_strsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasUnit, c, Dk, 1.0f, s->L,
                c, s->W, Dk);
    /* vnew = U - W S (into U); outputs read the old state decayed to each
     * token, plus the chunk's own writes: O = diag(exp(cum)) Q S + A vnew. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c, Dv, Dk, -1.0f, s->W, Dk, S, Dv,
                1.0f, s->U, Dv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c, Dv, Dk, 1.0f, Q, ldk, S, Dv, 0.0f,
                O, ldv);
    for (int i = 0; i < c; i++) {
        float e = expf(s->cum[i]);
        for (int d = 0; d < Dv; d++)
            O[(size_t)i * ldv + d] *= e;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c, Dv, c, 1.0f, s->A, c, s->U, Dv,
                1.0f, O, ldv);
    /* S = exp(cum_last) S + sum_j exp(cum_last - cum_j) k_j vnew_j^T */
    float last = s->cum[c - 1];
    for (int j = 0; j < c; j++) {
        float e = expf(last - s->cum[j]);
        for (int d = 0; d < Dk; d++)
            s->Kd[(size_t)j * Dk + d] = e * K[(size_t)j * ldk + d];
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Dk, Dv, c, 1.0f, s->Kd, Dk, s->U, Dv,
                expf(last), S, Dv);
}

typedef struct chunked_job {
    const moeq_delta_inputs *in;
    int chunk;
    float *out;
} chunked_job;

/* Every chunk of value head h, in order (heads are independent). */
static moeq_code chunked_head(void *ctx, int h, moeq_error *err)
{
    const chunked_job *j = ctx;
    const moeq_delta_inputs *in = j->in;
    const size_t C = (size_t)j->chunk, Dk = (size_t)in->Dk, Dv = (size_t)in->Dv;
    chunk_scratch s = {malloc(sizeof(float) * C), malloc(sizeof(float) * C * C),
                       malloc(sizeof(float) * C * C), malloc(sizeof(float) * C * Dv),
                       malloc(sizeof(float) * C * Dk), malloc(sizeof(float) * C * Dk)};
    float *S = calloc(Dk * Dv, sizeof(float));
    moeq_code rc = MOEQ_OK;
    if (!s.cum || !s.L || !s.A || !s.U || !s.W || !s.Kd || !S)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the chunked delta rule");
    for (int t0 = 0; !rc && t0 < in->T; t0 += j->chunk)
        delta_chunk(in, h, t0, in->T - t0 < j->chunk ? in->T - t0 : j->chunk, S, &s, j->out);
    free(s.cum);
    free(s.L);
    free(s.A);
    free(s.U);
    free(s.W);
    free(s.Kd);
    free(S);
    return rc;
}

moeq_code moeq_delta_rule_chunked(const moeq_delta_inputs *in, int chunk, float *out,
                                  moeq_error *err)
{
    if (chunk < 1 || in->Hk < 1 || in->Hv % in->Hk)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "delta rule: chunk %d must be positive and value heads (%d) a multiple "
                         "of key heads (%d)",
                         chunk, in->Hv, in->Hk);
    chunked_job j = {in, chunk, out};
    return moeq_parallel_for(in->Hv, 0, chunked_head, &j, err);
}

/* x * rsqrt(sum(x^2) + 1e-6) over each of rows vectors of dim, then times
 * scale (transformers' l2norm, "to align with the FLA library"). */
static void l2norm_rows(float *x, int rows, int dim, float scale)
{
    for (int r = 0; r < rows; r++) {
        float *v = x + (size_t)r * dim;
        double ss = 0.0;
        for (int i = 0; i < dim; i++)
            ss += (double)v[i] * v[i];
        float inv = 1.0f / sqrtf((float)ss + 1e-6f);
        for (int i = 0; i < dim; i++)
            v[i] = v[i] * inv * scale;
    }
}

/* torch.nn.functional.softplus with its default threshold 20. */
static float softplus(float x)
{
    return x > 20.0f ? x : log1pf(expf(x));
}

/* The fused projections of Qwen3-Next interleave the outputs by key-head
 * group: group g holds [q (Dk) | k (Dk) | v (r Dv) | z (r Dv)] and
 * [b (r) | a (r)] with r = Hv / Hk. This gathers them into the separate
 * layout [q all heads | k | v] + z + b + a that Qwen3.5 stores. */
static void split_fused(const moeq_config *c, const float *qkvz, const float *ba, int n,
                        float *qkv, float *z, float *b, float *a)
{
    const int Hk = c->la_num_k_heads, Dk = c->la_k_head_dim, Dv = c->la_v_head_dim;
    const int r = c->la_num_v_heads / Hk, kd = Hk * Dk, vd = c->la_num_v_heads * Dv;
    const int group = 2 * Dk + 2 * r * Dv, conv_dim = 2 * kd + vd;
    for (int t = 0; t < n; t++) {
        const float *src = qkvz + (size_t)t * Hk * group;
        float *dst = qkv + (size_t)t * conv_dim;
        for (int g = 0; g < Hk; g++) {
            const float *p = src + (size_t)g * group;
            memcpy(dst + g * Dk, p, sizeof(float) * Dk);
            memcpy(dst + kd + g * Dk, p + Dk, sizeof(float) * Dk);
            memcpy(dst + 2 * kd + g * r * Dv, p + 2 * Dk, sizeof(float) * r * Dv);
            memcpy(z + (size_t)t * vd + g * r * Dv, p + 2 * Dk + r * Dv, sizeof(float) * r * Dv);
            const float *q = ba + ((size_t)t * Hk + g) * 2 * r;
            memcpy(b + (size_t)t * c->la_num_v_heads + g * r, q, sizeof(float) * r);
            memcpy(a + (size_t)t * c->la_num_v_heads + g * r, q + r, sizeof(float) * r);
        }
    }
}

moeq_code moeq_deltanet_core(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const float *h, int n_seqs, int seq_len, float *o_in,
                             moeq_error *err)
{
    const moeq_deltanet_weights *w = &lw->la;
    const int H = cfg->hidden_size, Hk = cfg->la_num_k_heads, Hv = cfg->la_num_v_heads;
    const int Dk = cfg->la_k_head_dim, Dv = cfg->la_v_head_dim, K = cfg->la_conv_kernel;
    const int kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd, T = seq_len;
    /* One window at a time: the buffers hold T tokens, not the whole set. */
    const size_t N = (size_t)T;
    float *qkv = malloc(sizeof(float) * N * C), *z = malloc(sizeof(float) * N * vd);
    float *b = malloc(sizeof(float) * N * Hv), *a = malloc(sizeof(float) * N * Hv);
    float *core = malloc(sizeof(float) * N * vd), *q = malloc(sizeof(float) * N * kd);
    float *k = malloc(sizeof(float) * N * kd), *v = malloc(sizeof(float) * N * vd);
    float *fused = w->in_qkvz ? malloc(sizeof(float) * N * (C + vd)) : NULL;
    float *fused_ba = w->in_qkvz ? malloc(sizeof(float) * N * 2 * Hv) : NULL;
    moeq_code rc = MOEQ_OK;
    if (!qkv || !z || !b || !a || !core || !q || !k || !v || (w->in_qkvz && (!fused || !fused_ba))) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the linear attention of "
                       "%d tokens", lw->layer, T);
        goto done;
    }
    for (int s = 0; s < n_seqs && !rc; s++) {
        const float *hs = h + (size_t)s * T * H;
        if (w->in_qkvz) {
            cpu_linear(hs, T, H, w->in_qkvz, NULL, C + vd, fused);
            cpu_linear(hs, T, H, w->in_ba, NULL, 2 * Hv, fused_ba);
            split_fused(cfg, fused, fused_ba, T, qkv, z, b, a);
        } else {
            cpu_linear(hs, T, H, w->in_qkv, NULL, C, qkv);
            cpu_linear(hs, T, H, w->in_z, NULL, vd, z);
            cpu_linear(hs, T, H, w->in_b, NULL, Hv, b);
            cpu_linear(hs, T, H, w->in_a, NULL, Hv, a);
        }
        /* Causal depthwise conv over time, then SiLU: channel ch at token t
         * sees tokens t - K + 1 .. t (zeros before the window's start); the
         * channels are [q | k | v]. */
        for (int t = 0; t < T; t++)
            for (int ch = 0; ch < C; ch++) {
                float acc = 0.0f;
                for (int j = 0; j < K; j++) {
                    int src = t - (K - 1) + j;
                    if (src >= 0)
                        acc += w->conv[(size_t)ch * K + j] * qkv[(size_t)src * C + ch];
                }
                float y = acc / (1.0f + expf(-acc));
                if (ch < kd)
                    q[(size_t)t * kd + ch] = y;
                else if (ch < 2 * kd)
                    k[(size_t)t * kd + ch - kd] = y;
                else
                    v[(size_t)t * vd + ch - 2 * kd] = y;
            }
        l2norm_rows(q, T * Hk, Dk, 1.0f / sqrtf((float)Dk));
        l2norm_rows(k, T * Hk, Dk, 1.0f);
        /* beta = sigmoid(b); g = -exp(A_log) softplus(a + dt_bias), in b and a. */
        for (size_t i = 0; i < N * Hv; i++) {
            int hh = (int)(i % (size_t)Hv);
            b[i] = 1.0f / (1.0f + expf(-b[i]));
            a[i] = -expf(w->a_log[hh]) * softplus(a[i] + w->dt_bias[hh]);
        }
        moeq_delta_inputs in = {q, k, v, a, b, T, Hk, Hv, Dk, Dv};
        if ((rc = moeq_delta_rule_chunked(&in, MOEQ_DELTA_CHUNK, core, err))) {
            moeq_wrap(err, "layer %d: ", lw->layer);
            break;
        }
        /* Gated RMSNorm per (token, value head): norm weight times the
         * normed core output, times silu(z). */
        float *o = o_in + (size_t)s * T * vd;
        cpu_rmsnorm(core, w->norm, T * Hv, Dv, cfg->rms_norm_eps, o);
        for (size_t i = 0; i < N * vd; i++)
            o[i] *= z[i] / (1.0f + expf(-z[i]));
    }
done:
    free(qkv);
    free(z);
    free(b);
    free(a);
    free(core);
    free(q);
    free(k);
    free(v);
    free(fused);
    free(fused_ba);
    return rc;
}

moeq_code moeq_linear_attention_block(const moeq_config *cfg, const moeq_layer_weights *lw,
                                      const float *x, int n_seqs, int seq_len, float *out,
                                      moeq_layer_trace *trace, moeq_error *err)
{
    const int H = cfg->hidden_size, n = n_seqs * seq_len;
    const int vd = cfg->la_num_v_heads * cfg->la_v_head_dim;
    float *h = malloc(sizeof(float) * (size_t)n * H);
    float *o_in = malloc(sizeof(float) * (size_t)n * vd);
    moeq_code rc = MOEQ_OK;
    if (!h || !o_in) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for the linear attention",
                       lw->layer);
        goto done;
    }
    cpu_rmsnorm(x, lw->attn_norm, n, H, cfg->rms_norm_eps, h);
    if (trace && trace->attn_in)
        memcpy(trace->attn_in, h, sizeof(float) * (size_t)n * H);
    if ((rc = moeq_deltanet_core(cfg, lw, h, n_seqs, seq_len, o_in, err)))
        goto done;
    if (trace && trace->o_in)
        memcpy(trace->o_in, o_in, sizeof(float) * (size_t)n * vd);
    cpu_linear(o_in, n, vd, lw->la.out, NULL, H, h);
    if (trace && trace->attn_out)
        memcpy(trace->attn_out, h, sizeof(float) * (size_t)n * H);
    for (size_t i = 0; i < (size_t)n * H; i++)
        out[i] = x[i] + h[i];
done:
    free(h);
    free(o_in);
    return rc;
}
