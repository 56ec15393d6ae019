/* mla_cuda.c: multi-head latent attention on the GPU (DeepSeek-V2/V3,
 * Kimi-K2): the MLA stage of the CPU loop (quantize_mla in quantize.c) with
 * the forward of src/model/mla.c, in the same order and from the same
 * inputs:
 *   1. the a-projections (q_a_proj, or q_proj without q_lora_rank, and
 *      kv_a_proj_with_mqa) against one Hessian of the normed input;
 *   2. with them quantized, every token's normed latents (the inputs of
 *      q_b_proj and kv_b_proj) and the rope part of its key;
 *   3. q_b_proj and kv_b_proj, each against the Hessian of its latent;
 *   4. attention one window at a time: q and per head [k_nope | v]
 *      expanded from the latents by the quantized b-projections, RoPE on
 *      the rope parts only (interleaved pairs or halves, as the model
 *      says; YaRN through the rope cache), the softmax scale with YaRN's
 *      mscale, and a causal softmax whose q/k heads are qk_nope + qk_rope
 *      wide and whose v heads are v_head_dim wide;
 *   5. o_proj on that output, then x1 = x + o_proj(attention)
 *      (gpu_add_block_output, as the other token mixers).
 * As in the GQA block (attention_cuda.c), activations and latents are
 * bf16 and every GEMM accumulates in fp32; the latent norms, RoPE and the
 * rope part of the keys stay fp32. */
#include "pipeline/layer_cuda.h"

#include "backend/cuda/cuda_layer.h"
#include "kernels.h"
#include "model/forward.h"
#include "model/mla.h"

#include <string.h>

int gpu_mla_linears(const moeq_config *cfg, const moeq_layer_weights *lw,
                    gpu_mla_linear out[GPU_MLA_MAX_LINEARS])
{
    const int H = cfg->hidden_size, heads = cfg->num_heads, rq = cfg->q_lora_rank;
    const int rkv = cfg->kv_lora_rank, rot = cfg->qk_rope_head_dim;
    const int qrow = heads * (cfg->qk_nope_head_dim + rot);
    const int kvrow = heads * (cfg->qk_nope_head_dim + cfg->v_head_dim);
    int n = 0;
    if (rq)
        out[n++] = (gpu_mla_linear){MOEQ_T_Q_A_PROJ, lw ? lw->q_a : NULL, rq, H};
    else
        out[n++] = (gpu_mla_linear){MOEQ_T_Q_PROJ, lw ? lw->q : NULL, qrow, H};
    out[n++] = (gpu_mla_linear){MOEQ_T_KV_A_PROJ, lw ? lw->kv_a : NULL, rkv + rot, H};
    if (rq)
        out[n++] = (gpu_mla_linear){MOEQ_T_Q_B_PROJ, lw ? lw->q_b : NULL, qrow, rq};
    out[n++] = (gpu_mla_linear){MOEQ_T_KV_B_PROJ, lw ? lw->kv_b : NULL, kvrow, rkv};
    out[n++] = (gpu_mla_linear){MOEQ_T_O_PROJ, lw ? lw->o : NULL, H, moeq_o_proj_in_dim(cfg)};
    return n;
}

size_t gpu_mla_activation_bytes(const moeq_config *cfg, int n)
{
    const size_t per_token = 2 * (size_t)moeq_o_proj_in_dim(cfg) +
                             2 * (size_t)cfg->q_lora_rank + 2 * (size_t)cfg->kv_lora_rank +
                             sizeof(float) * (size_t)cfg->qk_rope_head_dim;
    return per_token * (size_t)n;
}

/* out [m, rank] = bf16(rmsnorm(h w^T + bias) * norm) for bf16 h [m, H] and
 * w [rank, H] (bias NULL: none): a normed latent, with the latent norms'
 * own eps. scratch: fp32 [m, rank]. */
