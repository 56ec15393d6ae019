/* weights.c: decodes one decoder layer's weights (or the embedding and the
 * output head) to fp32, checking every shape against config.json. */
#include "model/weights.h"

#include "common/dtype.h"
#include "common/parallel.h"
#include "model/fused_experts.h"

#include <stdlib.h>
#include <string.h>

/* One MLP weight: its bf16 copy (keep_bf16, when stored so) or fp32. */
static moeq_code load_weight(const moeq_model *m, moeq_tensor_role role, int layer, int expert,
                             int64_t rows, int64_t cols, int keep_bf16, float **f32,
                             uint16_t **bf16, moeq_error *err)
{
    moeq_code rc;
    if (keep_bf16 &&
        ((rc = moeq_model_load_bf16(m, role, layer, expert, rows, cols, bf16, err)) || *bf16))
        return rc;
    return moeq_model_load_f32(m, role, layer, expert, rows, cols, f32, err);
}

static moeq_code load_mlp(const moeq_model *m, moeq_tensor_role gate, moeq_tensor_role up,
                          moeq_tensor_role down, int layer, int expert, int inter, int keep_bf16,
                          moeq_mlp_weights *w, moeq_error *err)
{
    int hidden = m->cfg.hidden_size;
    moeq_code rc;
    w->intermediate = inter;
    if ((rc = load_weight(m, gate, layer, expert, inter, hidden, keep_bf16, &w->gate, &w->gate16,
                          err)) ||
        (rc = load_weight(m, up, layer, expert, inter, hidden, keep_bf16, &w->up, &w->up16,
                          err)) ||
        (rc = load_weight(m, down, layer, expert, hidden, inter, keep_bf16, &w->down, &w->down16,
                          err)))
        return rc;
    if (m->cfg.mlp_bias &&
        ((rc = moeq_model_load_bias_f32(m, gate, layer, expert, inter, &w->gate_bias, err)) ||
         (rc = moeq_model_load_bias_f32(m, up, layer, expert, inter, &w->up_bias, err)) ||
         (rc = moeq_model_load_bias_f32(m, down, layer, expert, hidden, &w->down_bias, err))))
        return rc;
    return MOEQ_OK;
}

static void free_mlp(moeq_mlp_weights *w)
{
    free(w->gate);
    free(w->up);
    free(w->down);
    free(w->gate16);
    free(w->up16);
    free(w->down16);
    free(w->gate_bias);
    free(w->up_bias);
    free(w->down_bias);
}

/* Zero-centered RMSNorm weights are stored as w and applied as (1 + w)
 * (Qwen3NextRMSNorm): the sum is formed once here, in fp32 as transformers
 * does, so every norm of the forward stays w * x / rms(x). */
void moeq_model_center_norm(const moeq_model *m, float *w, int64_t n)
{
    if (m->arch.norm == MOEQ_NORM_RMS_ZERO_CENTERED && w)
        for (int64_t i = 0; i < n; i++)
            w[i] = 1.0f + w[i];
}

