/* dtype.c: fp32 <-> bf16/f16 and 8-bit float decoding, bit-exact. */
#include "common/dtype.h"

#include <math.h>
#include <string.h>

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float moeq_bf16_to_f32(uint16_t x)
{
    return f32_from_bits((uint32_t)x << 16);
}

uint16_t moeq_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    /* Adding 0x7fff plus the kept lowest bit rounds half to even; a carry
     * into the exponent is the correct next binade, or inf on overflow. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float moeq_f16_to_f32(uint16_t x)
{
    uint32_t sign = (uint32_t)(x & 0x8000u) << 16;
    uint32_t exp = (x >> 10) & 0x1fu;
    uint32_t mant = x & 0x3ffu;
    if (exp == 0x1f)
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) /* zero or subnormal: mant * 2^-24, exact in fp32 */
        return sign ? -ldexpf((float)mant, -24) : ldexpf((float)mant, -24);
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* Shifts m right by shift bits, rounding to nearest, ties to even. */
static uint32_t shift_round_even(uint32_t m, unsigned shift)
{
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return q;
}

uint16_t moeq_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x47800000u) /* >= 2^16: beyond every rounding to max 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) /* >= 2^-14: normal; rebias 127 -> 15, carry may reach inf */
        return (uint16_t)(sign | shift_round_even(a - 0x38000000u, 13));
    unsigned exp = a >> 23;
    if (exp < 102) /* < 2^-25: rounds to zero (2^-25 itself ties to even 0) */
        return sign;
    /* Subnormal: value = (mant | 2^23) * 2^(exp-150) in units of 2^-24; a
     * round up to 0x400 is the smallest normal, which is its encoding. */
    return (uint16_t)(sign | shift_round_even((a & 0x7fffffu) | 0x800000u, 126u - exp));
}

float moeq_f8e4m3_to_f32(uint8_t x)
{
    unsigned exp = (x >> 3) & 0xfu, mant = x & 0x7u;
    float v;
    if ((x & 0x7fu) == 0x7fu)
        v = NAN;
    else if (exp == 0)
        v = ldexpf((float)mant, -9);
    else
        v = ldexpf((float)(8u + mant), (int)exp - 10);
    return (x & 0x80u) ? -v : v;
}

float moeq_f8e5m2_to_f32(uint8_t x)
{
    /* E5M2 is the top byte of an IEEE binary16. */
    return moeq_f16_to_f32((uint16_t)(x << 8));
}

float moeq_e8m0_to_f32(uint8_t x)
{
    if (x == 0xffu)
        return NAN;
    if (x == 0) /* 2^-127 is an fp32 subnormal */
        return f32_from_bits(0x00400000u);
    return f32_from_bits((uint32_t)x << 23);
}

static uint16_t load_u16_le(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

moeq_code moeq_to_f32(st_dtype dtype, const void *src, size_t n, float *dst, moeq_error *err)
{
    const unsigned char *p = src;
    switch (dtype) {
    case ST_F32:
        if (n)
            memcpy(dst, p, n * sizeof *dst);
        return MOEQ_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = moeq_f16_to_f32(load_u16_le(p + 2 * i));
        return MOEQ_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = moeq_bf16_to_f32(load_u16_le(p + 2 * i));
        return MOEQ_OK;
    case ST_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = moeq_f8e4m3_to_f32(p[i]);
        return MOEQ_OK;
    case ST_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = moeq_f8e5m2_to_f32(p[i]);
        return MOEQ_OK;
    case ST_F8_E8M0:
        for (size_t i = 0; i < n; i++)
            dst[i] = moeq_e8m0_to_f32(p[i]);
        return MOEQ_OK;
    default:
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED, "cannot decode dtype %s to fp32",
                         st_dtype_name(dtype));
    }
}
