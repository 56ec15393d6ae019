/* model.c: opens a checkpoint directory (config.json, architecture,
 * safetensors shards) and decodes its tensors to fp32 by role. */
#include "model/model.h"

#include "common/dtype.h"
#include "common/fileio.h"
#include "model/fp8_blocks.h"
#include "quant/pack_awq.h"
#include "quant/pack_ct.h"
#include "quant/pack_format.h"
#include "quant/pack_gptq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

moeq_code moeq_model_open(const char *dir, const char *arch_file, moeq_model *model,
                          moeq_error *err)
{
    memset(model, 0, sizeof *model);
    if (!moeq_dir_exists(dir))
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND, "model directory %s does not exist", dir);
    size_t len = strlen(dir) + 1;
    if (!(model->dir = malloc(len)))
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    memcpy(model->dir, dir, len);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char model_type[128];
    moeq_code rc = moeq_config_model_type(path, model_type, sizeof model_type, err);
    int have_arch = 0, have_cfg = 0;
    if (rc)
        goto fail;
    rc = arch_file ? moeq_arch_load_file(arch_file, &model->arch, err)
                   : moeq_arch_for_model_type(model_type, &model->arch, err);
    if (rc)
        goto fail;
    have_arch = 1;
    if (arch_file) {
        int listed = 0;
        for (int i = 0; i < model->arch.n_model_types; i++)
            listed |= !strcmp(model->arch.model_types[i], model_type);
        if (!listed) {
            rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                           "architecture file %s does not list model_type \"%s\" of %s",
                           arch_file, model_type, path);
            goto fail;
        }
    }
    if ((rc = moeq_config_load(path, &model->arch, &model->cfg, err)))
        goto fail;
    have_cfg = 1;
    if ((rc = moeq_arch_bind_next_layer(&model->arch, model->cfg.num_layers, err)))
        goto fail;
    if ((rc = st_checkpoint_open(&model->ckpt, dir, err)))
        goto fail;
    return MOEQ_OK;
fail:
    if (have_cfg)
        moeq_config_free(&model->cfg);
    if (have_arch)
        moeq_arch_free(&model->arch);
    free(model->dir);
    memset(model, 0, sizeof *model);
    return rc;
}

void moeq_model_close(moeq_model *model)
{
    st_checkpoint_close(&model->ckpt);
    moeq_config_free(&model->cfg);
    moeq_arch_free(&model->arch);
    free(model->dir);
    memset(model, 0, sizeof *model);
}

/* Describes role/layer/expert for messages: "q_proj of layer 3". */
static void describe(moeq_tensor_role role, int layer, int expert, char *buf, size_t bytes)
{
    if (expert >= 0)
        snprintf(buf, bytes, "%s of expert %d in layer %d", moeq_tensor_role_key(role), expert,
                 layer);
    else if (layer >= 0)
        snprintf(buf, bytes, "%s of layer %d", moeq_tensor_role_key(role), layer);
    else
        snprintf(buf, bytes, "%s", moeq_tensor_role_key(role));
}

const st_tensor *moeq_model_find(const moeq_model *model, moeq_tensor_role role, int layer,
                                 int expert, moeq_error *err)
{
    char name[512], what[128];
    describe(role, layer, expert, what, sizeof what);
    if (moeq_arch_tensor_name(&model->arch, role, layer, expert, name, sizeof name)) {
        moeq_fail(err, MOEQ_ERR_NOT_FOUND, "architecture %s names no tensor for %s",
                  model->arch.name, what);
        return NULL;
    }
    const st_tensor *t = st_checkpoint_find(&model->ckpt, name);
    if (!t)
        moeq_fail(err, MOEQ_ERR_NOT_FOUND, "%s: tensor %s (%s) is missing from the checkpoint",
                  model->dir, name, what);
    return t;
}

/* An F8_E4M3 tensor: block-scaled by its scale_inv in an fp8 source (where
 * the scale must be there), else decoded as it is. */
static moeq_code decode_fp8_blocks(const moeq_model *model, const st_tensor *t, float *out,
                                   moeq_error *err)
{
    char name[600];
    const st_tensor *scale = NULL;
    if (!moeq_fp8_scale_name(t->name, name, sizeof name))
        scale = st_checkpoint_find(&model->ckpt, name);
    /* Without block scales an E4M3 tensor is taken as it is stored. */
    if (!model->cfg.fp8_block_rows && !scale)
        return moeq_to_f32(t->dtype, t->data, (size_t)t->nbytes, out, err);
    if (!model->cfg.fp8_block_rows)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "FP8 tensor %s has a scale tensor %s, but config.json declares no fp8 "
                         "quantization_config with weight_block_size",
                         t->name, name);
    if (!scale)
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "FP8 tensor %s has no scale tensor %s_scale_inv in the checkpoint",
                         t->name, t->name);
    return moeq_fp8_block_dequant(t, scale, model->cfg.fp8_block_rows, model->cfg.fp8_block_cols,
                                  out, err);
}