/* The Gated DeltaNet weights of a linear layer (deltanet.h). */
static moeq_code load_linear_attention(const moeq_model *m, int l, moeq_layer_weights *lw,
                                       moeq_error *err)
{
    const moeq_config *c = &m->cfg;
    const int64_t h = c->hidden_size, hv = c->la_num_v_heads;
    const int64_t kd = (int64_t)c->la_num_k_heads * c->la_k_head_dim, vd = hv * c->la_v_head_dim;
    moeq_deltanet_weights *w = &lw->la;
    moeq_code rc;
    if (m->arch.tensors[MOEQ_T_LA_IN_QKVZ]) {
        if ((rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_QKVZ, l, -1, 2 * kd + 2 * vd, h,
                                      &w->in_qkvz, err)) ||
            (rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_BA, l, -1, 2 * hv, h, &w->in_ba, err)))
            return rc;
    } else if ((rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_QKV, l, -1, 2 * kd + vd, h, &w->in_qkv,
                                         err)) ||
               (rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_Z, l, -1, vd, h, &w->in_z, err)) ||
               (rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_B, l, -1, hv, h, &w->in_b, err)) ||
               (rc = moeq_model_load_f32(m, MOEQ_T_LA_IN_A, l, -1, hv, h, &w->in_a, err))) {
        return rc;
    }
    /* conv1d.weight is [channels, 1, kernel] (nn.Conv1d, groups = channels). */
    const st_tensor *conv = moeq_model_find(m, MOEQ_T_LA_CONV, l, -1, err);
    if (!conv)
        return err ? err->code : MOEQ_ERR_NOT_FOUND;
    int64_t channels = 2 * kd + vd, kernel = c->la_conv_kernel;
    if (conv->ndim != 3 || conv->shape[0] != channels || conv->shape[1] != 1 ||
        conv->shape[2] != kernel)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: tensor %s is not [%lld, 1, %lld] (channels, 1, "
                         "linear_conv_kernel_dim) as config.json implies",
                         m->dir, conv->name, (long long)channels, (long long)kernel);
    if (!(w->conv = malloc(sizeof(float) * (size_t)(channels * kernel))))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory for %s", m->dir, conv->name);
    if ((rc = moeq_to_f32(conv->dtype, conv->data, (size_t)(channels * kernel), w->conv, err)))
        return moeq_wrap(err, "%s: tensor %s: ", m->dir, conv->name);
    if ((rc = moeq_model_load_f32(m, MOEQ_T_LA_DT_BIAS, l, -1, hv, 0, &w->dt_bias, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_LA_A_LOG, l, -1, hv, 0, &w->a_log, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_LA_NORM, l, -1, c->la_v_head_dim, 0, &w->norm,
                                  err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_LA_OUT_PROJ, l, -1, h, vd, &w->out, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_ATTN_NORM, l, -1, h, 0, &lw->attn_norm, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_MLP_NORM, l, -1, h, 0, &lw->mlp_norm, err)))
        return rc;
    moeq_model_center_norm(m, lw->attn_norm, h);
    moeq_model_center_norm(m, lw->mlp_norm, h);
    return MOEQ_OK;
}

/* Multi-head latent attention's weights (DeepseekV3Attention). */
static moeq_code load_mla(const moeq_model *m, int l, moeq_layer_weights *lw, moeq_error *err)
{
    const moeq_config *c = &m->cfg;
    int64_t h = c->hidden_size, heads = c->num_heads;
    int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    int64_t kv_a = c->kv_lora_rank + c->qk_rope_head_dim;
    moeq_code rc;
    if (c->q_lora_rank == 0) {
        if ((rc = moeq_model_load_f32(m, MOEQ_T_Q_PROJ, l, -1, heads * qk, h, &lw->q, err)))
            return rc;
    } else if ((rc = moeq_model_load_f32(m, MOEQ_T_Q_A_PROJ, l, -1, c->q_lora_rank, h, &lw->q_a,
                                         err)) ||
               (rc = moeq_model_load_f32(m, MOEQ_T_Q_A_NORM, l, -1, c->q_lora_rank, 0,
                                         &lw->q_a_norm, err)) ||
               (rc = moeq_model_load_f32(m, MOEQ_T_Q_B_PROJ, l, -1, heads * qk, c->q_lora_rank,
                                         &lw->q_b, err)) ||
               (c->qkv_bias && (rc = moeq_model_load_bias_f32(m, MOEQ_T_Q_A_PROJ, l, -1,
                                                              c->q_lora_rank, &lw->q_a_bias,
                                                              err)))) {
        return rc;
    }
    if ((rc = moeq_model_load_f32(m, MOEQ_T_KV_A_PROJ, l, -1, kv_a, h, &lw->kv_a, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_KV_A_NORM, l, -1, c->kv_lora_rank, 0, &lw->kv_a_norm,
                                  err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_KV_B_PROJ, l, -1,
                                  heads * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                                  &lw->kv_b, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_O_PROJ, l, -1, h, heads * c->v_head_dim, &lw->o,
                                  err)))
        return rc;
    if (c->qkv_bias &&
        (rc = moeq_model_load_bias_f32(m, MOEQ_T_KV_A_PROJ, l, -1, kv_a, &lw->kv_a_bias, err)))
        return rc;
    if (c->o_bias && (rc = moeq_model_load_bias_f32(m, MOEQ_T_O_PROJ, l, -1, h, &lw->o_bias, err)))
        return rc;
    moeq_model_center_norm(m, lw->q_a_norm, c->q_lora_rank);
    moeq_model_center_norm(m, lw->kv_a_norm, c->kv_lora_rank);
    return MOEQ_OK;
}

