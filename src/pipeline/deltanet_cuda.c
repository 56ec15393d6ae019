/* deltanet_cuda.c: the Gated DeltaNet block of a linear-attention layer
 * (Qwen3-Next, Qwen3.5) on the GPU, in the CPU loop's order
 * (quantize_linear_attention in quantize.c): every quantized in_proj
 * against one Hessian of the normed input; the core (conv1d + SiLU, L2-normed
 * q/k, the gated delta rule, the gated RMSNorm) with the quantized in_proj,
 * whose output calibrates out_proj; then x1 = x + out_proj(core). in_proj_b
 * / in_proj_a (fused: in_proj_ba) are quantized only with
 * --quantize-linear-ba and otherwise run as the checkpoint stores them;
 * conv1d is never quantized.
 *
 * The core runs on batches of whole windows (the conv and the delta rule
 * restart at each window), as many as g->chunk tokens or, under
 * --vram-budget, a sixteenth of the budget holds, at least one. The delta
 * rule is the recurrent kernel (kernels/deltanet.cu): one block per
 * (window, value head), token by token; not the chunked tensor-core form. */
#include "pipeline/layer_cuda.h"

#include "kernels.h"
#include "model/config.h"

#include <math.h>
#include <string.h>

/* fp32 values a token of the core's batch holds: the projections
 * [C + vd | 2 Hv], their unpacked parts [C | vd | Hv | Hv], the conv output
 * [C] (the delta rule's output reuses the unpacked qkv: vd <= C). */
static size_t core_floats_per_token(const moeq_config *cfg)
{
    const size_t kd = (size_t)cfg->la_num_k_heads * cfg->la_k_head_dim,
                 vd = (size_t)cfg->la_num_v_heads * cfg->la_v_head_dim,
                 hv = (size_t)cfg->la_num_v_heads, C = 2 * kd + vd;
    return 3 * C + 2 * vd + 4 * hv;
}

/* Windows per batch of the core. */
static int core_windows(const gpu_run *g)
{
    size_t tokens = (size_t)g->chunk;
    if (g->opt->vram_budget) {
        size_t fit = g->opt->vram_budget / 16 / (sizeof(float) * core_floats_per_token(g->cfg));
        tokens = fit < tokens ? fit : tokens;
    }
    size_t w = tokens / (size_t)g->T;
    return w < 1 ? 1 : w > (size_t)g->S ? g->S : (int)w;
}

