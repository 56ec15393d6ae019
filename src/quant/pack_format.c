/* pack_format.c: one quantized linear -> the named tensors of the chosen
 * output format (see pack_format.h). */
#include "quant/pack_format.h"

#include "quant/pack_awq.h"
#include "quant/pack_ct.h"
#include "quant/pack_gptq.h"

#include <stdlib.h>
#include <string.h>

static const char *const format_names[] = {"gptq", "awq", "compressed-tensors"};

const char *moeq_format_name(moeq_format format)
{
    return format >= MOEQ_FORMAT_GPTQ && format <= MOEQ_FORMAT_COMPRESSED_TENSORS
               ? format_names[format]
               : "?";
}

int moeq_format_parse(const char *name, moeq_format *format)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, format_names[i])) {
            *format = (moeq_format)i;
            return 0;
        }
    return -1;
}

moeq_code moeq_format_check(moeq_format format, const moeq_gptq_config *cfg, int in_features,
                            int out_features, moeq_error *err)
{
    if (format != MOEQ_FORMAT_GPTQ && cfg->desc_act && !cfg->static_groups)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--format %s stores no g_idx, so act-order needs --static-groups true "
                         "(groups of consecutive input features)",
                         moeq_format_name(format));
    switch (format) {
    case MOEQ_FORMAT_GPTQ: return moeq_gptq_check_dims(cfg->bits, in_features, out_features, err);
    case MOEQ_FORMAT_AWQ: return moeq_awq_check_dims(cfg->bits, in_features, out_features, err);
    case MOEQ_FORMAT_COMPRESSED_TENSORS:
        return moeq_gptq_check_dims(cfg->bits, in_features, out_features, err);
    }
    return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "unknown output format %d", (int)format);
}

int moeq_format_needs_bf16_scales(moeq_format format, st_dtype model_dtype)
{
    return format != MOEQ_FORMAT_GPTQ && model_dtype == ST_BF16;
}

void moeq_packed_linear_free(moeq_packed_linear *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->t[i].data);
    memset(p, 0, sizeof *p);
}

/* Appends a tensor that takes over data. */
static void add(moeq_packed_linear *p, const char *suffix, st_dtype dtype, int64_t d0, int64_t d1,
                void *data)
{
    moeq_packed_tensor *t = &p->t[p->n++];
    t->suffix = suffix;
    t->dtype = dtype;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data;
    t->bytes = (size_t)d0 * (size_t)(d1 ? d1 : 1) * st_dtype_size(dtype);
}

moeq_code moeq_pack_linear(moeq_format format, const moeq_quantized *q, int sym,
                           st_dtype model_dtype, moeq_packed_linear *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    moeq_code rc = MOEQ_OK;
    if (format == MOEQ_FORMAT_GPTQ) {
        moeq_packed_gptq p;
        if ((rc = moeq_pack_gptq(q, &p, err)))
            return rc;
        add(out, "qweight", ST_I32, moeq_gptq_qweight_rows(p.bits, p.in_features),
            p.out_features, p.qweight);
        add(out, "qzeros", ST_I32, p.n_groups, moeq_gptq_qzeros_cols(p.bits, p.out_features),
            p.qzeros);
        add(out, "scales", ST_F16, p.n_groups, p.out_features, p.scales);
        add(out, "g_idx", ST_I32, p.in_features, 0, p.g_idx);
        out->wrapped_zero_points = p.wrapped_zero_points;
    } else if (format == MOEQ_FORMAT_AWQ) {
        moeq_packed_awq p;
        if ((rc = moeq_pack_awq(q, &p, err)))
            return rc;
        add(out, "qweight", ST_I32, p.in_features, p.out_features / 8, p.qweight);
        add(out, "qzeros", ST_I32, p.n_groups, p.out_features / 8, p.qzeros);
        add(out, "scales", ST_F16, p.n_groups, p.out_features, p.scales);
    } else {
        st_dtype sd = model_dtype == ST_F32 || model_dtype == ST_F16 ? model_dtype : ST_BF16;
        moeq_packed_ct p;
        if ((rc = moeq_pack_ct(q, sym, sd, &p, err)))
            return rc;
        int64_t *shape = malloc(sizeof p.weight_shape);
        if (!shape) {
            moeq_packed_ct_free(&p);
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        }
        memcpy(shape, p.weight_shape, sizeof p.weight_shape);
        add(out, "weight_packed", ST_I32, p.out_features,
            moeq_ct_packed_cols(p.bits, p.in_features), p.weight_packed);
        add(out, "weight_scale", sd, p.out_features, p.n_groups, p.weight_scale);
        add(out, "weight_shape", ST_I64, 2, 0, shape);
        if (!sym)
            add(out, "weight_zero_point", ST_I32, moeq_ct_zero_point_rows(p.bits, p.out_features),
                p.n_groups, p.weight_zero_point);
    }
    return MOEQ_OK;
}