static moeq_code normed_latent(gpu_run *g, const uint16_t *h, int m, const uint16_t *w, int rank,
                               const float *bias, const float *norm, float *scratch,
                               uint16_t *out, moeq_error *err)
{
    const int H = g->cfg->hidden_size;
    moeq_code rc;
    if ((rc = gpu_gemm_nt(g, h, H, w, H, scratch, rank, 0, m, rank, H, 1.0f, 0.0f, err)) ||
        (bias && (rc = MOEQ_CU(moeq_k_add_bias(scratch, m, rank, bias, g->cu.stream)))))
        return rc;
    return MOEQ_CU(moeq_k_rmsnorm_bf16(scratch, norm, m, rank, MOEQ_MLA_LATENT_NORM_EPS, out,
                                       g->cu.stream));
}

/* Quantizes the linear w [rows, cols] against the Hessian of its bf16
 * inputs in [n, cols] (GPTQ; RTN needs none); its dequantized weight lands
 * in *wq (bf16, device). */
static moeq_code quantize_on_inputs(gpu_layer *L, const void *in, int cols, moeq_tensor_role role,
                                    const float *w, int rows, moeq_cuda_buf *wq, moeq_error *err)
{
    gpu_run *g = L->g;
    moeq_cuda_gptq_prepared prep = {0};
    moeq_code rc = MOEQ_OK;
    if (gpu_uses_hessians(L))
        rc = gpu_hessian_prepare(L, in, g->n, cols, NULL, 2.0f / (float)g->n,
                                 moeq_tensor_role_key(role), &prep, err);
    const piece p = {role, -1, w, rows, g->n, 0, NULL};
    if (!rc)
        rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, &p, 1, cols, wq, err);
    if (!rc)
        rc = gpu_sync_time(L, &L->res->seconds_solve, err);
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    return rc;
}