static moeq_code load_attention(const moeq_model *m, int l, moeq_layer_weights *lw,
                                moeq_error *err)
{
    const moeq_config *c = &m->cfg;
    int64_t h = c->hidden_size, qd = (int64_t)c->num_heads * c->head_dim,
            kvd = (int64_t)c->num_kv_heads * c->head_dim;
    /* With the output gate, q_proj yields [query (D) | gate (D)] per head. */
    int64_t q_rows = c->attn_output_gate ? 2 * qd : qd;
    moeq_code rc;
    if ((rc = moeq_model_load_f32(m, MOEQ_T_ATTN_NORM, l, -1, h, 0, &lw->attn_norm, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_MLP_NORM, l, -1, h, 0, &lw->mlp_norm, err)))
        return rc;
    moeq_model_center_norm(m, lw->attn_norm, h);
    moeq_model_center_norm(m, lw->mlp_norm, h);
    if (c->attention == MOEQ_ATTENTION_MLA)
        return load_mla(m, l, lw, err);
    if ((rc = moeq_model_load_f32(m, MOEQ_T_Q_PROJ, l, -1, q_rows, h, &lw->q, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_K_PROJ, l, -1, kvd, h, &lw->k, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_V_PROJ, l, -1, kvd, h, &lw->v, err)) ||
        (rc = moeq_model_load_f32(m, MOEQ_T_O_PROJ, l, -1, h, qd, &lw->o, err)))
        return rc;
    if (c->qkv_bias &&
        ((rc = moeq_model_load_bias_f32(m, MOEQ_T_Q_PROJ, l, -1, qd, &lw->q_bias, err)) ||
         (rc = moeq_model_load_bias_f32(m, MOEQ_T_K_PROJ, l, -1, kvd, &lw->k_bias, err)) ||
         (rc = moeq_model_load_bias_f32(m, MOEQ_T_V_PROJ, l, -1, kvd, &lw->v_bias, err))))
        return rc;
    if (c->o_bias && (rc = moeq_model_load_bias_f32(m, MOEQ_T_O_PROJ, l, -1, h, &lw->o_bias, err)))
        return rc;
    if (m->arch.tensors[MOEQ_T_ATTN_SINKS] &&
        (rc = moeq_model_load_f32(m, MOEQ_T_ATTN_SINKS, l, -1, c->num_heads, 0, &lw->sinks, err)))
        return rc;
    /* Per-head norms are [head_dim]; MiniMax-M2's span the projection. */
    int64_t qn = c->qk_norm_full ? qd : c->head_dim, kn = c->qk_norm_full ? kvd : c->head_dim;
    if (c->qk_norm &&
        ((rc = moeq_model_load_f32(m, MOEQ_T_Q_NORM, l, -1, qn, 0, &lw->q_norm, err)) ||
         (rc = moeq_model_load_f32(m, MOEQ_T_K_NORM, l, -1, kn, 0, &lw->k_norm, err))))
        return rc;
    moeq_model_center_norm(m, lw->q_norm, qn);
    moeq_model_center_norm(m, lw->k_norm, kn);
    return MOEQ_OK;
}

