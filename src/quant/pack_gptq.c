/* pack_gptq.c: GPTQ v1 packing and unpacking (layout in pack_gptq.h and
 * docs/formats.md).
 *
 * Every packed tensor is a set of independent bit streams: field i of a
 * stream sits at bit bits * i of words w0, w1, ... read as one little-endian
 * integer, the words lying `stride` int32 apart in memory. For 2, 4 and 8
 * bits this is AutoGPTQ's `value j at bits * (j - i)` within each word; for
 * 3 bits it is exactly its 10 | 1 | 10 | 1 | 10 word split (field 10 puts
 * its low 2 bits at the top of word 0 and its bit 2 at the bottom of word 1,
 * field 21 its bit 0 at the top of word 1 and bits 1-2 at the bottom of
 * word 2), so one pair of helpers covers every width. */
#include "quant/pack_gptq.h"

#include "common/dtype.h"
#include "quant/bitstream.h"

#include <stdlib.h>
#include <string.h>

/* Exact once moeq_gptq_check_dims has passed. */
int moeq_gptq_qweight_rows(int bits, int in_features)
{
    return in_features * bits / 32;
}

int moeq_gptq_qzeros_cols(int bits, int out_features)
{
    return out_features * bits / 32;
}

/* The multiple a packed dimension must be: whole words per stream, and for
 * 3 bits whole 3-word blocks. (vLLM sizes qweight in // (32 / bits) and
 * GPTQModel ceil(in * bits / 32); AutoGPTQ's in // 32 * bits agrees with both
 * only for multiples of 32.) */
static int packed_dim_multiple(int bits)
{
    return bits == 3 ? 32 : 32 / bits;
}

moeq_code moeq_gptq_check_dims(int bits, int in_features, int out_features, moeq_error *err)
{
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "GPTQ packing supports 2, 3, 4 or 8 bits, not %d", bits);
    int m = packed_dim_multiple(bits);
    if (in_features <= 0 || in_features % m)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "GPTQ %d-bit qweight packs the input dimension in_features = %d, which "
                         "must be a positive multiple of %d",
                         bits, in_features, m);
    if (out_features <= 0 || out_features % m)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "GPTQ %d-bit qzeros packs the output dimension out_features = %d, which "
                         "must be a positive multiple of %d",
                         bits, out_features, m);
    return MOEQ_OK;
}

void moeq_packed_gptq_free(moeq_packed_gptq *p)
{
    free(p->qweight);
    free(p->qzeros);
    free(p->scales);
    free(p->g_idx);
    memset(p, 0, sizeof *p);
}

/* Whether v survives a round trip through the stored scale dtype. */
static int scale_exact(float v, st_dtype dtype)
{
    if (dtype == ST_F32)
        return 1;
    if (dtype == ST_BF16)
        return moeq_bf16_to_f32(moeq_f32_to_bf16(v)) == v;
    return moeq_f16_to_f32(moeq_f32_to_f16(v)) == v;
}

/* Every value the tensors cannot hold exactly is an error, not a silent
 * wrap: a code or zero masked to `bits` bits, or a scale rounded to the
 * stored dtype, would dequantize to something other than what the solver
 * fed its error back from. */
moeq_code moeq_check_packable(const moeq_quantized *q, st_dtype scale_dtype, int natural_groups,
                              moeq_error *err)
{
    const int32_t levels = 1 << q->bits;
    const int rows = q->rows, cols = q->cols;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            if (q->codes[(size_t)r * cols + c] >= levels)
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "code %d at (row %d, col %d) does not fit in %d bits",
                                 q->codes[(size_t)r * cols + c], r, c, q->bits);
    for (int g = 0; g < q->n_groups; g++)
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)g * rows + r;
            if (q->zeros[i] < 0 || q->zeros[i] >= levels)
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "zero point %d at (group %d, row %d) is outside [0, %d)",
                                 q->zeros[i], g, r, levels);
            if (!scale_exact(q->scales[i], scale_dtype))
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "scale %.9g at (group %d, row %d) is not exactly representable "
                                 "in %s",
                                 q->scales[i], g, r, st_dtype_name(scale_dtype));
        }
    for (int c = 0; c < cols; c++) {
        if (q->g_idx[c] < 0 || q->g_idx[c] >= q->n_groups)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "g_idx[%d] = %d is outside [0, %d)", c,
                             q->g_idx[c], q->n_groups);
        int natural = q->group_size > 0 ? c / q->group_size : 0;
        if (natural_groups && q->g_idx[c] != natural)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "g_idx[%d] = %d, but this format stores no g_idx and needs group %d "
                             "(act-order with dynamic groups: use --static-groups true or the "
                             "gptq format)",
                             c, q->g_idx[c], natural);
    }
    return MOEQ_OK;
}

