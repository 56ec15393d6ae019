/* test_dtype.c: bit-exact float format conversions (common/dtype.c). */
#include "common/dtype.h"
#include "test.h"

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_bf16_decodes_known_values(void)
{
    CHECK(moeq_bf16_to_f32(0x3F80) == 1.0f);
    CHECK(moeq_bf16_to_f32(0xC000) == -2.0f);
    CHECK(moeq_bf16_to_f32(0x0000) == 0.0f);
    CHECK_INT_EQ(bits_of(moeq_bf16_to_f32(0x8000)), 0x80000000u);
    CHECK(moeq_bf16_to_f32(0x7F80) == INFINITY);
    CHECK(moeq_bf16_to_f32(0x3FC0) == 1.5f);
    CHECK(isnan(moeq_bf16_to_f32(0x7FC0)));
}

static void test_f32_to_bf16_rounds_ties_to_even(void)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one, 1. */
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0x3F808000)), 0x3F80);
    /* 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up. */
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0x3F818000)), 0x3F82);
    /* Just above and below halfway go to the nearer value. */
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0x3F808001)), 0x3F81);
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0x3F807FFF)), 0x3F80);
    CHECK_INT_EQ(moeq_f32_to_bf16(-2.0f), 0xC000);
}

static void test_f32_to_bf16_overflows_to_inf_and_keeps_nan(void)
{
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0x7F7FFFFF)), 0x7F80);
    CHECK_INT_EQ(moeq_f32_to_bf16(-INFINITY), 0xFF80);
    /* A NaN whose payload lives only in the low 16 bits must not become inf. */
    uint16_t h = moeq_f32_to_bf16(float_of(0x7F800001));
    CHECK(isnan(moeq_bf16_to_f32(h)));
    CHECK_INT_EQ(moeq_f32_to_bf16(float_of(0xFFC00000)), 0xFFC0);
}

