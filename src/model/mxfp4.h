/* mxfp4.h: MXFP4 source weights (gpt-oss's MoE experts), dequantized on load.
 *
 * OCP Microscaling Formats (MX) v1.0: blocks of 32 elements share one E8M0
 * scale 2^(s - 127); each element is FP4 E2M1 (sign, 2 exponent bits, 1
 * mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives). gpt-oss
 * stores a projection W [out, in] of every expert as <name>_blocks U8
 * [E, out, in / 32, 16] (two elements per byte, element 2k in the low
 * nibble, 2k + 1 in the high one) and <name>_scales U8 [E, out, in / 32]
 * (transformers integrations/mxfp4.py, _convert_moe_packed_tensors, which
 * returns the [E, in, out] layout of the bf16 model by a transpose). */
#ifndef MOEQ_MODEL_MXFP4_H
#define MOEQ_MODEL_MXFP4_H

#include "moeq/moeq.h"

#include <stddef.h>
#include <stdint.h>

enum { MOEQ_MXFP4_BLOCK = 32 };

/* The value of FP4 E2M1 code c (0..15, bit 3 the sign). */
float moeq_fp4_e2m1_to_f32(unsigned c);

/* Dequantizes rows x groups blocks: blocks[rows, groups, 16],
 * scales[rows, groups] -> out[rows, groups * 32], each element its FP4
 * value times 2^(scale - 127) (exact in fp32). A scale byte of 0xFF (NaN
 * in E8M0) fails with MOEQ_ERR_FORMAT naming `what`, row and group. */
moeq_code moeq_mxfp4_dequant(const uint8_t *blocks, const uint8_t *scales, int64_t rows,
                             int64_t groups, float *out, const char *what, moeq_error *err);

#endif
