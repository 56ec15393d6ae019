/* dtype.h: scalar conversions between fp32 and the 16- and 8-bit float
 * formats found in checkpoints, and whole-buffer decoding to fp32.
 *
 * Formats: IEEE 754 binary16 (F16); bfloat16 (BF16, the top half of an
 * fp32); OCP 8-bit floating point spec v1.0 E4M3 "FN" (bias 7, no infinity,
 * S.1111.111 is NaN, max 448) and E5M2 (bias 15, IEEE-like with inf/NaN);
 * OCP Microscaling spec v1.0 E8M0 (a scale 2^(x-127), 0xFF is NaN). */
#ifndef MOEQ_COMMON_DTYPE_H
#define MOEQ_COMMON_DTYPE_H

#include "moeq/moeq.h"
#include "moeq/safetensors.h"

#include <stddef.h>
#include <stdint.h>

float moeq_bf16_to_f32(uint16_t x);
/* Round to nearest, ties to even; overflow gives inf; a NaN stays a NaN
 * (quieted, sign and top payload bits kept). */
uint16_t moeq_f32_to_bf16(float f);
float moeq_f16_to_f32(uint16_t x);
/* Round to nearest, ties to even, into normals and subnormals; overflow
 * gives inf; a NaN stays a NaN (quieted, sign and top payload bits kept). */
uint16_t moeq_f32_to_f16(float f);
float moeq_f8e4m3_to_f32(uint8_t x);
float moeq_f8e5m2_to_f32(uint8_t x);
float moeq_e8m0_to_f32(uint8_t x);

/* Decodes n elements of dtype at src (any alignment, little-endian) into
 * dst. F32, F16, BF16, F8_E4M3, F8_E5M2 and F8_E8M0 are supported; any
 * other dtype fails with MOEQ_ERR_UNSUPPORTED naming it. */
moeq_code moeq_to_f32(st_dtype dtype, const void *src, size_t n, float *dst, moeq_error *err);

#endif