moeq_code moeq_pack_gptq(const moeq_quantized *q, moeq_packed_gptq *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int bits = q->bits, in = q->cols, outf = q->rows, ng = q->n_groups;
    moeq_code rc = moeq_gptq_check_dims(bits, in, outf, err);
    if (rc || (rc = moeq_check_packable(q, ST_F16, 0, err)))
        return rc;
    const int qw_rows = moeq_gptq_qweight_rows(bits, in);
    const int qz_cols = moeq_gptq_qzeros_cols(bits, outf);
    out->bits = bits;
    out->in_features = in;
    out->out_features = outf;
    out->n_groups = ng;
    out->group_size = q->group_size;
    out->qweight = calloc((size_t)qw_rows * outf, sizeof(int32_t));
    out->qzeros = calloc((size_t)ng * qz_cols, sizeof(int32_t));
    out->scales = malloc(sizeof(uint16_t) * (size_t)ng * outf);
    out->g_idx = malloc(sizeof(int32_t) * (size_t)in);
    if (!out->qweight || !out->qzeros || !out->scales || !out->g_idx) {
        moeq_packed_gptq_free(out);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory packing a %d x %d %d-bit weight", outf,
                         in, bits);
    }
    /* int32_t and uint32_t may alias (C11 6.5p7); the bit work is unsigned. */
    uint32_t *qweight = (uint32_t *)out->qweight, *qzeros = (uint32_t *)out->qzeros;
    const uint32_t mask = (1u << bits) - 1u;
    /* qweight: the stream of output column o runs down column o, along the
     * input dimension. */
    for (int o = 0; o < outf; o++)
        for (int c = 0; c < in; c++)
            moeq_stream_put(qweight + o, (size_t)outf, (size_t)c, bits, q->codes[(size_t)o * in + c]);
    /* qzeros: the stream of group g runs along row g, over output columns. */
    for (int g = 0; g < ng; g++)
        for (int o = 0; o < outf; o++) {
            int32_t z = q->zeros[(size_t)g * outf + o];
            out->wrapped_zero_points += z == 0;
            moeq_stream_put(qzeros + (size_t)g * qz_cols, 1, (size_t)o, bits, (uint32_t)(z - 1) & mask);
        }
    for (size_t i = 0; i < (size_t)ng * outf; i++)
        out->scales[i] = moeq_f32_to_f16(q->scales[i]);
    memcpy(out->g_idx, q->g_idx, sizeof(int32_t) * (size_t)in);
    return MOEQ_OK;
}

moeq_code moeq_unpack_gptq(const moeq_packed_gptq *p, moeq_quantized *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int bits = p->bits, in = p->in_features, outf = p->out_features, ng = p->n_groups;
    moeq_code rc = moeq_gptq_check_dims(bits, in, outf, err);
    if (rc)
        return rc;
    if (ng <= 0)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "GPTQ scales and qzeros have %d groups", ng);
    for (int c = 0; c < in; c++)
        if (p->g_idx[c] < 0 || p->g_idx[c] >= ng)
            return moeq_fail(err, MOEQ_ERR_FORMAT, "g_idx[%d] = %d is outside [0, %d)", c,
                             p->g_idx[c], ng);
    /* The tensors fix n_groups; the configured group_size must agree. */
    if ((rc = moeq_quantized_alloc(out, outf, in, bits, p->group_size, err)))
        return rc;
    if (out->n_groups != ng) {
        moeq_quantized_free(out);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "GPTQ tensors hold %d groups, but group_size %d over in_features %d "
                         "makes %d",
                         ng, p->group_size, in, in / (p->group_size > 0 ? p->group_size : in));
    }
    const uint32_t *qweight = (const uint32_t *)p->qweight, *qzeros = (const uint32_t *)p->qzeros;
    const int qz_cols = moeq_gptq_qzeros_cols(bits, outf);
    const uint32_t mask = (1u << bits) - 1u;
    for (int o = 0; o < outf; o++)
        for (int c = 0; c < in; c++)
            out->codes[(size_t)o * in + c] =
                (uint8_t)moeq_stream_get(qweight + o, (size_t)outf, (size_t)c, bits);
    for (int g = 0; g < ng; g++)
        for (int o = 0; o < outf; o++)
            out->zeros[(size_t)g * outf + o] =
                (int32_t)((moeq_stream_get(qzeros + (size_t)g * qz_cols, 1, (size_t)o, bits) + 1u) &
                          mask);
    for (size_t i = 0; i < (size_t)ng * outf; i++)
        out->scales[i] = moeq_f16_to_f32(p->scales[i]);
    memcpy(out->g_idx, p->g_idx, sizeof(int32_t) * (size_t)in);
    return MOEQ_OK;
}
