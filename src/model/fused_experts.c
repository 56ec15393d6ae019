/* fused_experts.c: per-expert weights out of fused expert tensors (see
 * fused_experts.h). */
#include "model/fused_experts.h"

#include "common/dtype.h"
#include "model/mxfp4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The checkpoint tensor named by role's template at layer l plus suffix
 * ("", "_bias"); its name goes to name. NULL when absent. */
static const st_tensor *fused_find(const moeq_model *m, moeq_tensor_role role, int layer,
                                   const char *suffix, char *name, size_t bytes)
{
    char base[512];
    if (moeq_arch_tensor_name(&m->arch, role, layer, -1, base, sizeof base))
        return NULL;
    snprintf(name, bytes, "%s%s", base, suffix);
    return st_checkpoint_find(&m->ckpt, name);
}

/* t must have shape[ndim] and, when dtype is not ST_DTYPE_COUNT, that
 * dtype (else a float dtype). */
static moeq_code check_shape(const moeq_model *m, const st_tensor *t, int ndim,
                             const int64_t *shape, st_dtype dtype, moeq_error *err)
{
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[96] = "", want[96] = "";
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                     (long long)shape[i]);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: tensor %s has shape [%s], expected [%s] from config.json", m->dir,
                         t->name, got, want);
    }
    if (dtype != ST_DTYPE_COUNT && t->dtype != dtype)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "%s: tensor %s is %s, expected %s", m->dir,
                         t->name, st_dtype_name(t->dtype), st_dtype_name(dtype));
    if (dtype == ST_DTYPE_COUNT && t->dtype != ST_F32 && t->dtype != ST_BF16 &&
        t->dtype != ST_F16)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "%s: tensor %s is %s; fused experts are read in F32, BF16 or F16",
                         m->dir, t->name, st_dtype_name(t->dtype));
    return MOEQ_OK;
}

/* The fused tensor of role plus suffix, present and of shape
 * [E, dims[0], ...] (ndim dims) and of dtype (ST_DTYPE_COUNT: a float). */
static moeq_code fused_tensor_typed(const moeq_model *m, moeq_tensor_role role, int layer,
                                    const char *suffix, int ndim, const int64_t *dims,
                                    st_dtype dtype, const st_tensor **out, moeq_error *err)
{
    char name[600];
    const st_tensor *t = fused_find(m, role, layer, suffix, name, sizeof name);
    if (!t)
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "%s: tensor %s (%s%s of layer %d) is missing from the checkpoint",
                         m->dir, name, moeq_tensor_role_key(role), suffix, layer);
    int64_t shape[4] = {m->cfg.num_experts};
    for (int i = 0; i < ndim; i++)
        shape[i + 1] = dims[i];
    *out = t;
    return check_shape(m, t, ndim + 1, shape, dtype, err);
}

/* The float fused tensor of role, of shape [E, d1, d2] (d2 == 0: [E, d1]). */
static moeq_code fused_tensor(const moeq_model *m, moeq_tensor_role role, int layer,
                              const char *suffix, int64_t d1, int64_t d2, const st_tensor **out,
                              moeq_error *err)
{
    const int64_t dims[2] = {d1, d2};
    return fused_tensor_typed(m, role, layer, suffix, d2 ? 2 : 1, dims, ST_DTYPE_COUNT, out, err);
}

/* An MXFP4 source (model/mxfp4.h): <name>_blocks U8 [E, out, in/32, 16]
 * and <name>_scales U8 [E, out, in/32], already in [out, in] order. With
 * dst NULL only the tensors are checked. */
static moeq_code load_mxfp4_projection(const moeq_model *m, moeq_tensor_role role, int layer,
                                       int expert, int64_t out_dim, int64_t in_dim, float *dst,
                                       moeq_error *err)
{
    char name[600];
    fused_find(m, role, layer, "", name, sizeof name);
    if (in_dim % MOEQ_MXFP4_BLOCK)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: MXFP4 tensor %s_blocks: the input dimension %lld is not a "
                         "multiple of %d",
                         m->dir, name, (long long)in_dim, MOEQ_MXFP4_BLOCK);
    const int64_t groups = in_dim / MOEQ_MXFP4_BLOCK;
    const int64_t bdims[3] = {out_dim, groups, MOEQ_MXFP4_BLOCK / 2}, sdims[2] = {out_dim, groups};
    const st_tensor *b = NULL, *s = NULL;
    moeq_code rc;
    if ((rc = fused_tensor_typed(m, role, layer, "_blocks", 3, bdims, ST_U8, &b, err)) ||
        (rc = fused_tensor_typed(m, role, layer, "_scales", 2, sdims, ST_U8, &s, err)) || !dst)
        return rc;
    const uint8_t *blocks = (const uint8_t *)b->data +
                            (size_t)expert * (size_t)(out_dim * groups * MOEQ_MXFP4_BLOCK / 2);
    const uint8_t *scales = (const uint8_t *)s->data + (size_t)expert * (size_t)(out_dim * groups);
    char what[700];
    snprintf(what, sizeof what, "%s: tensor %s, expert %d", m->dir, s->name, expert);
    return moeq_mxfp4_dequant(blocks, scales, out_dim, groups, dst, what, err);
}