moeq_code gpu_deltanet_stage(gpu_layer *L, const moeq_layer_weights *lw, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_config *cfg = g->cfg;
    const moeq_deltanet_weights *w = &lw->la;
    const int H = cfg->hidden_size, n = g->n, T = g->T;
    const int Hk = cfg->la_num_k_heads, Hv = cfg->la_num_v_heads, Dk = cfg->la_k_head_dim,
              Dv = cfg->la_v_head_dim, K = cfg->la_conv_kernel;
    const int kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd;
    const int fused = w->in_qkvz != NULL, ba = g->opt->quantize_linear_ba;
    moeq_cuda_gptq_prepared prep = {0};
    moeq_cuda_buf norm = {0}, conv = {0}, a_log = {0}, dt_bias = {0}, gnorm = {0};
    moeq_cuda_buf win = {0}, wba = {0}, wo = {0};
    moeq_cuda_buf proj = {0}, pba = {0}, qkv = {0}, z = {0}, b = {0}, a = {0}, cv = {0};
    moeq_code rc;
    if ((rc = gpu_upload_f32(g, lw->attn_norm, (size_t)H, "linear attention norm", &norm, err)) ||
        (rc = gpu_upload_f32(g, w->conv, (size_t)C * K, "conv1d", &conv, err)) ||
        (rc = gpu_upload_f32(g, w->a_log, (size_t)Hv, "A_log", &a_log, err)) ||
        (rc = gpu_upload_f32(g, w->dt_bias, (size_t)Hv, "dt_bias", &dt_bias, err)) ||
        (rc = gpu_upload_f32(g, w->norm, (size_t)Dv, "gated norm", &gnorm, err)) ||
        (rc = gpu_norm_residual(g, &g->x, g->xh, norm.ptr, err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &g->o, 2 * (size_t)n * vd, "linear attention outputs",
                              err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    /* Every in_proj reads the normed input: one Hessian for all of them. */
    if (gpu_uses_hessians(L) && (rc = gpu_hessian_prepare(L, g->h.ptr, n, H, NULL, 2.0f / (float)n,
                                                          "linear attention in_proj", &prep, err)))
        goto done;
    /* The stack's rows: [qkvz | ba] fused, [qkv | z | b | a] separate, the
     * b/a rows only when quantized (else wba holds them as stored). */
    piece in[4];
    int n_in = 0;
    if (fused) {
        in[n_in++] = (piece){MOEQ_T_LA_IN_QKVZ, -1, w->in_qkvz, C + vd, n, 0, NULL};
        if (ba)
            in[n_in++] = (piece){MOEQ_T_LA_IN_BA, -1, w->in_ba, 2 * Hv, n, 0, NULL};
    } else {
        in[n_in++] = (piece){MOEQ_T_LA_IN_QKV, -1, w->in_qkv, C, n, 0, NULL};
        in[n_in++] = (piece){MOEQ_T_LA_IN_Z, -1, w->in_z, vd, n, 0, NULL};
        if (ba) {
            in[n_in++] = (piece){MOEQ_T_LA_IN_B, -1, w->in_b, Hv, n, 0, NULL};
            in[n_in++] = (piece){MOEQ_T_LA_IN_A, -1, w->in_a, Hv, n, 0, NULL};
        }
    }
    if ((rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, in, n_in, H, &win,
                                 err)))
        goto done;
    if (!ba) {
        const size_t rows_h = (size_t)Hv * H;
        if (fused)
            rc = gpu_upload_bf16(g, w->in_ba, 2 * rows_h, "in_proj_ba", &wba, err);
        else if (!(rc = moeq_cuda_alloc(&g->cu, &wba, 2 * 2 * rows_h, "in_proj_b/a", err)) &&
                 !(rc = gpu_upload_bf16_into(g, w->in_b, rows_h, wba.ptr, err)))
            rc = gpu_upload_bf16_into(g, w->in_a, rows_h, (uint16_t *)wba.ptr + rows_h, err);
        if (rc)
            goto done;
    }
    if ((rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
        goto done;
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);

    /* The core, a batch of whole windows at a time, into g->o. */
    const uint16_t *w_main = win.ptr;
    const uint16_t *w_ba = ba ? (const uint16_t *)win.ptr + (size_t)(C + vd) * H : wba.ptr;
    const int wb = core_windows(g), mt = wb * T;
    if ((rc = moeq_cuda_alloc(&g->cu, &proj, sizeof(float) * (size_t)mt * (C + vd),
                              "linear attention projections", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &pba, sizeof(float) * (size_t)mt * 2 * Hv,
                              "linear attention gate projections", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &qkv, sizeof(float) * (size_t)mt * C, "conv1d inputs",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &z, sizeof(float) * (size_t)mt * vd, "output gate z",
                              err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &b, sizeof(float) * (size_t)mt * Hv, "beta", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &a, sizeof(float) * (size_t)mt * Hv, "decay", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &cv, sizeof(float) * (size_t)mt * C, "conv1d outputs",
                              err)))
        goto done;
    for (int s0 = 0; s0 < g->S; s0 += wb) {
        const int ws = g->S - s0 < wb ? g->S - s0 : wb, m = ws * T;
        const uint16_t *hs = (const uint16_t *)g->h.ptr + (size_t)s0 * T * H;
        float *cvp = cv.ptr;
        const moeq_k_delta_args da = {.q = cvp, .k = cvp + kd, .v = cvp + 2 * kd, .ld_qk = C,
                                      .ld_v = C, .g = a.ptr, .beta = b.ptr, .seqs = ws, .T = T,
                                      .Hk = Hk, .Hv = Hv, .Dk = Dk, .Dv = Dv,
                                      .out = qkv.ptr};
        if ((rc = gpu_gemm_nt(g, hs, H, w_main, H, proj.ptr, C + vd, 0, m, C + vd, H, 1.0f, 0.0f,
                              err)) ||
            (rc = gpu_gemm_nt(g, hs, H, w_ba, H, pba.ptr, 2 * Hv, 0, m, 2 * Hv, H, 1.0f, 0.0f,
                              err)) ||
            (rc = MOEQ_CU(moeq_k_deltanet_unpack(proj.ptr, pba.ptr, m, Hk, Hv, Dk, Dv, fused,
                                                 qkv.ptr, z.ptr, b.ptr, a.ptr, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_causal_conv_silu(qkv.ptr, conv.ptr, T, m, C, K, cvp,
                                                  g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_l2norm_heads(cvp, m, Hk, Dk, C, 1.0f / sqrtf((float)Dk),
                                              g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_l2norm_heads(cvp + kd, m, Hk, Dk, C, 1.0f, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_deltanet_gates(b.ptr, a.ptr, a_log.ptr, dt_bias.ptr, m, Hv,
                                                g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_delta_rule(&da, g->cu.stream))) ||
            (rc = MOEQ_CU(moeq_k_gated_rmsnorm_bf16(qkv.ptr, z.ptr, gnorm.ptr, (long long)m * Hv,
                                                    Dv, cfg->rms_norm_eps,
                                                    (uint16_t *)g->o.ptr + (size_t)s0 * T * vd,
                                                    g->cu.stream))))
            goto done;
    }
    if ((rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    moeq_cuda_buf *scratch[] = {&proj, &pba, &qkv, &z, &b, &a, &cv};
    for (size_t i = 0; i < sizeof scratch / sizeof *scratch; i++)
        moeq_cuda_free(&g->cu, scratch[i]);
    if (gpu_uses_hessians(L) && (rc = gpu_hessian_prepare(L, g->o.ptr, n, vd, NULL, 2.0f / (float)n,
                                                          "out_proj", &prep, err)))
        goto done;
    const piece out = {MOEQ_T_LA_OUT_PROJ, -1, w->out, H, n, 0, NULL};
    if ((rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, &out, 1, vd, &wo,
                                 err)) ||
        (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
        goto done;
    if (!(rc = gpu_add_block_output(g, vd, wo.ptr, NULL, err)))
        rc = gpu_sync_time(L, &L->res->seconds_forward, err);
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    moeq_cuda_buf *all[] = {&norm, &conv, &a_log, &dt_bias, &gnorm, &win, &wba, &wo, &proj,
                            &pba,  &qkv,  &z,     &b,       &a,     &cv,  &g->o};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        moeq_cuda_free(&g->cu, all[i]);
    return rc;
}
