/* pack_gptq.h: a moeq_quantized weight <-> the four tensors of a GPTQ "v1"
 * checkpoint (checkpoint_format "gptq"), the layout AutoGPTQ and GPTQModel
 * write and vLLM (gptq, gptq_marlin) and transformers load. docs/formats.md
 * gives the layout with the source file of every fact.
 *
 * In one line: codes and zero points are unsigned `bits`-bit fields laid
 * end to end in a little-endian bit stream of 32-bit words, field i at bit
 * bits * i; qweight streams along the input dimension (one stream per output
 * column), qzeros along the output dimension (one stream per group). For 2,
 * 4 and 8 bits a field never crosses a word; for 3 bits, 32 fields fill
 * exactly 3 words and fields 10 and 21 straddle two words, which is the
 * "10 | 1 | 10 | 1 | 10" scheme of AutoGPTQ's pack(). qzeros holds zero - 1
 * masked to `bits` bits (the v1 offset). */
#ifndef MOEQ_QUANT_PACK_GPTQ_H
#define MOEQ_QUANT_PACK_GPTQ_H

#include "moeq/moeq.h"
#include "moeq/safetensors.h"
#include "quant/gptq.h"

#include <stdint.h>

typedef struct moeq_packed_gptq {
    int bits;         /* 2, 3, 4 or 8 */
    int in_features;  /* the quantized weight's cols */
    int out_features; /* its rows */
    int n_groups;
    int group_size;   /* -1: one group per row; not stored in the tensors */
    int32_t *qweight; /* [in_features * bits / 32, out_features] */
    int32_t *qzeros;  /* [n_groups, out_features * bits / 32] */
    uint16_t *scales; /* [n_groups, out_features], IEEE binary16 bits */
    int32_t *g_idx;   /* [in_features] */
    /* Zero points equal to 0, which v1 stores as 2^bits - 1 (0 - 1, masked).
     * Loaders disagree on reading that back (docs/formats.md, "Zero point
     * 0"): some get 0, vLLM's gptq kernel gets 2^bits, GPTQModel's v1 -> v2
     * conversion carries into the next field. Only asymmetric grids make
     * them; a writer should warn when this is not 0. */
    int wrapped_zero_points;
} moeq_packed_gptq;

/* Row counts of qweight and qzeros' columns: in * bits / 32, out * bits / 32. */
int moeq_gptq_qweight_rows(int bits, int in_features);
int moeq_gptq_qzeros_cols(int bits, int out_features);

/* Checks that the format can hold a bits-bit [out_features, in_features]
 * weight: in_features and out_features must be multiples of 32 / bits for 2,
 * 4 and 8 bits (16, 8, 4) and of 32 for 3 bits (3 words per 32 fields).
 * MOEQ_ERR_INVALID_ARG names the dimension, its value and the multiple. */
moeq_code moeq_gptq_check_dims(int bits, int in_features, int out_features, moeq_error *err);

/* Checks that q's values fit a packed format exactly: codes below 2^bits,
 * zero points in [0, 2^bits), g_idx in [0, n_groups) and every scale
 * exactly representable in scale_dtype (F16, BF16 or F32); with
 * natural_groups, g_idx[c] must be c / group_size (formats that store no
 * g_idx). Anything else is MOEQ_ERR_INVALID_ARG naming the element. */
moeq_code moeq_check_packable(const moeq_quantized *q, st_dtype scale_dtype, int natural_groups,
                              moeq_error *err);

/* Packs q into freshly allocated tensors in *out (free with
 * moeq_packed_gptq_free). Every code must be below 2^bits, every zero point
 * in [0, 2^bits), every g_idx in [0, n_groups) and every scale exactly
 * representable in fp16 (moeq's grids are): anything else is
 * MOEQ_ERR_INVALID_ARG naming the element, so the checkpoint always
 * dequantizes to exactly what moeq_quantized_dequantize gives. */
moeq_code moeq_pack_gptq(const moeq_quantized *q, moeq_packed_gptq *out, moeq_error *err);
void moeq_packed_gptq_free(moeq_packed_gptq *p);

/* The inverse: p's shapes, bits and group_size must be filled in (from the
 * tensors' shapes and quantize_config.json); *out is allocated here. Zero
 * points read back as (field + 1) mod 2^bits, so a packed 0 round-trips.
 * g_idx outside [0, n_groups) is MOEQ_ERR_FORMAT naming the column. */
moeq_code moeq_unpack_gptq(const moeq_packed_gptq *p, moeq_quantized *out, moeq_error *err);

#endif
