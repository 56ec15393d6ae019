/* mtp_cuda.c: the input of the multi-token-prediction layer on the GPU
 * (model/mtp.h): after the last layer, the drafter's windows one token
 * shorter, the final normed hidden state at t beside the embedding of token
 * t + 1, each RMS-normed and concatenated [embedding; hidden] into fc
 * (DeepSeek-V3 / GLM-4.5: eh_proj), fc quantized on that input unless the
 * architecture keeps it, and fc's output left in the residual stream for
 * the layer's stages (quantize_cuda.c runs them as for a numbered layer). */
#include "pipeline/layer_cuda.h"

#include "kernels.h"
#include "model/weights.h"

#include <stdlib.h>
#include <string.h>

/* g->h [rows, H] = bf16(rmsnorm(rmsnorm(r, w1), w2)) (w1 NULL: one norm)
 * for rows r of fp32: dev on the device (normed in place), or host (pinned
 * or not) through the stage a chunk at a time. */
static moeq_code norm_rows(gpu_run *g, float *dev, const float *host, int rows, const float *w1,
                           const float *w2, moeq_error *err)
{
    const int H = g->cfg->hidden_size;
    const float eps = g->cfg->rms_norm_eps;
    const int chunk = dev ? rows : g->chunk;
    moeq_code rc = MOEQ_OK;
    for (int c0 = 0; c0 < rows && !rc; c0 += chunk) {
        const int m = rows - c0 < chunk ? rows - c0 : chunk;
        float *r = dev ? dev + (size_t)c0 * H : g->stage.ptr;
        if ((!dev && (rc = moeq_cuda_upload(&g->cu, r, host + (size_t)c0 * H,
                                            sizeof(float) * (size_t)m * H, err))) ||
            (w1 && (rc = MOEQ_CU(moeq_k_rmsnorm(r, w1, m, H, eps, r, g->cu.stream)))))
            break;
        rc = MOEQ_CU(moeq_k_rmsnorm_bf16(r, w2, m, H, eps, (uint16_t *)g->h.ptr + (size_t)c0 * H,
                                         g->cu.stream));
    }
    return rc;
}