/* 0, or MOEQ_ERR_FORMAT naming t when its shape is not [rows, cols]
 * (cols 0: [rows]). */
static moeq_code check_shape(const moeq_model *model, const st_tensor *t, int64_t rows,
                             int64_t cols, moeq_error *err)
{
    int want_ndim = cols ? 2 : 1;
    int ok = t->ndim == want_ndim && t->shape[0] == rows && (!cols || t->shape[1] == cols);
    if (!ok) {
        char shape[96] = "";
        for (int i = 0; i < t->ndim; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld",
                     i ? ", " : "", (long long)t->shape[i]);
        if (cols)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s: tensor %s has shape [%s], expected [%lld, %lld] from config.json",
                             model->dir, t->name, shape, (long long)rows, (long long)cols);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: tensor %s has shape [%s], expected [%lld] from config.json",
                         model->dir, t->name, shape, (long long)rows);
    }
    return MOEQ_OK;
}

static moeq_code decode(const moeq_model *model, const st_tensor *t, int64_t rows, int64_t cols,
                        float **out, moeq_error *err)
{
    moeq_code rc = check_shape(model, t, rows, cols, err);
    if (rc)
        return rc;
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    float *buf = malloc(sizeof(float) * (n ? n : 1));
    if (!buf)
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory decoding tensor %s", model->dir,
                         t->name);
    rc = t->dtype == ST_F8_E4M3 ? decode_fp8_blocks(model, t, buf, err)
                                : moeq_to_f32(t->dtype, t->data, n, buf, err);
    if (rc) {
        free(buf);
        return moeq_wrap(err, "%s: tensor %s: ", model->dir, t->name);
    }
    *out = buf;
    return MOEQ_OK;
}

/* A tensor of the checkpoint that must exist, with its expected type and
 * 2-D shape (cols 0: 1-D of rows). */
static const st_tensor *packed_part(const moeq_model *model, const char *name, st_dtype dtype,
                                    int64_t rows, int64_t cols, moeq_error *err)
{
    const st_tensor *t = st_checkpoint_find(&model->ckpt, name);
    int ok = t && t->dtype == dtype && t->ndim == (cols ? 2 : 1) && t->shape[0] == rows &&
             (!cols || t->shape[1] == cols);
    if (!ok)
        moeq_fail(err, t ? MOEQ_ERR_FORMAT : MOEQ_ERR_NOT_FOUND,
                  "%s: quantized tensor %s is %s (expected %s [%lld%s%lld])", model->dir, name,
                  t ? "mis-shaped or of another dtype" : "missing", st_dtype_name(dtype),
                  (long long)rows, cols ? ", " : "", (long long)cols);
    return ok ? t : NULL;
}

/* Dequantizes the GPTQ v1 tensors <base>qweight/qzeros/scales/g_idx of a
 * [rows, cols] weight into out. */
static moeq_code load_gptq(const moeq_model *model, const char *base, int64_t rows,
                           int64_t cols, float *out, moeq_error *err)
{
    const moeq_config *c = &model->cfg;
    moeq_code rc = moeq_gptq_check_dims(c->quant_bits, (int)cols, (int)rows, err);
    if (rc)
        return moeq_wrap(err, "%s: %sweight: ", model->dir, base);
    int gs = c->quant_group_size;
    int64_t groups = gs > 0 ? cols / gs : 1;
    char name[4][600];
    const char *suffix[4] = {"qweight", "qzeros", "scales", "g_idx"};
    for (int i = 0; i < 4; i++)
        snprintf(name[i], sizeof name[i], "%s%s", base, suffix[i]);
    const st_tensor *qw = packed_part(model, name[0], ST_I32,
                                      moeq_gptq_qweight_rows(c->quant_bits, (int)cols), rows, err);
    const st_tensor *qz = qw ? packed_part(model, name[1], ST_I32, groups,
                                           moeq_gptq_qzeros_cols(c->quant_bits, (int)rows), err)
                             : NULL;
    const st_tensor *sc = qz ? packed_part(model, name[2], ST_F16, groups, rows, err) : NULL;
    const st_tensor *gi = sc ? packed_part(model, name[3], ST_I32, cols, 0, err) : NULL;
    if (!gi)
        return err ? err->code : MOEQ_ERR_FORMAT;
    /* The mapped tensors may be unaligned: copy them out first. */
    moeq_packed_gptq p = {.bits = c->quant_bits, .in_features = (int)cols,
                          .out_features = (int)rows, .n_groups = (int)groups, .group_size = gs};
    p.qweight = malloc(qw->nbytes);
    p.qzeros = malloc(qz->nbytes);
    p.scales = malloc(sc->nbytes);
    p.g_idx = malloc(gi->nbytes);
    moeq_quantized q = {0};
    if (!p.qweight || !p.qzeros || !p.scales || !p.g_idx) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading %sqweight", model->dir,
                       base);
    } else {
        memcpy(p.qweight, qw->data, qw->nbytes);
        memcpy(p.qzeros, qz->data, qz->nbytes);
        memcpy(p.scales, sc->data, sc->nbytes);
        memcpy(p.g_idx, gi->data, gi->nbytes);
        if ((rc = moeq_unpack_gptq(&p, &q, err)))
            moeq_wrap(err, "%s: %sqweight: ", model->dir, base);
        else
            moeq_quantized_dequantize(&q, out);
    }
    moeq_quantized_free(&q);
    moeq_packed_gptq_free(&p);
    return rc;
}