typedef struct expert_load {
    const moeq_model *m;
    int layer;
    int keep_bf16;
    moeq_layer_weights *lw;
    const st_tensor *fused_gate_up, *fused_down; /* NULL: per-expert tensors */
} expert_load;

/* The fused expert tensors of layer l when the architecture names them and
 * the checkpoint has them (Qwen3.5 as released, transformers 5 modeling:
 * gate_up [E, 2I, H], the first I rows of each expert its gate; down
 * [E, H, I]); NULLs otherwise (per-expert tensors, or a quantized output
 * that stores them per expert). */
static moeq_code find_fused_experts(const moeq_model *m, int l, const st_tensor **gate_up,
                                    const st_tensor **down, moeq_error *err)
{
    const moeq_config *c = &m->cfg;
    char name[512];
    *gate_up = *down = NULL;
    if (moeq_arch_tensor_name(&m->arch, MOEQ_T_EXPERTS_GATE_UP, l, -1, name, sizeof name) ||
        !st_checkpoint_find(&m->ckpt, name))
        return MOEQ_OK;
    if (!(*gate_up = moeq_model_find(m, MOEQ_T_EXPERTS_GATE_UP, l, -1, err)) ||
        !(*down = moeq_model_find(m, MOEQ_T_EXPERTS_DOWN, l, -1, err)))
        return err ? err->code : MOEQ_ERR_NOT_FOUND;
    int64_t E = c->num_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    const st_tensor *t[2] = {*gate_up, *down};
    int64_t want[2][3] = {{E, 2 * I, H}, {E, H, I}};
    for (int i = 0; i < 2; i++)
        if (t[i]->ndim != 3 || t[i]->shape[0] != want[i][0] || t[i]->shape[1] != want[i][1] ||
            t[i]->shape[2] != want[i][2])
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s: fused expert tensor %s is not [%lld, %lld, %lld] (experts, "
                             "out, in) as config.json implies",
                             m->dir, t[i]->name, (long long)want[i][0], (long long)want[i][1],
                             (long long)want[i][2]);
    return MOEQ_OK;
}

/* Decodes rows [row0, row0 + rows) of 3-D tensor t's slice `e` into a new
 * buffer. */