/* Whether role's projection is stored as MXFP4 blocks (an mxfp4 source
 * without the dense fused tensor). */
static int projection_is_mxfp4(const moeq_model *m, moeq_tensor_role role, int layer)
{
    char name[600];
    return m->cfg.mxfp4 && !fused_find(m, role, layer, "", name, sizeof name);
}

/* Expert e's [rows, cols] slice of the fused tensor t, decoded to fp32. */
static moeq_code decode_slice(const moeq_model *m, const st_tensor *t, int expert, int64_t rows,
                              int64_t cols, float *dst, moeq_error *err)
{
    size_t n = (size_t)rows * (size_t)cols;
    const char *src = (const char *)t->data + (size_t)expert * n * st_dtype_size(t->dtype);
    moeq_code rc = moeq_to_f32(t->dtype, src, n, dst, err);
    return rc ? moeq_wrap(err, "%s: tensor %s: ", m->dir, t->name) : MOEQ_OK;
}

/* Expert e's projection as nn.Linear stores it, dst[out, in]: the fused
 * tensor holds [in, out] (x @ W), so the slice is transposed. */
static moeq_code load_projection(const moeq_model *m, moeq_tensor_role role, int layer,
                                 int expert, int64_t out_dim, int64_t in_dim, float *dst,
                                 moeq_error *err)
{
    if (projection_is_mxfp4(m, role, layer))
        return load_mxfp4_projection(m, role, layer, expert, out_dim, in_dim, dst, err);
    const st_tensor *t;
    moeq_code rc = fused_tensor(m, role, layer, "", in_dim, out_dim, &t, err);
    float *tmp = rc ? NULL : malloc(sizeof(float) * (size_t)(in_dim * out_dim));
    if (!rc && !tmp)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading %s", m->dir, t->name);
    if (!rc && !(rc = decode_slice(m, t, expert, in_dim, out_dim, tmp, err)))
        for (int64_t i = 0; i < in_dim; i++)
            for (int64_t o = 0; o < out_dim; o++)
                dst[o * in_dim + i] = tmp[i * out_dim + o];
    free(tmp);
    return rc;
}

int moeq_experts_fused(const moeq_model *m)
{
    return m->arch.experts != MOEQ_EXPERTS_SEPARATE && !m->cfg.quant_bits;
}

moeq_code moeq_fused_expert_load(const moeq_model *m, int layer, int expert,
                                 moeq_mlp_weights *w, moeq_error *err)
{
    const int64_t H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size;
    w->intermediate = (int)I;
    w->gate = malloc(sizeof(float) * (size_t)(I * H));
    w->up = malloc(sizeof(float) * (size_t)(I * H));
    w->down = malloc(sizeof(float) * (size_t)(H * I));
    float *gu = malloc(sizeof(float) * (size_t)(2 * I * H));
    moeq_code rc = MOEQ_OK;
    if (!w->gate || !w->up || !w->down || !gu) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for expert %d", layer, expert);
        goto done;
    }
    /* gate_up [2I, H] after the transpose: gpt-oss interleaves (row 2i is
     * gate row i, 2i + 1 up row i), Llama-4 concatenates (gate rows 0..I-1,
     * then up; Llama4TextExperts: gate_up.chunk(2, dim=-1)). */
    const int concat = m->arch.experts == MOEQ_EXPERTS_FUSED_CONCAT;
    if ((rc = load_projection(m, MOEQ_T_EXPERTS_GATE_UP, layer, expert, 2 * I, H, gu, err)) ||
        (rc = load_projection(m, MOEQ_T_EXPERTS_DOWN, layer, expert, H, I, w->down, err)))
        goto done;
    for (int64_t i = 0; i < I; i++) {
        memcpy(w->gate + i * H, gu + (concat ? i : 2 * i) * H, sizeof(float) * (size_t)H);
        memcpy(w->up + i * H, gu + (concat ? I + i : 2 * i + 1) * H, sizeof(float) * (size_t)H);
    }
    if (!m->cfg.mlp_bias)
        goto done;
    const st_tensor *bgu, *bd;
    w->gate_bias = malloc(sizeof(float) * (size_t)I);
    w->up_bias = malloc(sizeof(float) * (size_t)I);
    w->down_bias = malloc(sizeof(float) * (size_t)H);
    if (!w->gate_bias || !w->up_bias || !w->down_bias) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory for expert %d", layer, expert);
        goto done;
    }
    if ((rc = fused_tensor(m, MOEQ_T_EXPERTS_GATE_UP, layer, "_bias", 2 * I, 0, &bgu, err)) ||
        (rc = fused_tensor(m, MOEQ_T_EXPERTS_DOWN, layer, "_bias", H, 0, &bd, err)) ||
        (rc = decode_slice(m, bgu, expert, 1, 2 * I, gu, err)) ||
        (rc = decode_slice(m, bd, expert, 1, H, w->down_bias, err)))
        goto done;
    for (int64_t i = 0; i < I; i++) {
        w->gate_bias[i] = gu[concat ? i : 2 * i];
        w->up_bias[i] = gu[concat ? I + i : 2 * i + 1];
    }