/* A mapped tensor copied out (the map may be unaligned). */
static void *copy_out(const st_tensor *t)
{
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    if (p)
        memcpy(p, t->data, t->nbytes);
    return p;
}

/* Dequantizes the AWQ GEMM tensors <base>qweight/qzeros/scales. */
static moeq_code load_awq(const moeq_model *model, const char *base, int64_t rows, int64_t cols,
                          float *out, moeq_error *err)
{
    const moeq_config *c = &model->cfg;
    moeq_code rc = moeq_awq_check_dims(c->quant_bits, (int)cols, (int)rows, err);
    if (rc)
        return moeq_wrap(err, "%s: %sweight: ", model->dir, base);
    int gs = c->quant_group_size;
    int64_t groups = gs > 0 ? cols / gs : 1;
    char name[3][600];
    const char *suffix[3] = {"qweight", "qzeros", "scales"};
    for (int i = 0; i < 3; i++)
        snprintf(name[i], sizeof name[i], "%s%s", base, suffix[i]);
    const st_tensor *qw = packed_part(model, name[0], ST_I32, cols, rows / 8, err);
    const st_tensor *qz = qw ? packed_part(model, name[1], ST_I32, groups, rows / 8, err) : NULL;
    const st_tensor *sc = qz ? packed_part(model, name[2], ST_F16, groups, rows, err) : NULL;
    if (!sc)
        return err ? err->code : MOEQ_ERR_FORMAT;
    moeq_packed_awq p = {.in_features = (int)cols, .out_features = (int)rows,
                         .n_groups = (int)groups, .group_size = gs};
    p.qweight = copy_out(qw);
    p.qzeros = copy_out(qz);
    p.scales = copy_out(sc);
    moeq_quantized q = {0};
    if (!p.qweight || !p.qzeros || !p.scales)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading %sqweight", model->dir, base);
    else if ((rc = moeq_unpack_awq(&p, &q, err)))
        moeq_wrap(err, "%s: %sqweight: ", model->dir, base);
    else
        moeq_quantized_dequantize(&q, out);
    moeq_quantized_free(&q);
    moeq_packed_awq_free(&p);
    return rc;
}

/* Dequantizes the compressed-tensors pack-quantized tensors
 * <base>weight_packed/weight_scale/weight_zero_point. */
static moeq_code load_ct(const moeq_model *model, const char *base, int64_t rows, int64_t cols,
                         float *out, moeq_error *err)
{
    const moeq_config *c = &model->cfg;
    const int bits = c->quant_bits;
    moeq_code rc = moeq_gptq_check_dims(bits, (int)cols, (int)rows, err);
    if (rc)
        return moeq_wrap(err, "%s: %sweight: ", model->dir, base);
    int gs = c->quant_group_size;
    int64_t groups = gs > 0 ? cols / gs : 1;
    char name[3][600];
    const char *suffix[3] = {"weight_packed", "weight_scale", "weight_zero_point"};
    for (int i = 0; i < 3; i++)
        snprintf(name[i], sizeof name[i], "%s%s", base, suffix[i]);
    const st_tensor *sc = st_checkpoint_find(&model->ckpt, name[1]);
    st_dtype sd = sc && (sc->dtype == ST_F32 || sc->dtype == ST_F16) ? sc->dtype : ST_BF16;
    const st_tensor *wp = packed_part(model, name[0], ST_I32, rows,
                                      moeq_ct_packed_cols(bits, (int)cols), err);
    sc = wp ? packed_part(model, name[1], sd, rows, groups, err) : NULL;
    const st_tensor *zp = sc && !c->quant_sym
                              ? packed_part(model, name[2], ST_I32,
                                            moeq_ct_zero_point_rows(bits, (int)rows), groups, err)
                              : NULL;
    if (!sc || (!c->quant_sym && !zp))
        return err ? err->code : MOEQ_ERR_FORMAT;
    moeq_packed_ct p = {.bits = bits, .in_features = (int)cols, .out_features = (int)rows,
                        .n_groups = (int)groups, .group_size = gs, .sym = c->quant_sym,
                        .scale_dtype = sd};
    p.weight_packed = copy_out(wp);
    p.weight_scale = copy_out(sc);
    p.weight_zero_point = zp ? copy_out(zp) : NULL;
    moeq_quantized q = {0};
    if (!p.weight_packed || !p.weight_scale || (zp && !p.weight_zero_point))
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading %sweight_packed", model->dir,
                       base);
    else if ((rc = moeq_unpack_ct(&p, &q, err)))
        moeq_wrap(err, "%s: %sweight_packed: ", model->dir, base);
    else
        moeq_quantized_dequantize(&q, out);
    moeq_quantized_free(&q);
    moeq_packed_ct_free(&p);
    return rc;
}