static moeq_code decode_slice(const moeq_model *m, const st_tensor *t, int e, int64_t row0,
                              int64_t rows, float **out, moeq_error *err)
{
    size_t cols = (size_t)t->shape[2], elem = st_dtype_size(t->dtype);
    size_t first = ((size_t)e * (size_t)t->shape[1] + (size_t)row0) * cols;
    if (!(*out = malloc(sizeof(float) * (size_t)rows * cols)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory decoding %s", m->dir, t->name);
    moeq_code rc = moeq_to_f32(t->dtype, (const char *)t->data + first * elem,
                               (size_t)rows * cols, *out, err);
    return rc ? moeq_wrap(err, "%s: tensor %s: ", m->dir, t->name) : MOEQ_OK;
}

static moeq_code load_expert(void *ctx, int e, moeq_error *err)
{
    const expert_load *x = ctx;
    int64_t inter = x->m->cfg.moe_intermediate_size;
    if (moeq_experts_fused(x->m))
        return moeq_fused_expert_load(x->m, x->layer, e, &x->lw->experts[e], err);
    if (!x->fused_gate_up)
        return load_mlp(x->m, MOEQ_T_EXPERT_GATE_PROJ, MOEQ_T_EXPERT_UP_PROJ,
                        MOEQ_T_EXPERT_DOWN_PROJ, x->layer, e, (int)inter, x->keep_bf16,
                        &x->lw->experts[e], err);
    moeq_mlp_weights *w = &x->lw->experts[e];
    w->intermediate = (int)inter;
    moeq_code rc;
    if ((rc = decode_slice(x->m, x->fused_gate_up, e, 0, inter, &w->gate, err)) ||
        (rc = decode_slice(x->m, x->fused_gate_up, e, inter, inter, &w->up, err)) ||
        (rc = decode_slice(x->m, x->fused_down, e, 0, x->m->cfg.hidden_size, &w->down, err)))
        return rc;
    return MOEQ_OK;
}

static moeq_code load_moe(const moeq_model *m, int l, int keep_bf16, moeq_layer_weights *lw,
                          moeq_error *err)
{
    const moeq_config *c = &m->cfg;
    moeq_code rc;
    if ((rc = moeq_model_load_f32(m, MOEQ_T_ROUTER, l, -1, c->num_experts, c->hidden_size,
                                  &lw->router, err)) ||
        (c->router_bias && (rc = moeq_model_load_bias_f32(m, MOEQ_T_ROUTER, l, -1, c->num_experts,
                                                          &lw->router_bias, err))))
        return rc;
    if (c->router == MOEQ_ROUTER_SIGMOID_TOPK &&
        (rc = moeq_model_load_f32(m, MOEQ_T_ROUTER_CORRECTION, l, -1, c->num_experts, 0,
                                  &lw->router_correction_bias, err)))
        return rc;
    lw->experts = calloc((size_t)c->num_experts, sizeof *lw->experts);
    if (!lw->experts)
        return moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for %d experts", l,
                         c->num_experts);
    lw->n_experts = c->num_experts;
    /* Experts decode in parallel: each is its own tensors and buffers. */
    expert_load x = {m, l, keep_bf16, lw, NULL, NULL};
    /* gpt-oss's and Llama-4's fused experts are read by fused_experts.c. */
    if ((!moeq_experts_fused(m) &&
         (rc = find_fused_experts(m, l, &x.fused_gate_up, &x.fused_down, err))) ||
        (rc = moeq_parallel_for(c->num_experts, 0, load_expert, &x, err)))
        return rc;
    if (m->arch.shared_expert != MOEQ_SHARED_EXPERT_NONE && c->shared_expert_intermediate_size) {
        lw->has_shared = 1;
        if ((rc = load_mlp(m, MOEQ_T_SHARED_GATE_PROJ, MOEQ_T_SHARED_UP_PROJ,
                           MOEQ_T_SHARED_DOWN_PROJ, l, -1, c->shared_expert_intermediate_size,
                           keep_bf16, &lw->shared, err)))
            return rc;
        if (m->arch.shared_expert == MOEQ_SHARED_EXPERT_SIGMOID_GATED &&
            (rc = moeq_model_load_f32(m, MOEQ_T_SHARED_EXPERT_GATE, l, -1, 1, c->hidden_size,
                                      &lw->shared_gate, err)))
            return rc;
    }
    return MOEQ_OK;
}

moeq_code moeq_layer_weights_load(const moeq_model *model, int layer, moeq_layer_weights *lw,
                                  moeq_error *err)
{
    return moeq_layer_weights_load_flags(model, layer, 0, lw, err);
}

moeq_code moeq_layer_weights_load_flags(const moeq_model *model, int layer, unsigned flags,
                                        moeq_layer_weights *lw, moeq_error *err)
{
    const int keep_bf16 = (flags & MOEQ_WEIGHTS_KEEP_BF16) != 0;
    memset(lw, 0, sizeof *lw);
    const moeq_config *c = &model->cfg;
    if (layer < 0 || layer >= c->num_layers)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "layer %d out of range [0, %d)", layer,
                         c->num_layers);
    lw->layer = layer;
    lw->is_moe = c->layer_is_moe[layer];
    lw->is_linear = c->layer_is_linear[layer];
    moeq_code rc = lw->is_linear ? load_linear_attention(model, layer, lw, err)
                                 : load_attention(model, layer, lw, err);
    if (!rc)
        rc = lw->is_moe ? load_moe(model, layer, keep_bf16, lw, err)
                        : load_mlp(model, MOEQ_T_GATE_PROJ, MOEQ_T_UP_PROJ, MOEQ_T_DOWN_PROJ,
                                   layer, -1, c->intermediate_size, keep_bf16, &lw->dense, err);
    if (rc)
        moeq_layer_weights_free(lw);
    return rc;
}

