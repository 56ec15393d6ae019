/* mxfp4.c: MXFP4 dequantization (see mxfp4.h). */
#include "model/mxfp4.h"

#include <math.h>

float moeq_fp4_e2m1_to_f32(unsigned c)
{
    /* E2M1, bias 1: exponent 0 is subnormal (0, 0.5), no inf or NaN. */
    static const float magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = magnitude[c & 7u];
    return (c & 8u) ? -v : v;
}

moeq_code moeq_mxfp4_dequant(const uint8_t *blocks, const uint8_t *scales, int64_t rows,
                             int64_t groups, float *out, const char *what, moeq_error *err)
{
    float lut[16];
    for (unsigned c = 0; c < 16; c++)
        lut[c] = moeq_fp4_e2m1_to_f32(c);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < groups; g++) {
            uint8_t s = scales[r * groups + g];
            if (s == 0xFF)
                return moeq_fail(err, MOEQ_ERR_FORMAT,
                                 "%s: scale of row %lld, block %lld is 0xFF (NaN in E8M0)", what,
                                 (long long)r, (long long)g);
            /* Every FP4 value times 2^(s - 127) is an fp32 number (the
             * smallest, 0.5 * 2^-127, is a subnormal): exact. */
            const uint8_t *b = blocks + (r * groups + g) * (MOEQ_MXFP4_BLOCK / 2);
            float *o = out + r * groups * MOEQ_MXFP4_BLOCK + g * MOEQ_MXFP4_BLOCK;
            int e = (int)s - 127;
            for (int k = 0; k < MOEQ_MXFP4_BLOCK / 2; k++) {
                o[2 * k] = ldexpf(lut[b[k] & 0x0Fu], e);
                o[2 * k + 1] = ldexpf(lut[b[k] >> 4], e);
            }
        }
    return MOEQ_OK;
}
