/* pack_awq.h: a moeq_quantized weight <-> the three tensors of an AWQ "GEMM"
 * checkpoint (quant_method "awq", version "gemm"), the layout AutoAWQ's
 * WQLinear_GEMM writes and vLLM (awq, awq_marlin), GPTQModel and
 * transformers read. 4 bits only (vLLM's AWQ kernels serve only 4 bits).
 * docs/formats.md gives the layout and its sources.
 *
 * For W [out, in] with groups of g input features:
 *   qweight I32 [in, out / 8]   codes, 8 output features per word
 *   qzeros  I32 [in / g, out / 8] zero points, packed the same way
 *   scales  F16 [in / g, out]
 * Word j of a row holds output features 8j .. 8j+7, nibble i (bits 4i ..
 * 4i+3) holding feature 8j + AWQ_ORDER[i] with AWQ_ORDER = {0, 2, 4, 6, 1, 3,
 * 5, 7}. Zero points are stored as they are (no offset), so every zero point
 * in [0, 15] round-trips. No g_idx: group of input feature c is c / g. */
#ifndef MOEQ_QUANT_PACK_AWQ_H
#define MOEQ_QUANT_PACK_AWQ_H

#include "moeq/moeq.h"
#include "quant/gptq.h"

#include <stdint.h>

typedef struct moeq_packed_awq {
    int in_features, out_features, n_groups, group_size;
    int32_t *qweight; /* [in_features, out_features / 8] */
    int32_t *qzeros;  /* [n_groups, out_features / 8] */
    uint16_t *scales; /* [n_groups, out_features], IEEE binary16 bits */
} moeq_packed_awq;

/* bits must be 4 and out_features a positive multiple of 8;
 * MOEQ_ERR_INVALID_ARG names what does not fit. */
moeq_code moeq_awq_check_dims(int bits, int in_features, int out_features, moeq_error *err);

/* Packs q (fp16-exact scales, g_idx[c] = c / group_size) into *out, freshly
 * allocated; anything the format cannot hold exactly is MOEQ_ERR_INVALID_ARG. */
moeq_code moeq_pack_awq(const moeq_quantized *q, moeq_packed_awq *out, moeq_error *err);
void moeq_packed_awq_free(moeq_packed_awq *p);

/* The inverse; p's shapes and group_size must be filled in. */
moeq_code moeq_unpack_awq(const moeq_packed_awq *p, moeq_quantized *out, moeq_error *err);

#endif