void moeq_layer_weights_free(moeq_layer_weights *lw)
{
    float *singles[] = {lw->attn_norm, lw->q,      lw->k,      lw->v,      lw->o,
                        lw->q_bias,    lw->k_bias, lw->v_bias, lw->o_bias, lw->q_norm,
                        lw->k_norm,    lw->mlp_norm, lw->router, lw->shared_gate,
                        lw->sinks,     lw->router_bias, lw->router_correction_bias,
                        lw->q_a,       lw->q_a_bias, lw->q_a_norm, lw->q_b,
                        lw->kv_a,      lw->kv_a_bias, lw->kv_a_norm, lw->kv_b};
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++)
        free(singles[i]);
    free_mlp(&lw->dense);
    for (int e = 0; e < lw->n_experts; e++)
        free_mlp(&lw->experts[e]);
    free(lw->experts);
    free_mlp(&lw->shared);
    float *la[] = {lw->la.in_qkv, lw->la.in_z,    lw->la.in_b,  lw->la.in_a,
                   lw->la.in_qkvz, lw->la.in_ba,  lw->la.conv,  lw->la.dt_bias,
                   lw->la.a_log,  lw->la.norm,    lw->la.out};
    for (size_t i = 0; i < sizeof la / sizeof la[0]; i++)
        free(la[i]);
    memset(lw, 0, sizeof *lw);
}

moeq_code moeq_model_embed(const moeq_model *model, const int32_t *tokens, size_t n, float *out,
                           moeq_error *err)
{
    const moeq_config *c = &model->cfg;
    const st_tensor *t = moeq_model_find(model, MOEQ_T_EMBED, -1, -1, err);
    if (!t)
        return err ? err->code : MOEQ_ERR_NOT_FOUND;
    if (t->ndim != 2 || t->shape[0] < c->vocab_size || t->shape[1] != c->hidden_size)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: tensor %s has not the shape [%d, %d] config.json implies",
                         model->dir, t->name, c->vocab_size, c->hidden_size);
    if (t->dtype == ST_F8_E4M3 && c->fp8_block_rows)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "%s: tensor %s: a block-scaled FP8 embedding is not supported",
                         model->dir, t->name);
    size_t row_bytes = (size_t)c->hidden_size * st_dtype_size(t->dtype);
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "token id %d at position %zu is outside the vocabulary [0, %d)",
                             tokens[i], i, c->vocab_size);
        const char *row = (const char *)t->data + (size_t)tokens[i] * row_bytes;
        moeq_code rc = moeq_to_f32(t->dtype, row, (size_t)c->hidden_size,
                                   out + i * (size_t)c->hidden_size, err);
        if (rc)
            return moeq_wrap(err, "%s: tensor %s: ", model->dir, t->name);
    }
    return MOEQ_OK;
}

moeq_code moeq_head_weights_load(const moeq_model *model, moeq_head_weights *hw,
                                 moeq_error *err)
{
    const moeq_config *c = &model->cfg;
    memset(hw, 0, sizeof *hw);
    moeq_tensor_role head = c->tie_word_embeddings ? MOEQ_T_EMBED : MOEQ_T_LM_HEAD;
    moeq_code rc;
    if ((rc = moeq_model_load_f32(model, MOEQ_T_FINAL_NORM, -1, -1, c->hidden_size, 0,
                                  &hw->final_norm, err)) ||
        (rc = moeq_model_load_f32(model, head, -1, -1, c->vocab_size, c->hidden_size,
                                  &hw->lm_head, err)))
        moeq_head_weights_free(hw);
    else
        moeq_model_center_norm(model, hw->final_norm, c->hidden_size);
    return rc;
}

void moeq_head_weights_free(moeq_head_weights *hw)
{
    free(hw->final_norm);
    free(hw->lm_head);
    memset(hw, 0, sizeof *hw);
}
