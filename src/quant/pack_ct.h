/* pack_ct.h: a moeq_quantized weight <-> compressed-tensors' "pack-quantized"
 * tensors, as llm-compressor writes them and vLLM (CompressedTensorsWNA16 and
 * its MoE method) and compressed-tensors' own decompression read. docs/formats.md
 * gives the layout and its sources.
 *
 * compressed-tensors keeps integers signed: q in [-2^(bits-1), 2^(bits-1))
 * with W = (q - zp) * scale, and adds 2^(bits-1) when packing. moeq's
 * unsigned code c and zero z are exactly those packed values (c = q + 2^(b-1),
 * z = zp + 2^(b-1)); a symmetric grid has zp = 0, z = 2^(bits-1), and stores
 * no zero point. For W [out, in] with n_groups groups:
 *   weight_packed     I32 [out, in * bits / 32]  row o: codes of input c
 *                     at bit bits * c of the row's little-endian stream
 *   weight_scale      scale dtype [out, n_groups]
 *   weight_zero_point I32 [out * bits / 32, n_groups] (asymmetric only):
 *                     column g: zero of output o at bit bits * o of the
 *                     column's stream (packed along dim 0)
 *   weight_shape      I64 [2] = {out, in}
 * No g_idx is written: group of input c is c / group_size. */
#ifndef MOEQ_QUANT_PACK_CT_H
#define MOEQ_QUANT_PACK_CT_H

#include "moeq/moeq.h"
#include "moeq/safetensors.h"
#include "quant/gptq.h"

#include <stdint.h>

typedef struct moeq_packed_ct {
    int bits, in_features, out_features, n_groups, group_size;
    int sym;              /* 1: no zero point tensor */
    st_dtype scale_dtype; /* F16, BF16 or F32 (llm-compressor: the weight's dtype) */
    int32_t *weight_packed;     /* [out, in * bits / 32] */
    void *weight_scale;         /* [out, n_groups] of scale_dtype */
    int32_t *weight_zero_point; /* [out * bits / 32, n_groups]; NULL when sym */
    int64_t weight_shape[2];
} moeq_packed_ct;

int moeq_ct_packed_cols(int bits, int in_features);
int moeq_ct_zero_point_rows(int bits, int out_features);

/* Packs q into *out (freshly allocated). sym: the grid is symmetric, every
 * zero point must be 2^(bits-1) (anything else is MOEQ_ERR_INVALID_ARG).
 * Scales must be exact in scale_dtype and g_idx[c] = c / group_size. */
moeq_code moeq_pack_ct(const moeq_quantized *q, int sym, st_dtype scale_dtype,
                       moeq_packed_ct *out, moeq_error *err);
void moeq_packed_ct_free(moeq_packed_ct *p);

/* The inverse; p's fields (bits, shapes, sym, group_size, scale_dtype) must
 * be filled in. */
moeq_code moeq_unpack_ct(const moeq_packed_ct *p, moeq_quantized *out, moeq_error *err);

#endif