moeq_code gpu_mtp_input(gpu_layer *L, const moeq_mtp *mtp, const moeq_mtp_weights *w,
                        const float *final_norm, const int32_t *tokens, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_model *view = &mtp->view;
    const int H = g->cfg->hidden_size, S = g->S, T = g->T, T1 = T - 1, n1 = S * T1;
    const size_t row = sizeof(float) * (size_t)H;
    const int quantize_fc = !view->arch.mtp_keep_fc;
    moeq_cuda_buf fn = {0}, hnorm = {0}, enorm = {0}, in = {0}, wfc = {0};
    moeq_cuda_gptq_prepared prep = {0};
    float *emb = malloc(row * (size_t)n1);
    moeq_code rc = MOEQ_OK;
    if (!emb) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the MTP layer's embeddings");
        goto done;
    }
    /* The embedding of token t + 1 at row (s, t); vLLM's DeepSeek-V3 and
     * GLM-4.5 drafters zero it at position 0 (mtp.h). */
    for (int s = 0; s < S && !rc; s++) {
        rc = moeq_model_embed(view, tokens + (size_t)s * T + 1, (size_t)T1, emb + (size_t)s * T1 * H,
                              err);
        if (!rc && view->arch.mtp_zero_first_embedding)
            memset(emb + (size_t)s * T1 * H, 0, row);
    }
    /* The last layer's output at rows (s, t < T - 1), packed: on the device
     * into x1 (free between layers), in host mode within xh (each window
     * moves down; the last stage has synchronised). */
    if (!rc && !g->resid_host)
        rc = MOEQ_CU(cudaMemcpy2DAsync(g->x1.ptr, (size_t)T1 * row, g->x.ptr, (size_t)T * row,
                                       (size_t)T1 * row, (size_t)S, cudaMemcpyDeviceToDevice,
                                       g->cu.stream));
    for (int s = 1; !rc && g->resid_host && s < S; s++)
        memmove(g->xh + (size_t)s * T1 * H, g->xh + (size_t)s * T * H, row * (size_t)T1);
    /* fc's input [n1, 2H] bf16 (4H bytes a row): the hidden half as the
     * drafter sees it (the model's final norm, then hnorm), then the
     * embedding half (enorm), each normed into h and copied beside the other. */
    if (rc || (rc = gpu_upload_f32(g, final_norm, (size_t)H, "final norm", &fn, err)) ||
        (rc = gpu_upload_f32(g, w->norm_hidden, (size_t)H, "MTP hidden norm", &hnorm, err)) ||
        (rc = gpu_upload_f32(g, w->norm_embedding, (size_t)H, "MTP embedding norm", &enorm,
                             err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &in, row * (size_t)n1, "MTP fc input", err)) ||
        (rc = norm_rows(g, g->resid_host ? NULL : g->x1.ptr, g->xh, n1, fn.ptr, hnorm.ptr, err)) ||
        (rc = MOEQ_CU(cudaMemcpy2DAsync((uint16_t *)in.ptr + H, 4 * (size_t)H, g->h.ptr,
                                        2 * (size_t)H, 2 * (size_t)H, (size_t)n1,
                                        cudaMemcpyDeviceToDevice, g->cu.stream))))
        goto done;
    if (!g->resid_host)
        rc = moeq_cuda_upload(&g->cu, g->x1.ptr, emb, row * (size_t)n1, err);
    if (rc ||
        (rc = norm_rows(g, g->resid_host ? NULL : g->x1.ptr, emb, n1, NULL, enorm.ptr, err)) ||
        (rc = MOEQ_CU(cudaMemcpy2DAsync(in.ptr, 4 * (size_t)H, g->h.ptr, 2 * (size_t)H,
                                        2 * (size_t)H, (size_t)n1, cudaMemcpyDeviceToDevice,
                                        g->cu.stream))) ||
        (rc = gpu_sync_time(L, &L->res->seconds_capture, err)))
        goto done;
    /* fc against the Hessian of its input, or as it is. */
    if (quantize_fc) {
        const piece fc = {MOEQ_T_MTP_FC, -1, w->fc, H, n1, 0, NULL};
        if ((gpu_uses_hessians(L) &&
             (rc = gpu_hessian_prepare(L, in.ptr, n1, 2 * H, NULL, 2.0f / (float)n1, "MTP fc",
                                       &prep, err))) ||
            (rc = gpu_quantize_stack(L, gpu_uses_hessians(L) ? &prep : NULL, NULL, &fc, 1, 2 * H,
                                     &wfc, err)) ||
            (rc = gpu_sync_time(L, &L->res->seconds_solve, err)))
            goto done;
    } else if ((rc = gpu_upload_bf16(g, w->fc, (size_t)H * 2 * H, "MTP fc", &wfc, err))) {
        goto done;
    }
    /* x = fc(input), the MTP layer's input, where the residual stream lives. */
    for (int c0 = 0; c0 < n1 && !rc; c0 += g->chunk) {
        const int m = n1 - c0 < g->chunk ? n1 - c0 : g->chunk;
        float *y = g->resid_host ? g->stage.ptr : (float *)g->x.ptr + (size_t)c0 * H;
        if ((rc = gpu_gemm_nt(g, (const uint16_t *)in.ptr + (size_t)c0 * 2 * H, 2 * H, wfc.ptr,
                              2 * H, y, H, 0, m, H, 2 * H, 1.0f, 0.0f, err)))
            break;
        if (g->resid_host)
            rc = moeq_cuda_download(&g->cu, g->xh + (size_t)c0 * H, y, row * (size_t)m, err);
    }
    if (!rc)
        rc = gpu_sync_time(L, &L->res->seconds_forward, err);
done:
    moeq_cuda_gptq_prepared_free(&g->cu, &prep);
    moeq_cuda_buf *bufs[] = {&fn, &hnorm, &enorm, &in, &wfc};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moeq_cuda_free(&g->cu, bufs[i]);
    free(emb);
    return rc;
}
