/* pack_awq.c: AWQ GEMM packing and unpacking (layout in pack_awq.h and
 * docs/formats.md). Source of the nibble order: AutoAWQ
 * awq/modules/linear/gemm.py WQLinear_GEMM.from_linear (order_map) and its
 * inverse in GPTQModel gptqmodel/quantization/awq/utils/packing_utils.py
 * (AWQ_REVERSE_ORDER, dequantize_gemm). */
#include "quant/pack_awq.h"

#include "common/dtype.h"
#include "quant/pack_gptq.h"

#include <stdlib.h>
#include <string.h>

/* Nibble i of a word holds output feature 8j + awq_order[i]. */
static const int awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

moeq_code moeq_awq_check_dims(int bits, int in_features, int out_features, moeq_error *err)
{
    if (bits != 4)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "the AWQ GEMM format holds 4-bit weights only, not %d-bit (vLLM's AWQ "
                         "kernels serve 4 bits); use --format gptq or compressed-tensors",
                         bits);
    if (in_features <= 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "AWQ in_features = %d must be positive",
                         in_features);
    if (out_features <= 0 || out_features % 8)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "AWQ packs 8 output features per word: out_features = %d must be a "
                         "positive multiple of 8",
                         out_features);
    return MOEQ_OK;
}

void moeq_packed_awq_free(moeq_packed_awq *p)
{
    free(p->qweight);
    free(p->qzeros);
    free(p->scales);
    memset(p, 0, sizeof *p);
}

/* The word of 8 output features starting at o0 of one line (codes of one
 * input feature, or zero points of one group): v(o) gives each value. */
static uint32_t pack_word(const uint8_t *codes, const int32_t *zeros, size_t stride, int o0)
{
    uint32_t w = 0;
    for (int i = 0; i < 8; i++) {
        size_t o = (size_t)(o0 + awq_order[i]);
        uint32_t v = codes ? codes[o * stride] : (uint32_t)zeros[o];
        w |= v << (4 * i);
    }
    return w;
}

moeq_code moeq_pack_awq(const moeq_quantized *q, moeq_packed_awq *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int in = q->cols, outf = q->rows, ng = q->n_groups, words = q->rows / 8;
    moeq_code rc = moeq_awq_check_dims(q->bits, in, outf, err);
    if (rc || (rc = moeq_check_packable(q, ST_F16, 1, err)))
        return rc;
    out->in_features = in;
    out->out_features = outf;
    out->n_groups = ng;
    out->group_size = q->group_size;
    out->qweight = malloc(sizeof(int32_t) * (size_t)in * words);
    out->qzeros = malloc(sizeof(int32_t) * (size_t)ng * words);
    out->scales = malloc(sizeof(uint16_t) * (size_t)ng * outf);
    if (!out->qweight || !out->qzeros || !out->scales) {
        moeq_packed_awq_free(out);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory packing a %d x %d AWQ weight", outf,
                         in);
    }
    /* codes are [out, in]: the code of (o, c) is codes[o * in + c]. */
    for (int c = 0; c < in; c++)
        for (int j = 0; j < words; j++)
            out->qweight[(size_t)c * words + j] =
                (int32_t)pack_word(q->codes + c, NULL, (size_t)in, 8 * j);
    for (int g = 0; g < ng; g++)
        for (int j = 0; j < words; j++)
            out->qzeros[(size_t)g * words + j] =
                (int32_t)pack_word(NULL, q->zeros + (size_t)g * outf, 1, 8 * j);
    for (size_t i = 0; i < (size_t)ng * outf; i++)
        out->scales[i] = moeq_f32_to_f16(q->scales[i]);
    return MOEQ_OK;
}

moeq_code moeq_unpack_awq(const moeq_packed_awq *p, moeq_quantized *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const int in = p->in_features, outf = p->out_features, words = outf / 8;
    moeq_code rc = moeq_awq_check_dims(4, in, outf, err);
    if (rc || (rc = moeq_quantized_alloc(out, outf, in, 4, p->group_size, err)))
        return rc;
    if (out->n_groups != p->n_groups) {
        moeq_quantized_free(out);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "AWQ tensors hold %d groups, but group_size %d over in_features %d "
                         "makes %d",
                         p->n_groups, p->group_size, in,
                         in / (p->group_size > 0 ? p->group_size : in));
    }
    for (int c = 0; c < in; c++)
        for (int j = 0; j < words; j++) {
            uint32_t w = (uint32_t)p->qweight[(size_t)c * words + j];
            for (int i = 0; i < 8; i++)
                out->codes[(size_t)(8 * j + awq_order[i]) * in + c] = (uint8_t)((w >> (4 * i)) & 15u);
        }
    for (int g = 0; g < p->n_groups; g++)
        for (int j = 0; j < words; j++) {
            uint32_t w = (uint32_t)p->qzeros[(size_t)g * words + j];
            for (int i = 0; i < 8; i++)
                out->zeros[(size_t)g * outf + 8 * j + awq_order[i]] = (int32_t)((w >> (4 * i)) & 15u);
        }
    for (size_t i = 0; i < (size_t)p->n_groups * outf; i++)
        out->scales[i] = moeq_f16_to_f32(p->scales[i]);
    for (int c = 0; c < in; c++)
        out->g_idx[c] = p->group_size > 0 ? c / p->group_size : 0;
    return MOEQ_OK;
}