static void test_f16_decodes_known_values(void)
{
    CHECK(moeq_f16_to_f32(0x3C00) == 1.0f);
    CHECK(moeq_f16_to_f32(0xC000) == -2.0f);
    CHECK(moeq_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(moeq_f16_to_f32(0x03FF) == ldexpf(1023.0f, -24));
    CHECK(moeq_f16_to_f32(0x0400) == ldexpf(1.0f, -14));
    CHECK(moeq_f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(moeq_f16_to_f32(0x7C00) == INFINITY);
    CHECK(moeq_f16_to_f32(0xFC00) == -INFINITY);
    CHECK_INT_EQ(bits_of(moeq_f16_to_f32(0x8000)), 0x80000000u);
    CHECK(isnan(moeq_f16_to_f32(0x7E00)));
}

static void test_f32_to_f16_rounds_ties_to_even(void)
{
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: to even, 1. */
    CHECK_INT_EQ(moeq_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3C00);
    /* 1 + 3*2^-11 is halfway between 0x3C01 (odd) and 0x3C02: up. */
    CHECK_INT_EQ(moeq_f32_to_f16(1.0f + 3.0f * ldexpf(1.0f, -11)), 0x3C02);
    /* Subnormal ties: 1.5 * 2^-24 -> 2 * 2^-24; 2.5 * 2^-24 -> 2 * 2^-24. */
    CHECK_INT_EQ(moeq_f32_to_f16(1.5f * ldexpf(1.0f, -24)), 0x0002);
    CHECK_INT_EQ(moeq_f32_to_f16(2.5f * ldexpf(1.0f, -24)), 0x0002);
    /* 2^-25 ties between 0 and the smallest subnormal: to even, 0. */
    CHECK_INT_EQ(moeq_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);
    CHECK_INT_EQ(moeq_f32_to_f16(ldexpf(1.0f, -25) * 1.0000001f), 0x0001);
    CHECK_INT_EQ(moeq_f32_to_f16(-ldexpf(1.0f, -26)), 0x8000);
}

static void test_f32_to_f16_handles_subnormal_boundary_and_overflow(void)
{
    /* The largest subnormal rounding up becomes the smallest normal. */
    CHECK_INT_EQ(moeq_f32_to_f16(ldexpf(1023.75f, -24)), 0x0400);
    CHECK_INT_EQ(moeq_f32_to_f16(65504.0f), 0x7BFF);
    /* 65520 is halfway between 65504 and 65536 (=inf): to even, inf. */
    CHECK_INT_EQ(moeq_f32_to_f16(65519.0f), 0x7BFF);
    CHECK_INT_EQ(moeq_f32_to_f16(65520.0f), 0x7C00);
    CHECK_INT_EQ(moeq_f32_to_f16(1e10f), 0x7C00);
    CHECK_INT_EQ(moeq_f32_to_f16(-1e10f), 0xFC00);
    CHECK_INT_EQ(moeq_f32_to_f16(INFINITY), 0x7C00);
    CHECK(isnan(moeq_f16_to_f32(moeq_f32_to_f16(float_of(0x7F800001)))));
}

static void test_f8e4m3_decodes_known_values(void)
{
    CHECK(moeq_f8e4m3_to_f32(0x7E) == 448.0f);
    CHECK(moeq_f8e4m3_to_f32(0xFE) == -448.0f);
    CHECK(moeq_f8e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    CHECK(moeq_f8e4m3_to_f32(0x07) == 7.0f * ldexpf(1.0f, -9));
    CHECK(moeq_f8e4m3_to_f32(0x08) == ldexpf(1.0f, -6));
    CHECK(moeq_f8e4m3_to_f32(0x38) == 1.0f);
    CHECK(moeq_f8e4m3_to_f32(0x00) == 0.0f);
    /* E4M3FN has no infinity: exponent 15 with mantissa < 7 is finite. */
    CHECK(moeq_f8e4m3_to_f32(0x78) == 256.0f);
    CHECK(isnan(moeq_f8e4m3_to_f32(0x7F)));
    CHECK(isnan(moeq_f8e4m3_to_f32(0xFF)));
}

static void test_f8e5m2_decodes_known_values(void)
{
    CHECK(moeq_f8e5m2_to_f32(0x3C) == 1.0f);
    CHECK(moeq_f8e5m2_to_f32(0x7B) == 57344.0f);
    CHECK(moeq_f8e5m2_to_f32(0x01) == ldexpf(1.0f, -16));
    CHECK(moeq_f8e5m2_to_f32(0x7C) == INFINITY);
    CHECK(moeq_f8e5m2_to_f32(0xFC) == -INFINITY);
    CHECK(isnan(moeq_f8e5m2_to_f32(0x7E)));
}

static void test_e8m0_decodes_powers_of_two(void)
{
    CHECK(moeq_e8m0_to_f32(127) == 1.0f);
    CHECK(moeq_e8m0_to_f32(128) == 2.0f);
    CHECK(moeq_e8m0_to_f32(120) == ldexpf(1.0f, -7));
    CHECK(moeq_e8m0_to_f32(0) == ldexpf(1.0f, -127));
    CHECK(moeq_e8m0_to_f32(254) == ldexpf(1.0f, 127));
    CHECK(isnan(moeq_e8m0_to_f32(0xFF)));
}

static void test_bf16_round_trips_every_pattern(void)
{
    int mismatches = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        int is_nan = (h & 0x7F80) == 0x7F80 && (h & 0x007F);
        uint16_t back = moeq_f32_to_bf16(moeq_bf16_to_f32((uint16_t)h));
        /* A NaN comes back quieted, with its sign and payload otherwise kept. */
        uint16_t want = is_nan ? (uint16_t)(h | 0x0040) : (uint16_t)h;
        mismatches += back != want;
    }
    CHECK_INT_EQ(mismatches, 0);
}

static void test_f16_round_trips_every_pattern(void)
{
    int mismatches = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        int is_nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF);
        uint16_t back = moeq_f32_to_f16(moeq_f16_to_f32((uint16_t)h));
        uint16_t want = is_nan ? (uint16_t)(h | 0x0200) : (uint16_t)h;
        mismatches += back != want;
    }
    CHECK_INT_EQ(mismatches, 0);
}

/* For any finite x, the result r is a nearest representable value: no
 * neighbour of r (one encoding step either way) is strictly closer, and on a
 * tie r has an even mantissa. Values decode exactly, so the distances are
 * exact in double. */
static int is_nearest_even(double x, double r, double below, double above, unsigned r_bits)
{
    double d = fabs(x - r);
    if (fabs(x - below) < d || fabs(x - above) < d)
        return 0;
    if ((fabs(x - below) == d && below != r) || (fabs(x - above) == d && above != r))
        return (r_bits & 1u) == 0;
    return 1;
}

