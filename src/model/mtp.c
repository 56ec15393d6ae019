/* mtp.c: the multi-token-prediction block (see mtp.h). The decoder layer is
 * the model's own (forward.c), loaded through a view of the model whose layer
 * tensor names carry the architecture's "mtp_layer_prefix". */
#include "model/mtp.h"

#include "backend/cpu/cpu_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moeq_mtp_present(const moeq_model *model)
{
    char name[512];
    if (!model->arch.mtp_prefix_from ||
        moeq_arch_tensor_name(&model->arch, MOEQ_T_MTP_FC, -1, -1, name, sizeof name))
        return 0;
    if (st_checkpoint_find(&model->ckpt, name))
        return 1;
    /* A quantized checkpoint stores fc as GPTQ tensors (model.c). */
    size_t len = strlen(name);
    if (!model->cfg.quant_bits || len < 6 || strcmp(name + len - 6, "weight"))
        return 0;
    snprintf(name + len - 6, sizeof name - (len - 6), "qweight");
    return st_checkpoint_find(&model->ckpt, name) != NULL;
}

moeq_code moeq_mtp_open(const moeq_model *model, moeq_mtp *mtp, moeq_error *err)
{
    memset(mtp, 0, sizeof *mtp);
    const moeq_arch *a = &model->arch;
    if (!moeq_mtp_present(model))
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "%s: no MTP block (architecture %s names none, or tensors.mtp_fc is "
                         "missing from the checkpoint)",
                         model->dir, a->name);
    /* vLLM's drafter cycles through mtp_num_hidden_layers layers and may
     * carry its own embedding; moeq knows the released form: one layer on
     * the model's embedding. */
    if (model->cfg.mtp_num_layers != 1 || model->cfg.mtp_dedicated_embedding)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "%s: an MTP block of %d layers%s is not supported (one layer on the "
                         "model's embedding is)",
                         model->dir, model->cfg.mtp_num_layers,
                         model->cfg.mtp_dedicated_embedding ? " with its own embedding" : "");
    mtp->view = *model;
    size_t from = strlen(a->mtp_prefix_from);
    for (int r = 0; r < MOEQ_T_COUNT; r++) {
        const char *t = a->tensors[r];
        if (!t || strncmp(t, a->mtp_prefix_from, from))
            continue;
        size_t n = strlen(a->mtp_prefix_to) + strlen(t + from) + 1;
        if (!(mtp->renamed[r] = malloc(n))) {
            moeq_mtp_close(mtp);
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        }
        snprintf(mtp->renamed[r], n, "%s%s", a->mtp_prefix_to, t + from);
        mtp->view.arch.tensors[r] = mtp->renamed[r];
    }
    /* One layer: full attention; MoE like the model's sparse layers. */
    mtp->is_moe = model->cfg.num_experts > 0;
    mtp->view.cfg.num_layers = 1;
    mtp->view.cfg.layer_is_linear = &mtp->is_linear;
    mtp->view.cfg.layer_is_moe = &mtp->is_moe;
    return MOEQ_OK;
}

void moeq_mtp_close(moeq_mtp *mtp)
{
    for (int r = 0; r < MOEQ_T_COUNT; r++)
        free(mtp->renamed[r]);
    memset(mtp, 0, sizeof *mtp);
}

moeq_code moeq_mtp_weights_load(const moeq_mtp *mtp, moeq_mtp_weights *w, moeq_error *err)
{
    memset(w, 0, sizeof *w);
    const moeq_model *m = &mtp->view;
    const int64_t H = m->cfg.hidden_size;
    moeq_code rc;
    if ((rc = moeq_model_load_f32(m, MOEQ_T_MTP_FC, -1, -1, H, 2 * H, &w->fc, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_MTP_NORM_EMBEDDING, -1, -1, H, 0, &w->norm_embedding,
                                  err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_MTP_NORM_HIDDEN, -1, -1, H, 0, &w->norm_hidden,
                                  err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_MTP_NORM, -1, -1, H, 0, &w->norm, err)) ||
        (rc = moeq_layer_weights_load(m, 0, &w->layer, err))) {
        moeq_mtp_weights_free(w);
        return moeq_wrap(err, "MTP block: ");
    }
    moeq_model_center_norm(m, w->norm_embedding, H);
    moeq_model_center_norm(m, w->norm_hidden, H);
    moeq_model_center_norm(m, w->norm, H);
    return MOEQ_OK;
}

void moeq_mtp_weights_free(moeq_mtp_weights *w)
{
    free(w->fc);
    free(w->norm_embedding);
    free(w->norm_hidden);
    free(w->norm);
    moeq_layer_weights_free(&w->layer);
    memset(w, 0, sizeof *w);
}

moeq_code moeq_mtp_input(const moeq_mtp *mtp, const moeq_mtp_weights *w, const int32_t *tokens,
                         const float *hidden, int S, int T, float *fc_in, moeq_error *err)
{
    const moeq_config *c = &mtp->view.cfg;
    const int H = c->hidden_size;
    float *e = malloc(sizeof(float) * (size_t)H);
    if (!e)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the MTP input");
    moeq_code rc = MOEQ_OK;
    for (int s = 0; s < S && !rc; s++)
        for (int t = 0; t + 1 < T && !rc; t++) {
            /* [embedding; hidden], the order vLLM concatenates them in. */
            float *row = fc_in + ((size_t)s * (T - 1) + t) * 2 * H;
            if ((rc = moeq_model_embed(&mtp->view, tokens + (size_t)s * T + t + 1, 1, e, err)))
                break;
            /* DeepSeek-V3's and GLM-4.5's drafter zeroes the embedding at
             * position 0 (vLLM deepseek_mtp.py and glm4_moe_mtp.py,
             * forward: inputs_embeds[positions == 0] = 0), whose norm is 0. */
            if (t == 0 && mtp->view.arch.mtp_zero_first_embedding)
                memset(row, 0, sizeof(float) * (size_t)H);
            else
                cpu_rmsnorm(e, w->norm_embedding, 1, H, c->rms_norm_eps, row);
            cpu_rmsnorm(hidden + ((size_t)s * T + t) * H, w->norm_hidden, 1, H, c->rms_norm_eps,
                        row + H);
        }
    free(e);
    return rc;
}

moeq_code moeq_mtp_forward(const moeq_mtp *mtp, const moeq_mtp_weights *w,
                           const moeq_rope_cache *rope, const float *fc_in, int S, int T1,
                           float *out, moeq_error *err)
{
    const moeq_config *c = &mtp->view.cfg;
    const int H = c->hidden_size, n = S * T1;
    float *x = malloc(sizeof(float) * (size_t)n * H), *y = malloc(sizeof(float) * (size_t)n * H);
    moeq_code rc = MOEQ_OK;
    if (!x || !y) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the MTP block of %d tokens", n);
    } else {
        cpu_linear(fc_in, n, 2 * H, w->fc, NULL, H, x);
        if (!(rc = moeq_layer_forward(c, &w->layer, rope, x, S, T1, y, NULL, err)))
            cpu_rmsnorm(y, w->norm, n, H, c->rms_norm_eps, out);
    }
    free(x);
    free(y);
    return rc;
}
