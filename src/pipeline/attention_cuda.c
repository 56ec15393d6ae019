/* attention_cuda.c: the attention block on the GPU (GQA with q/k-norm,
 * biases, partial RoPE, sliding windows and gpt-oss's sinks; Llama-4's
 * interleaved RoPE, layers without RoPE, q/k L2 norm, temperature tuning
 * and chunked attention; Qwen3-Next's per-head output gate): q/k/v and
 * o_proj quantized from their real inputs, then the block's output with
 * the quantized weights added to the residual stream. */
#include "pipeline/layer_cuda.h"

#include "backend/cuda/cuda_layer.h"
#include "kernels.h"
#include "model/config.h"
#include "model/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the residual stream */

/* h = bf16(rmsnorm(r) * weight) for the residual stream r: dev on the
 * device, or host (pinned) through the stage. */
moeq_code gpu_norm_residual(gpu_run *g, const moeq_cuda_buf *dev, const float *host,
                            const float *weight, moeq_error *err)
{
    const int H = g->cfg->hidden_size, n = g->n;
    const float eps = g->cfg->rms_norm_eps;
    if (!g->resid_host)
        return MOEQ_CU(moeq_k_rmsnorm_bf16(dev->ptr, weight, n, H, eps, g->h.ptr, g->cu.stream));
    moeq_code rc = MOEQ_OK;
    for (int c0 = 0; c0 < n && !rc; c0 += g->chunk) {
        int m = n - c0 < g->chunk ? n - c0 : g->chunk;
        if (!(rc = moeq_cuda_upload(&g->cu, g->stage.ptr, host + (size_t)c0 * H,
                                    sizeof(float) * (size_t)m * H, err)))
            rc = MOEQ_CU(moeq_k_rmsnorm_bf16(g->stage.ptr, weight, m, H, eps,
                                             (uint16_t *)g->h.ptr + (size_t)c0 * H,
                                             g->cu.stream));
    }
    return rc;
}

/* x1 = x + o W^T (+ bias): a token mixer's output projection with every
 * weight quantized, a chunk of tokens at a time in both places the stream
 * may live (the same GEMM shapes, so the same sums, either way). */
moeq_code gpu_add_block_output(gpu_run *g, int odim, const uint16_t *w, const float *bias,
                               moeq_error *err)
{
    const int H = g->cfg->hidden_size, n = g->n;
    moeq_code rc = MOEQ_OK;
    for (int c0 = 0; c0 < n && !rc; c0 += g->chunk) {
        int m = n - c0 < g->chunk ? n - c0 : g->chunk;
        float *y = g->resid_host ? g->stage.ptr : (float *)g->x1.ptr + (size_t)c0 * H;
        if ((rc = g->resid_host
                      ? moeq_cuda_upload(&g->cu, y, g->xh + (size_t)c0 * H,
                                         sizeof(float) * (size_t)m * H, err)
                      : MOEQ_CU(cudaMemcpyAsync(y, (const float *)g->x.ptr + (size_t)c0 * H,
                                                sizeof(float) * (size_t)m * H,
                                                cudaMemcpyDeviceToDevice, g->cu.stream))) ||
            (rc = gpu_gemm_nt(g, (const uint16_t *)g->o.ptr + (size_t)c0 * odim, odim, w, odim,
                              y, H, 0, m, H, odim, 1.0f, 1.0f, err)) ||
            (bias && (rc = MOEQ_CU(moeq_k_add_bias(y, m, H, bias, g->cu.stream)))))
            break;
        if (g->resid_host)
            rc = moeq_cuda_download(&g->cu, g->x1h + (size_t)c0 * H, y,
                                    sizeof(float) * (size_t)m * H, err);
    }
    return rc;
}

/* ---- attention */

void gpu_attn_free(gpu_run *g, gpu_attn *a)
{
    moeq_cuda_buf *all[] = {&a->qn, &a->kn, &a->bias[0], &a->bias[1], &a->bias[2], &a->sinks,
                            &a->temp, &a->qf, &a->kf, &a->vf, &a->qb, &a->kb, &a->vb, &a->sc,
                            &a->pb, &a->qg, &a->gf};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        moeq_cuda_free(&g->cu, all[i]);
}

