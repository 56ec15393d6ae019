/* pack_format.h: the output formats moeq writes and, for each, the named
 * tensors one quantized linear becomes (suffixes replace the "weight" of the
 * linear's tensor name):
 *   gptq                qweight, qzeros, scales, g_idx     (pack_gptq.h)
 *   awq                 qweight, qzeros, scales            (pack_awq.h)
 *   compressed-tensors  weight_packed, weight_scale, weight_shape and,
 *                       asymmetric, weight_zero_point      (pack_ct.h)
 * docs/formats.md describes each with its sources. */
#ifndef MOEQ_QUANT_PACK_FORMAT_H
#define MOEQ_QUANT_PACK_FORMAT_H

#include "moeq/moeq.h"
#include "moeq/safetensors.h"
#include "quant/gptq.h"

typedef enum moeq_format {
    MOEQ_FORMAT_GPTQ,
    MOEQ_FORMAT_AWQ,
    MOEQ_FORMAT_COMPRESSED_TENSORS,
} moeq_format;

const char *moeq_format_name(moeq_format format);
/* "gptq", "awq" or "compressed-tensors" -> *format; -1 when unknown. */
int moeq_format_parse(const char *name, moeq_format *format);

/* Checks up front that format can hold a linear of [out_features,
 * in_features] quantized with cfg (bits, and for formats without g_idx:
 * no act-order with dynamic groups). MOEQ_ERR_INVALID_ARG says why. */
moeq_code moeq_format_check(moeq_format format, const moeq_gptq_config *cfg, int in_features,
                            int out_features, moeq_error *err);

/* Whether the format's scales must also be exact in bf16: compressed-tensors
 * stores them in the model's dtype, and vLLM's AWQ kernels cast the fp16
 * scales to the model's dtype (awq_marlin), so for a bf16 model their
 * scales are rounded to values that fp16 and bf16 both hold. */
int moeq_format_needs_bf16_scales(moeq_format format, st_dtype model_dtype);

typedef struct moeq_packed_tensor {
    const char *suffix; /* replaces "weight" in the linear's name */
    st_dtype dtype;
    int ndim;
    int64_t shape[2];
    void *data;
    size_t bytes;
} moeq_packed_tensor;

typedef struct moeq_packed_linear {
    int n;
    moeq_packed_tensor t[4];
    int wrapped_zero_points; /* gptq: see moeq_packed_gptq */
} moeq_packed_linear;

/* Packs q in format; model_dtype is the dtype of the weight it replaces
 * (compressed-tensors stores its scales in it), sym whether the grid is
 * symmetric. */
moeq_code moeq_pack_linear(moeq_format format, const moeq_quantized *q, int sym,
                           st_dtype model_dtype, moeq_packed_linear *out, moeq_error *err);
void moeq_packed_linear_free(moeq_packed_linear *p);

#endif