static void test_f32_to_bf16_is_nearest_even_for_random_inputs(void)
{
    test_rng rng = {0x9E3779B97F4A7C15ull};
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        /* Random sign, exponent and mantissa, kept below the top binade;
         * one in four made an exact tie, which random bits almost never hit. */
        uint32_t u = (uint32_t)test_rng_next(&rng);
        if ((u & 0x7F800000u) >= 0x7F000000u)
            u &= 0xBFFFFFFFu;
        if ((u & 3u) == 0)
            u = (u & 0xFFFF0000u) | 0x8000u;
        float x = float_of(u);
        uint16_t r = moeq_f32_to_bf16(x);
        uint16_t mag = r & 0x7FFF;
        uint16_t sign = r & 0x8000;
        double below = mag ? moeq_bf16_to_f32((uint16_t)(sign | (mag - 1))) : -(double)x;
        double above = moeq_bf16_to_f32((uint16_t)(sign | (mag + 1)));
        bad += !is_nearest_even(x, moeq_bf16_to_f32(r), below, above, r);
    }
    CHECK_INT_EQ(bad, 0);
}

static void test_f32_to_f16_is_nearest_even_for_random_inputs(void)
{
    test_rng rng = {0xD1B54A32D192ED03ull};
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        /* Magnitudes from 2^-27 (below the smallest subnormal) up to 2^15. */
        float x = ldexpf(1.0f + 0.5f * (test_rng_uniform(&rng) + 1.0f),
                         (int)(test_rng_next(&rng) % 42) - 27);
        if (test_rng_next(&rng) & 1)
            x = -x;
        uint16_t r = moeq_f32_to_f16(x);
        uint16_t mag = r & 0x7FFF;
        uint16_t sign = r & 0x8000;
        double below = mag ? moeq_f16_to_f32((uint16_t)(sign | (mag - 1))) : -(double)x;
        double above = moeq_f16_to_f32((uint16_t)(sign | (mag + 1)));
        bad += !is_nearest_even(x, moeq_f16_to_f32(r), below, above, r);
    }
    CHECK_INT_EQ(bad, 0);
}

static void test_to_f32_decodes_unaligned_buffers(void)
{
    /* One leading byte puts every 16- and 32-bit element off alignment. */
    unsigned char buf[1 + 3 * 4];
    float want[3] = {1.0f, -2.5f, 65504.0f}, got[3];
    memcpy(buf + 1, want, sizeof want);
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_to_f32(ST_F32, buf + 1, 3, got, &err), MOEQ_OK);
    CHECK(memcmp(got, want, sizeof want) == 0);

    unsigned char bf16[1 + 4] = {0, 0x80, 0x3F, 0x00, 0xC0};
    CHECK_INT_EQ(moeq_to_f32(ST_BF16, bf16 + 1, 2, got, &err), MOEQ_OK);
    CHECK(got[0] == 1.0f && got[1] == -2.0f);

    unsigned char f16[1 + 4] = {0, 0x00, 0x3C, 0x01, 0x00};
    CHECK_INT_EQ(moeq_to_f32(ST_F16, f16 + 1, 2, got, &err), MOEQ_OK);
    CHECK(got[0] == 1.0f && got[1] == ldexpf(1.0f, -24));

    unsigned char f8[3] = {0x7E, 0x38, 0x3C};
    CHECK_INT_EQ(moeq_to_f32(ST_F8_E4M3, f8, 2, got, &err), MOEQ_OK);
    CHECK(got[0] == 448.0f && got[1] == 1.0f);
    CHECK_INT_EQ(moeq_to_f32(ST_F8_E5M2, f8 + 2, 1, got, &err), MOEQ_OK);
    CHECK(got[0] == 1.0f);
    CHECK_INT_EQ(moeq_to_f32(ST_F8_E8M0, f8, 1, got, &err), MOEQ_OK);
    CHECK(got[0] == ldexpf(1.0f, 126 - 127));
}

static void test_to_f32_rejects_integer_dtype_by_name(void)
{
    int32_t src[1] = {7};
    float dst[1];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_to_f32(ST_I32, src, 1, dst, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "I32");
}

int main(void)
{
    RUN(test_bf16_decodes_known_values);
    RUN(test_f32_to_bf16_rounds_ties_to_even);
    RUN(test_f32_to_bf16_overflows_to_inf_and_keeps_nan);
    RUN(test_f16_decodes_known_values);
    RUN(test_f32_to_f16_rounds_ties_to_even);
    RUN(test_f32_to_f16_handles_subnormal_boundary_and_overflow);
    RUN(test_f8e4m3_decodes_known_values);
    RUN(test_f8e5m2_decodes_known_values);
    RUN(test_e8m0_decodes_powers_of_two);
    RUN(test_bf16_round_trips_every_pattern);
    RUN(test_f16_round_trips_every_pattern);
    RUN(test_f32_to_bf16_is_nearest_even_for_random_inputs);
    RUN(test_f32_to_f16_is_nearest_even_for_random_inputs);
    RUN(test_to_f32_decodes_unaligned_buffers);
    RUN(test_to_f32_rejects_integer_dtype_by_name);
    return test_summary();
}
