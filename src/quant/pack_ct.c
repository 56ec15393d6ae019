/* pack_ct.c: compressed-tensors pack-quantized packing and unpacking (layout
 * in pack_ct.h). Source: compressed-tensors
 * compressors/pack_quantized/base.py (PackedQuantizationCompressor:
 * weight_packed, weight_shape, the zero point packed along dim 0 for group
 * and channel strategies, none when symmetric) and
 * compressors/pack_quantized/helpers.py (pack_to_int32: the +2^(bits-1)
 * offset, element i at bit i * bits of a dense stream). */
#include "quant/pack_ct.h"

#include "common/dtype.h"
#include "quant/bitstream.h"
#include "quant/pack_gptq.h"

#include <stdlib.h>
#include <string.h>

/* moeq_gptq_check_dims holds the same constraint (whole words per stream). */
int moeq_ct_packed_cols(int bits, int in_features)
{
    return in_features * bits / 32;
}

int moeq_ct_zero_point_rows(int bits, int out_features)
{
    return out_features * bits / 32;
}

void moeq_packed_ct_free(moeq_packed_ct *p)
{
    free(p->weight_packed);
    free(p->weight_scale);
    free(p->weight_zero_point);
    memset(p, 0, sizeof *p);
}

static moeq_code check_dims(int bits, int in, int outf, moeq_error *err)
{
    moeq_code rc = moeq_gptq_check_dims(bits, in, outf, err);
    return rc ? moeq_wrap(err, "compressed-tensors: ") : MOEQ_OK;
}

moeq_code moeq_pack_ct(const moeq_quantized *q, int sym, st_dtype scale_dtype,
                       moeq_packed_ct *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int bits = q->bits, in = q->cols, outf = q->rows, ng = q->n_groups;
    moeq_code rc = check_dims(bits, in, outf, err);
    if (rc || (rc = moeq_check_packable(q, scale_dtype, 1, err)))
        return rc;
    const int32_t mid = 1 << (bits - 1);
    if (sym)
        for (size_t i = 0; i < (size_t)ng * outf; i++)
            if (q->zeros[i] != mid)
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "symmetric compressed-tensors weight has zero point %d at "
                                 "(group %zu, row %zu); symmetric means %d",
                                 q->zeros[i], i / (size_t)outf, i % (size_t)outf, mid);
    const int pc = moeq_ct_packed_cols(bits, in), zr = moeq_ct_zero_point_rows(bits, outf);
    const size_t scale_bytes = scale_dtype == ST_F32 ? 4 : 2;
    out->bits = bits;
    out->in_features = in;
    out->out_features = outf;
    out->n_groups = ng;
    out->group_size = q->group_size;
    out->sym = sym;
    out->scale_dtype = scale_dtype;
    out->weight_shape[0] = outf;
    out->weight_shape[1] = in;
    out->weight_packed = calloc((size_t)outf * pc, sizeof(int32_t));
    out->weight_scale = malloc(scale_bytes * (size_t)outf * ng);
    out->weight_zero_point = sym ? NULL : calloc((size_t)zr * ng, sizeof(int32_t));
    if (!out->weight_packed || !out->weight_scale || (!sym && !out->weight_zero_point)) {
        moeq_packed_ct_free(out);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory packing a %d x %d weight", outf, in);
    }
    uint32_t *packed = (uint32_t *)out->weight_packed;
    for (int o = 0; o < outf; o++)
        for (int c = 0; c < in; c++)
            moeq_stream_put(packed + (size_t)o * pc, 1, (size_t)c, bits,
                            q->codes[(size_t)o * in + c]);
    /* moeq keeps scales and zeros [n_groups, out]; the format [out, n_groups]. */
    for (int o = 0; o < outf; o++)
        for (int g = 0; g < ng; g++) {
            float s = q->scales[(size_t)g * outf + o];
            size_t i = (size_t)o * ng + g;
            if (scale_dtype == ST_F32)
                ((float *)out->weight_scale)[i] = s;
            else
                ((uint16_t *)out->weight_scale)[i] =
                    scale_dtype == ST_BF16 ? moeq_f32_to_bf16(s) : moeq_f32_to_f16(s);
            if (!sym)
                moeq_stream_put((uint32_t *)out->weight_zero_point + g, (size_t)ng, (size_t)o,
                                bits, (uint32_t)q->zeros[(size_t)g * outf + o]);
        }
    return MOEQ_OK;
}

moeq_code moeq_unpack_ct(const moeq_packed_ct *p, moeq_quantized *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int bits = p->bits, in = p->in_features, outf = p->out_features;
    moeq_code rc = check_dims(bits, in, outf, err);
    if (rc || (rc = moeq_quantized_alloc(out, outf, in, bits, p->group_size, err)))
        return rc;
    const int ng = out->n_groups, pc = moeq_ct_packed_cols(bits, in);
    if (ng != p->n_groups) {
        moeq_quantized_free(out);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "compressed-tensors weight_scale holds %d groups, but group_size %d "
                         "over in_features %d makes %d",
                         p->n_groups, p->group_size, in, ng);
    }
    const uint32_t *packed = (const uint32_t *)p->weight_packed;
    for (int o = 0; o < outf; o++)
        for (int c = 0; c < in; c++)
            out->codes[(size_t)o * in + c] =
                (uint8_t)moeq_stream_get(packed + (size_t)o * pc, 1, (size_t)c, bits);
    for (int o = 0; o < outf; o++)
        for (int g = 0; g < ng; g++) {
            size_t i = (size_t)o * ng + g;
            float s;
            if (p->scale_dtype == ST_F32)
                s = ((const float *)p->weight_scale)[i];
            else if (p->scale_dtype == ST_BF16)
                s = moeq_bf16_to_f32(((const uint16_t *)p->weight_scale)[i]);
            else
                s = moeq_f16_to_f32(((const uint16_t *)p->weight_scale)[i]);
            out->scales[(size_t)g * outf + o] = s;
            out->zeros[(size_t)g * outf + o] =
                p->sym ? 1 << (bits - 1)
                       : (int32_t)moeq_stream_get((const uint32_t *)p->weight_zero_point + g,
                                                  (size_t)ng, (size_t)o, bits);
        }
    for (int c = 0; c < in; c++)
        out->g_idx[c] = p->group_size > 0 ? c / p->group_size : 0;
    return MOEQ_OK;
}