moeq_code moeq_model_load_f32(const moeq_model *model, moeq_tensor_role role, int layer,
                              int expert, int64_t rows, int64_t cols, float **out,
                              moeq_error *err)
{
    *out = NULL;
    char name[600];
    size_t len;
    /* A quantized checkpoint stores a linear's weight as packed tensors. */
    if (model->cfg.quant_bits && cols &&
        !moeq_arch_tensor_name(&model->arch, role, layer, expert, name, sizeof name) &&
        !st_checkpoint_find(&model->ckpt, name) && (len = strlen(name)) > 6 &&
        !strcmp(name + len - 6, "weight")) {
        name[len - 6] = '\0';
        float *buf = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
        if (!buf)
            return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", model->dir);
        moeq_code rc =
            model->cfg.quant_format == MOEQ_FORMAT_AWQ ? load_awq(model, name, rows, cols, buf, err)
            : model->cfg.quant_format == MOEQ_FORMAT_COMPRESSED_TENSORS
                ? load_ct(model, name, rows, cols, buf, err)
                : load_gptq(model, name, rows, cols, buf, err);
        if (rc) {
            free(buf);
            return rc;
        }
        *out = buf;
        return MOEQ_OK;
    }
    const st_tensor *t = moeq_model_find(model, role, layer, expert, err);
    if (!t)
        return err ? err->code : MOEQ_ERR_NOT_FOUND;
    return decode(model, t, rows, cols, out, err);
}

moeq_code moeq_model_load_bf16(const moeq_model *model, moeq_tensor_role role, int layer,
                               int expert, int64_t rows, int64_t cols, uint16_t **out,
                               moeq_error *err)
{
    *out = NULL;
    if (model->cfg.quant_bits)
        return MOEQ_OK; /* packed: decoded by moeq_model_load_f32 */
    const st_tensor *t = moeq_model_find(model, role, layer, expert, err);
    if (!t)
        return err ? err->code : MOEQ_ERR_NOT_FOUND;
    if (t->dtype != ST_BF16)
        return MOEQ_OK;
    moeq_code rc = check_shape(model, t, rows, cols, err);
    if (rc)
        return rc;
    size_t bytes = 2 * (size_t)rows * (size_t)(cols ? cols : 1);
    if (!(*out = malloc(bytes ? bytes : 1)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory copying tensor %s", model->dir,
                         t->name);
    memcpy(*out, t->data, bytes);
    return MOEQ_OK;
}

moeq_code moeq_model_load_bias_f32(const moeq_model *model, moeq_tensor_role role, int layer,
                                   int expert, int64_t rows, float **out, moeq_error *err)
{
    *out = NULL;
    char name[512];
    if (moeq_arch_tensor_name(&model->arch, role, layer, expert, name, sizeof name))
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND, "architecture %s names no tensor %s",
                         model->arch.name, moeq_tensor_role_key(role));
    size_t len = strlen(name);
    if (len < 6 || strcmp(name + len - 6, "weight"))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture %s: tensors.%s = %s does not end in \"weight\", so its "
                         "bias cannot be named",
                         model->arch.name, moeq_tensor_role_key(role), name);
    memcpy(name + len - 6, "bias", 5);
    const st_tensor *t = st_checkpoint_find(&model->ckpt, name);
    if (!t)
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "%s: tensor %s is missing from the checkpoint (config.json asks for "
                         "biases)",
                         model->dir, name);
    return decode(model, t, rows, 0, out, err);
}