moeq_code gpu_mla_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const int H = cfg->hidden_size, T = g->T, n = g->n, heads = cfg->num_heads;
    const int nope = cfg->qk_nope_head_dim, rot = cfg->qk_rope_head_dim, vd = cfg->v_head_dim;
    const int qk = nope + rot, rq = cfg->q_lora_rank, rkv = cfg->kv_lora_rank;
    const int qrow = heads * qk, kvrow = heads * (nope + vd), odim = heads * vd;
    const int chunk = g->chunk < n ? g->chunk : n, widest = rq > rkv ? rq : rkv;
    gpu_mla_linear lin[GPU_MLA_MAX_LINEARS];
    gpu_mla_linears(cfg, lw, lin);
    moeq_cuda_gptq_prepared prep = {0};
    moeq_cuda_buf norm = {0}, q_a_norm = {0}, kv_a_norm = {0}, q_a_bias = {0}, kv_a_bias = {0},
                  o_bias = {0};
    moeq_cuda_buf wa = {0}, wqb = {0}, wkvb = {0}, wo = {0}, q_lat = {0}, kv_lat = {0},
                  k_rot = {0}, scratch = {0};
    moeq_cuda_buf qf = {0}, kvf = {0}, qb = {0}, kb = {0}, vb = {0}, sc = {0}, pb = {0};
    moeq_code rc;
    if ((rc = gpu_upload_f32(g, lw->attn_norm, (size_t)H, "attention norm", &norm, err)) ||
        (rc = gpu_upload_f32(g, lw->q_a_norm, (size_t)rq, "q_a_layernorm", &q_a_norm, err)) ||
        (rc = gpu_upload_f32(g, lw->kv_a_norm, (size_t)rkv, "kv_a_layernorm", &kv_a_norm,
                             err)) ||
        (rc = gpu_upload_f32(g, lw->q_a_bias, (size_t)rq, "q_a_proj bias", &q_a_bias, err)) ||
        (rc = gpu_upload_f32(g, lw->kv_a_bias, (size_t)(rkv + rot), "kv_a_proj bias",
                             &kv_a_bias, err)) ||
        (rc = gpu_upload_f32(g, lw->o_bias, (size_t)H, "o_proj bias", &o_bias, err)) ||
        (rc = gpu_norm_residual(g, &g->x, g->xh, norm.ptr, err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;

    /* 1. The a-projections: one stack, one Hessian of the normed input. */
    if (gpu_uses_hessians(L) &&
        (rc = gpu_hessian_prepare(L, g->h.ptr, n, H, NULL, 2.0f / (float)n,
                                  rq ? "q_a_proj/kv_a_proj" : "q_proj/kv_a_proj", &prep, err)))
        goto done;
    const piece a[2] = {{lin[0].role, -1, lin[0].w, lin[0].rows, n, 0, NULL},
                        {lin[1].role, -1, lin[1].w, lin[1].rows, n, 0, NULL}};
    if ((rc =
             gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, a, 2, H, &wa, err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
        goto done;
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    const uint16_t *w_q = wa.ptr; /* q_a_proj, or q_proj */
    const uint16_t *w_kv_a = w_q + (size_t)lin[0].rows * H;
    const float *k_rot_bias = kv_a_bias.ptr ? (const float *)kv_a_bias.ptr + rkv : NULL;

    /* 2. The latents of every token with the quantized a-projections, a
     * chunk of tokens at a time; the rope part of the keys kept in fp32. */
    if ((rq && (rc = moeq_cuda_alloc(&g->cu, &q_lat, 2 * (size_t)n * rq, "q_b_proj inputs",
                                     err))) ||
        (rc = moeq_cuda_alloc(&g->cu, &kv_lat, 2 * (size_t)n * rkv, "kv_b_proj inputs", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &k_rot, sizeof(float) * (size_t)n * rot,
                              "the rope part of the keys", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &scratch, sizeof(float) * (size_t)chunk * widest,
                              "MLA latents", err)))
        goto done;
    for (int c0 = 0; c0 < n; c0 += chunk) {
        const int m = n - c0 < chunk ? n - c0 : chunk;
        const uint16_t *hc = (const uint16_t *)g->h.ptr + (size_t)c0 * H;
        float *kr = (float *)k_rot.ptr + (size_t)c0 * rot;
        if ((rq && (rc = normed_latent(g, hc, m, w_q, rq, q_a_bias.ptr, q_a_norm.ptr,
                                       scratch.ptr, (uint16_t *)q_lat.ptr + (size_t)c0 * rq,
                                       err))) ||
            (rc = normed_latent(g, hc, m, w_kv_a, rkv, kv_a_bias.ptr, kv_a_norm.ptr, scratch.ptr,
                                (uint16_t *)kv_lat.ptr + (size_t)c0 * rkv, err)) ||
            (rc = gpu_gemm_nt(g, hc, H, w_kv_a + (size_t)rkv * H, H, kr, rot, 0, m, rot, H, 1.0f,
                              0.0f, err)) ||
            (k_rot_bias &&
             (rc = MOEQ_CU(moeq_k_add_bias(kr, m, rot, k_rot_bias, g->cu.stream)))))
            goto done;
    }
    if ((rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    moeq_cuda_free(&g->cu, &scratch);
    if (rq) /* q comes from q_b_proj now; q_proj (no q_lora_rank) stays for step 4 */
        moeq_cuda_free(&g->cu, &wa);

    /* 3. The b-projections on their latents. */
    if ((rq && (rc = quantize_on_inputs(L, q_lat.ptr, rq, MOEQ_T_Q_B_PROJ, lw->q_b, qrow, &wqb,
                                        err))) ||
        (rc = quantize_on_inputs(L, kv_lat.ptr, rkv, MOEQ_T_KV_B_PROJ, lw->kv_b, kvrow, &wkvb,
                                 err)))
        goto done;

    /* 4. Attention, one window at a time. */
    const size_t TT = (size_t)T * T;
    if ((rc = moeq_cuda_alloc(&g->cu, &g->o, 2 * (size_t)n * odim, "attention outputs", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &qf, sizeof(float) * (size_t)T * qrow, "q", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &kvf, sizeof(float) * (size_t)T * kvrow, "k_nope and v",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &qb, 2 * (size_t)T * qrow, "q bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &kb, 2 * (size_t)T * qrow, "k bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &vb, 2 * (size_t)T * odim, "v bf16", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &sc, sizeof(float) * TT * heads, "attention scores",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &pb, 2 * TT * heads, "attention probabilities", err)))
        goto done;
    const float scale = (float)moeq_mla_softmax_scale(cfg);
    for (int s = 0; s < g->S; s++) {
        const size_t t0 = (size_t)s * T;
        float *kr = (float *)k_rot.ptr + t0 * rot;
        if ((rc = rq ? gpu_gemm_nt(g, (const uint16_t *)q_lat.ptr + t0 * rq, rq, wqb.ptr, rq,
                                   qf.ptr, qrow, 0, T, qrow, rq, 1.0f, 0.0f, err)
                     : gpu_gemm_nt(g, (const uint16_t *)g->h.ptr + t0 * H, H, w_q, H, qf.ptr,
                                   qrow, 0, T, qrow, H, 1.0f, 0.0f, err)) ||
            (rc = gpu_gemm_nt(g, (const uint16_t *)kv_lat.ptr + t0 * rkv, rkv, wkvb.ptr, rkv,
                              kvf.ptr, kvrow, 0, T, kvrow, rkv, 1.0f, 0.0f, err)) ||
            /* The rope part sits after the nope part of each q head. */
            (rc = MOEQ_CU(moeq_k_rope((float *)qf.ptr + nope, T, heads, qk, rot, T,
                                      g->inv_freq.ptr, g->attention_factor,
                                      cfg->rope_interleaved, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_rope(kr, T, 1, rot, rot, T, g->inv_freq.ptr,
                                      g->attention_factor, cfg->rope_interleaved,
                                      g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_to_bf16(qf.ptr, (size_t)T * qrow, qb.ptr, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_mla_split_kv_bf16(kvf.ptr, kr, T, heads, nope, rot, vd, kb.ptr,
                                                   vb.ptr, g->cu.stream))) ||
            (rc = moeq_cuda_attention_causal_bf16(&g->cu, qb.ptr, kb.ptr, vb.ptr, T, heads, heads,
                                                  qk, vd, scale, 0, NULL, sc.ptr, pb.ptr,
                                                  (uint16_t *)g->o.ptr + t0 * odim, err)))
            goto done;
    }
    if ((rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    moeq_cuda_buf *window[] = {&qf, &kvf, &qb, &kb, &vb, &sc, &pb,
                               &q_lat, &kv_lat, &k_rot, &wa, &wqb, &wkvb};
    for (size_t i = 0; i < sizeof window / sizeof *window; i++)
        moeq_cuda_free(&g->cu, window[i]);

    /* 5. o_proj on that output, and the block's output into the residual
     * stream. */
    if (!(rc = quantize_on_inputs(L, g->o.ptr, odim, MOEQ_T_O_PROJ, lw->o, H, &wo, err)) &&
        !(rc = gpu_add_block_output(g, odim, wo.ptr, o_bias.ptr, err)))
        rc = gpu_sync_time(L, &L->res->seconds_forward, err);
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    moeq_cuda_buf *all[] = {&norm, &q_a_norm, &kv_a_norm, &q_a_bias, &kv_a_bias, &o_bias,
                            &wa, &wqb, &wkvb, &wo, &q_lat, &kv_lat, &k_rot, &scratch,
                            &qf, &kvf, &qb, &kb, &vb, &sc, &pb, &g->o};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        moeq_cuda_free(&g->cu, all[i]);
    return rc;
}