done:
    free(gu);
    return rc;
}

moeq_code moeq_fused_experts_check(const moeq_model *m, int layer, moeq_error *err)
{
    const int64_t H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size;
    const st_tensor *t;
    moeq_code rc;
    if (projection_is_mxfp4(m, MOEQ_T_EXPERTS_GATE_UP, layer))
        rc = load_mxfp4_projection(m, MOEQ_T_EXPERTS_GATE_UP, layer, 0, 2 * I, H, NULL, err);
    else
        rc = fused_tensor(m, MOEQ_T_EXPERTS_GATE_UP, layer, "", H, 2 * I, &t, err);
    if (rc)
        return rc;
    if (projection_is_mxfp4(m, MOEQ_T_EXPERTS_DOWN, layer))
        rc = load_mxfp4_projection(m, MOEQ_T_EXPERTS_DOWN, layer, 0, H, I, NULL, err);
    else
        rc = fused_tensor(m, MOEQ_T_EXPERTS_DOWN, layer, "", I, H, &t, err);
    if (rc)
        return rc;
    if (m->cfg.mlp_bias &&
        ((rc = fused_tensor(m, MOEQ_T_EXPERTS_GATE_UP, layer, "_bias", 2 * I, 0, &t, err)) ||
         (rc = fused_tensor(m, MOEQ_T_EXPERTS_DOWN, layer, "_bias", H, 0, &t, err))))
        return rc;
    return MOEQ_OK;
}

moeq_code moeq_fused_expert_bias_raw(const moeq_model *m, moeq_tensor_role role, int layer,
                                     int expert, void **out, st_dtype *dtype, int64_t *rows,
                                     moeq_error *err)
{
    const int64_t H = m->cfg.hidden_size, I = m->cfg.moe_intermediate_size;
    int down = role == MOEQ_T_EXPERT_DOWN_PROJ;
    const st_tensor *t;
    *out = NULL;
    moeq_code rc = fused_tensor(m, down ? MOEQ_T_EXPERTS_DOWN : MOEQ_T_EXPERTS_GATE_UP, layer,
                                "_bias", down ? H : 2 * I, 0, &t, err);
    if (rc)
        return rc;
    size_t es = st_dtype_size(t->dtype);
    *rows = down ? H : I;
    *dtype = t->dtype;
    unsigned char *buf = malloc(es * (size_t)*rows);
    if (!buf)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory splitting %s", t->name);
    const unsigned char *row = (const unsigned char *)t->data +
                               (size_t)expert * es * (size_t)t->shape[1];
    if (down)
        memcpy(buf, row, es * (size_t)H);
    else if (m->arch.experts == MOEQ_EXPERTS_FUSED_CONCAT) /* gate, then up */
        memcpy(buf, row + (role == MOEQ_T_EXPERT_UP_PROJ ? (size_t)I * es : 0), es * (size_t)I);
    else /* interleaved: gate at even, up at odd positions */
        for (int64_t i = 0; i < I; i++)
            memcpy(buf + (size_t)i * es,
                   row + (size_t)(2 * i + (role == MOEQ_T_EXPERT_UP_PROJ)) * es, es);
    *out = buf;
    return MOEQ_OK;
}

void moeq_fused_experts_each_source(const moeq_model *m, int layer,
                                    void (*fn)(void *ctx, const char *name), void *ctx)
{
    static const char *const suffixes[] = {"", "_bias", "_blocks", "_scales"};
    const moeq_tensor_role roles[2] = {MOEQ_T_EXPERTS_GATE_UP, MOEQ_T_EXPERTS_DOWN};
    for (int r = 0; r < 2; r++)
        for (size_t s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++) {
            char name[600];
            if (fused_find(m, roles[r], layer, suffixes[s], name, sizeof name))
                fn(ctx, name);
        }
}