moeq_code gpu_attn_init(gpu_run *g, const moeq_layer_weights *lw, gpu_attn *a, moeq_error *err)
{
    const moeq_config *cfg = g->cfg;
    const int T = g->T, hq = cfg->num_heads, qdim = g->qdim, kvdim = g->kvdim;
    /* q/k RMSNorm per head of D, or (MiniMax-M2, qk_norm_full) over a
     * token's whole q [Hq D] and k [Hkv D], as gqa_attention in forward.c. */
    const int qk_full = cfg->qk_norm_full;
    const int qn_dim = qk_full ? qdim : cfg->head_dim, kn_dim = qk_full ? kvdim : cfg->head_dim;
    memset(a, 0, sizeof *a);
    /* Output-gated attention (Qwen3-Next, Qwen3.5): q_proj yields each
     * head's query then its gate, [T, Hq, 2 D] (qg); the gate (gf) scales
     * the head's output by its sigmoid before o_proj (gqa_attention in
     * forward.c). Only the config decides: the MTP block's layer runs here
     * too. */
    a->gated = cfg->attn_output_gate;
    const int q_rows = a->gated ? 2 * qdim : qdim;
    /* gpt-oss: a sliding window on the layers layer_types marks, sinks on all. */
    a->window = moeq_config_layer_window(cfg, lw->layer);
    /* Llama-4 (gqa_attention and llama4_qk in forward.c): RoPE only where
     * no_rope_layers says so, then the weightless q/k L2 norm there, and
     * on the other layers q scaled by its position's temperature, one
     * factor per position computed on the host by the CPU's function (so
     * the same factors), applied to each window's rows. Chunked layers
     * attend within chunks of attention_chunk_size tokens. */
    a->use_rope = moeq_config_layer_rope(cfg, lw->layer);
    a->l2_norm = a->use_rope && cfg->qk_l2_norm;
    a->chunk = cfg->layer_chunked && cfg->layer_chunked[lw->layer] && cfg->attention_chunk_size < T
                   ? cfg->attention_chunk_size
                   : T;
    const size_t TT = (size_t)a->chunk * a->chunk;
    moeq_code rc = MOEQ_OK;
    if (!a->use_rope && cfg->attn_temperature_tuning) {
        float *factors = malloc(sizeof(float) * (size_t)T);
        if (!factors)
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the attention temperatures");
        for (int t = 0; t < T; t++)
            factors[t] = moeq_attn_temperature(cfg, t);
        rc = gpu_upload_f32(g, factors, (size_t)T, "attention temperatures", &a->temp, err);
        if (!rc)
            rc = moeq_cuda_sync(&g->cu, err); /* the copy has read factors */
        free(factors);
        if (rc) {
            gpu_attn_free(g, a);
            return rc;
        }
    }
    if ((rc = gpu_upload_f32(g, lw->q_norm, (size_t)qn_dim, "q_norm", &a->qn, err)) ||
        (rc = gpu_upload_f32(g, lw->k_norm, (size_t)kn_dim, "k_norm", &a->kn, err)) ||
        (rc = gpu_upload_f32(g, lw->q_bias, (size_t)q_rows, "q bias", &a->bias[0], err)) ||
        (rc = gpu_upload_f32(g, lw->k_bias, (size_t)kvdim, "k bias", &a->bias[1], err)) ||
        (rc = gpu_upload_f32(g, lw->v_bias, (size_t)kvdim, "v bias", &a->bias[2], err)) ||
        (rc = gpu_upload_f32(g, lw->sinks, (size_t)hq, "attention sinks", &a->sinks, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->qf, sizeof(float) * (size_t)T * qdim, "q", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->kf, sizeof(float) * (size_t)T * kvdim, "k", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->vf, sizeof(float) * (size_t)T * kvdim, "v", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->qb, 2 * (size_t)T * qdim, "q bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->kb, 2 * (size_t)T * kvdim, "k bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->vb, 2 * (size_t)T * kvdim, "v bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->sc, sizeof(float) * TT * hq, "attention scores", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a->pb, 2 * TT * hq, "attention probabilities", err)) ||
        (a->gated && ((rc = moeq_cuda_alloc(&g->cu, &a->qg, sizeof(float) * (size_t)T * q_rows,
                                            "query and gate", err)) ||
                      (rc = moeq_cuda_alloc(&g->cu, &a->gf, sizeof(float) * (size_t)T * qdim,
                                            "output gate", err)))))
        gpu_attn_free(g, a);
    return rc;
}

moeq_code gpu_attn_windows(gpu_run *g, gpu_attn *a, const uint16_t *wqkv, int s0, int count,
                           uint16_t *o, moeq_error *err)
{
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size, T = g->T, hq = cfg->num_heads, hkv = cfg->num_kv_heads,
              D = cfg->head_dim, qdim = g->qdim, kvdim = g->kvdim;
    const int qk_full = cfg->qk_norm_full;
    const int qn_rows = qk_full ? T : T * hq, kn_rows = qk_full ? T : T * hkv;
    const int qn_dim = qk_full ? qdim : D, kn_dim = qk_full ? kvdim : D;
    const int q_rows = a->gated ? 2 * qdim : qdim;
    const uint16_t *wq = wqkv, *wk = wq + (size_t)q_rows * H, *wv = wk + (size_t)kvdim * H;
    const float scale = 1.0f / sqrtf((float)D);
    moeq_code rc = MOEQ_OK;
    /* One window at a time: q/k/v, norms, RoPE, scores, softmax, P v; the
     * scores of one chunk at a time on chunked layers. */
    for (int s = s0; s < s0 + count; s++) {
        const uint16_t *hs = (const uint16_t *)g->h.ptr + (size_t)s * T * H;
        float *qout = a->gated ? a->qg.ptr : a->qf.ptr;
        if ((rc = gpu_gemm_nt(g, hs, H, wq, H, qout, q_rows, 0, T, q_rows, H, 1.0f, 0.0f, err)) ||
            (rc = gpu_gemm_nt(g, hs, H, wk, H, a->kf.ptr, kvdim, 0, T, kvdim, H, 1.0f, 0.0f,
                              err)) ||
            (rc = gpu_gemm_nt(g, hs, H, wv, H, a->vf.ptr, kvdim, 0, T, kvdim, H, 1.0f, 0.0f,
                              err)))
            return rc;
        float *bufs[3] = {qout, a->kf.ptr, a->vf.ptr};
        int widths[3] = {q_rows, kvdim, kvdim};
        for (int i = 0; i < 3; i++)
            if (a->bias[i].ptr && (rc = MOEQ_CU(moeq_k_add_bias(bufs[i], T, widths[i],
                                                                a->bias[i].ptr, g->cu.stream))))
                return rc;
        if (a->gated && (rc = MOEQ_CU(moeq_k_split_query_gate(a->qg.ptr, (long long)T * hq, D,
                                                              a->qf.ptr, a->gf.ptr,
                                                              g->cu.stream))))
            return rc;
        if (a->qn.ptr &&
            ((rc = MOEQ_CU(moeq_k_rmsnorm(a->qf.ptr, a->qn.ptr, qn_rows, qn_dim,
                                          cfg->rms_norm_eps, a->qf.ptr, g->cu.stream))) ||
             (rc = MOEQ_CU(moeq_k_rmsnorm(a->kf.ptr, a->kn.ptr, kn_rows, kn_dim,
                                          cfg->rms_norm_eps, a->kf.ptr, g->cu.stream)))))
            return rc;
        if (a->use_rope &&
            ((rc = MOEQ_CU(moeq_k_rope(a->qf.ptr, T, hq, D, g->rotary_dim, T, g->inv_freq.ptr,
                                       g->attention_factor, cfg->rope_interleaved,
                                       g->cu.stream))) ||
             (rc = MOEQ_CU(moeq_k_rope(a->kf.ptr, T, hkv, D, g->rotary_dim, T, g->inv_freq.ptr,
                                       g->attention_factor, cfg->rope_interleaved,
                                       g->cu.stream)))))
            return rc;
        if (a->l2_norm &&
            ((rc = MOEQ_CU(moeq_k_rmsnorm(a->qf.ptr, NULL, T * hq, D, cfg->rms_norm_eps, a->qf.ptr,
                                          g->cu.stream))) ||
             (rc = MOEQ_CU(moeq_k_rmsnorm(a->kf.ptr, NULL, T * hkv, D, cfg->rms_norm_eps,
                                          a->kf.ptr, g->cu.stream)))))
            return rc;
        if (a->temp.ptr && (rc = MOEQ_CU(moeq_k_scale_rows(a->qf.ptr, 0, a->temp.ptr, T, qdim,
                                                            a->qf.ptr, g->cu.stream))))
            return rc;
        if ((rc = MOEQ_CU(moeq_k_to_bf16(a->qf.ptr, (size_t)T * qdim, a->qb.ptr, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_to_bf16(a->kf.ptr, (size_t)T * kvdim, a->kb.ptr,
                                         g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_to_bf16(a->vf.ptr, (size_t)T * kvdim, a->vb.ptr,
                                         g->cu.stream))))
            return rc;
        uint16_t *os = o + (size_t)(s - s0) * T * qdim;
        if ((rc = moeq_cuda_attention_chunked_bf16(&g->cu, a->qb.ptr, a->kb.ptr, a->vb.ptr, T,
                                                   a->chunk, hq, hkv, D, D, scale, a->window,
                                                   a->sinks.ptr, a->sc.ptr, a->pb.ptr, os, err)) ||
            (a->gated && (rc = MOEQ_CU(moeq_k_sigmoid_gate_bf16(os, a->gf.ptr, (size_t)T * qdim,
                                                                g->cu.stream)))))
            return rc;
    }
    return rc;
}

moeq_code gpu_attention_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size, n = g->n, qdim = g->qdim, kvdim = g->kvdim;
    moeq_cuda_gptq_prepared prep = {0};
    moeq_cuda_buf wqkv = {0}, wo = {0}, norm = {0}, o_bias = {0};
    gpu_attn a = {0};
    /* Output-gated attention (Qwen3-Next, Qwen3.5): q_proj yields each
     * head's query then its gate (gpu_attn_windows applies it). */
    const int q_rows = cfg->attn_output_gate ? 2 * qdim : qdim;
    moeq_code rc;
    if ((rc = gpu_upload_f32(g, lw->attn_norm, (size_t)H, "attention norm", &norm, err)) ||
        (rc = gpu_upload_f32(g, lw->o_bias, (size_t)H, "o bias", &o_bias, err)) ||
        (rc = gpu_norm_residual(g, &g->x, g->xh, norm.ptr, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &g->o, 2 * (size_t)n * qdim, "attention outputs", err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    if (gpu_uses_hessians(L) && (rc = gpu_hessian_prepare(L, g->h.ptr, n, H, NULL, 2.0f / (float)n,
                                                          "q/k/v_proj", &prep, err)))
        goto done;
    const piece qkv[3] = {{MOEQ_T_Q_PROJ, -1, lw->q, q_rows, n, 0, NULL},
                          {MOEQ_T_K_PROJ, -1, lw->k, kvdim, n, 0, NULL},
                          {MOEQ_T_V_PROJ, -1, lw->v, kvdim, n, 0, NULL}};
    if ((rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, qkv, 3, H, &wqkv,
                                 err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
        goto done;
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    if ((rc = gpu_attn_init(g, lw, &a, err)) ||
        (rc = gpu_attn_windows(g, &a, wqkv.ptr, 0, g->S, g->o.ptr, err)))
        goto done;
    if ((rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    gpu_attn_free(g, &a);
    if (gpu_uses_hessians(L) && (rc = gpu_hessian_prepare(L, g->o.ptr, n, qdim, NULL,
                                                          2.0f / (float)n, "o_proj", &prep, err)))
        goto done;
    const piece o_piece = {MOEQ_T_O_PROJ, -1, lw->o, H, n, 0, NULL};
    if ((rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, &o_piece, 1, qdim,
                                 &wo, err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
        goto done;
    if (!(rc = gpu_add_block_output(g, qdim, wo.ptr, o_bias.ptr, err)))
        rc = gpu_sync_time(L, &L->res->seconds_forward, err);
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    gpu_attn_free(g, &a);
    moeq_cuda_buf *all[] = {&wqkv, &wo, &norm, &o_bias, &g->o};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        moeq_cuda_free(&g->cu, all[i]);
    return rc;
}
