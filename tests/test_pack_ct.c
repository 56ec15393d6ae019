/* test_pack_ct.c: compressed-tensors pack-quantized packing
 * (src/quant/pack_ct.c) as a specification: exact words for small
 * hand-computed cases (codes along each row, zero points down each group's
 * column, scales [out, groups] in the model's dtype), the round trip for
 * every width on fresh random weights (seed printed), the symmetric form
 * without zero points, and the errors. tests/peer/check_formats_peer.py
 * checks the same tensors against compressed-tensors' own decompression. */
#include "test.h"
#include "pack_fixture.h"

#include "common/dtype.h"
#include "quant/pack_ct.h"

static test_rng rng;

/* Every field at random; scales exact in bf16 and fp16 (the model's dtype
 * may be either), natural g_idx (compressed-tensors keeps none here). */
static void random_quantized(moeq_quantized *q, int rows, int cols, int bits, int group_size)
{
    pack_random_quantized(&rng, q, rows, cols, bits, group_size, 1, 0);
}

/* 4 bits, [8 out, 16 in], groups of 8: code (o, c) = (o + c) mod 16, zero
 * (g, o) = (o + 2 g) mod 16, scale (g, o) = 0.25 (1 + o) + g. By hand: row 0
 * packs inputs 0..7 then 8..15 (0x76543210, 0xFEDCBA98), row 1 (0x87654321,
 * 0x0FEDCBA9); the zero points of group 0 run down outputs 0..7
 * (0x76543210), of group 1 (0x98765432), side by side in one row of
 * weight_zero_point [1, 2]; weight_scale [8, 2] holds (o, g): bf16 0.25 =
 * 0x3E80, 1.25 = 0x3FA0, 0.5 = 0x3F00. */
static void test_4bit_words_match_hand_computed_values(void)
{
    moeq_quantized q;
    moeq_packed_ct p;
    moeq_error err;
    CHECK_INT_EQ(moeq_quantized_alloc(&q, 8, 16, 4, 8, &err), MOEQ_OK);
    for (int o = 0; o < 8; o++) {
        for (int c = 0; c < 16; c++)
            q.codes[o * 16 + c] = (uint8_t)((o + c) % 16);
        for (int g = 0; g < 2; g++) {
            q.zeros[g * 8 + o] = (o + 2 * g) % 16;
            q.scales[g * 8 + o] = 0.25f * (float)(1 + o) + (float)g;
        }
    }
    for (int c = 0; c < 16; c++)
        q.g_idx[c] = c / 8;
    CHECK_INT_EQ(moeq_pack_ct(&q, 0, ST_BF16, &p, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_ct_packed_cols(4, 16), 2);
    CHECK_INT_EQ(moeq_ct_zero_point_rows(4, 8), 1);
    CHECK_INT_EQ((uint32_t)p.weight_packed[0], 0x76543210u);
    CHECK_INT_EQ((uint32_t)p.weight_packed[1], 0xFEDCBA98u);
    CHECK_INT_EQ((uint32_t)p.weight_packed[2], 0x87654321u);
    CHECK_INT_EQ((uint32_t)p.weight_packed[3], 0x0FEDCBA9u);
    CHECK_INT_EQ((uint32_t)p.weight_zero_point[0], 0x76543210u);
    CHECK_INT_EQ((uint32_t)p.weight_zero_point[1], 0x98765432u);
    const uint16_t *sc = p.weight_scale;
    CHECK_INT_EQ(sc[0], 0x3E80); /* (o 0, g 0) 0.25 */
    CHECK_INT_EQ(sc[1], 0x3FA0); /* (o 0, g 1) 1.25 */
    CHECK_INT_EQ(sc[2], 0x3F00); /* (o 1, g 0) 0.5 */
    CHECK_INT_EQ(p.weight_shape[0], 8);
    CHECK_INT_EQ(p.weight_shape[1], 16);
    moeq_quantized_free(&q);
    moeq_packed_ct_free(&p);
}

/* 8 bits: one byte per field, lowest first; a symmetric weight (zero 128 =
 * compressed-tensors' zero point 0) stores no zero point; fp16 scales. */
static void test_8bit_symmetric_words_and_no_zero_point(void)
{
    moeq_quantized q;
    moeq_packed_ct p;
    moeq_error err;
    CHECK_INT_EQ(moeq_quantized_alloc(&q, 4, 8, 8, -1, &err), MOEQ_OK);
    for (int o = 0; o < 4; o++) {
        for (int c = 0; c < 8; c++)
            q.codes[o * 8 + c] = (uint8_t)(16 * o + c);
        q.zeros[o] = 128;
        q.scales[o] = 2.0f;
    }
    for (int c = 0; c < 8; c++)
        q.g_idx[c] = 0;
    CHECK_INT_EQ(moeq_pack_ct(&q, 1, ST_F16, &p, &err), MOEQ_OK);
    CHECK_INT_EQ((uint32_t)p.weight_packed[0], 0x03020100u);
    CHECK_INT_EQ((uint32_t)p.weight_packed[1], 0x07060504u);
    CHECK_INT_EQ((uint32_t)p.weight_packed[2], 0x13121110u);
    CHECK(p.weight_zero_point == NULL);
    CHECK_INT_EQ(((const uint16_t *)p.weight_scale)[3], 0x4000); /* fp16 2.0 */
    moeq_quantized_free(&q);
    moeq_packed_ct_free(&p);
}

static void test_round_trip_restores_every_field_for_every_width(void)
{
    const int widths[] = {2, 3, 4, 8};
    const st_dtype dtypes[] = {ST_BF16, ST_F16, ST_F32};
    for (int k = 0; k < 4; k++)
        for (int d = 0; d < 3; d++) {
            moeq_quantized q, back;
            moeq_packed_ct p;
            moeq_error err;
            random_quantized(&q, 64, 256, widths[k], 64);
            CHECK_INT_EQ(moeq_pack_ct(&q, 0, dtypes[d], &p, &err), MOEQ_OK);
            CHECK_INT_EQ(moeq_unpack_ct(&p, &back, &err), MOEQ_OK);
            CHECK(memcmp(back.codes, q.codes, (size_t)64 * 256) == 0);
            CHECK(memcmp(back.zeros, q.zeros, sizeof(int32_t) * 4 * 64) == 0);
            CHECK(memcmp(back.scales, q.scales, sizeof(float) * 4 * 64) == 0);
            CHECK(memcmp(back.g_idx, q.g_idx, sizeof(int32_t) * 256) == 0);
            moeq_quantized_free(&q);
            moeq_quantized_free(&back);
            moeq_packed_ct_free(&p);
        }
}

static void test_what_the_format_cannot_hold_is_rejected(void)
{
    moeq_error err;
    moeq_quantized q;
    moeq_packed_ct p;
    random_quantized(&q, 8, 64, 4, 32);
    CHECK_INT_EQ(moeq_pack_ct(&q, 1, ST_BF16, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "symmetric means 8");
    q.scales[2] = moeq_f16_to_f32(0x3C01); /* fp16, but not bf16 */
    CHECK_INT_EQ(moeq_pack_ct(&q, 0, ST_BF16, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "not exactly representable in BF16");
    q.scales[2] = 1.0f;
    q.g_idx[40] = 0;
    CHECK_INT_EQ(moeq_pack_ct(&q, 0, ST_BF16, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "g_idx[40] = 0");
    CHECK(p.weight_packed == NULL);
    moeq_quantized_free(&q);
    random_quantized(&q, 8, 36, 4, -1);
    CHECK_INT_EQ(moeq_pack_ct(&q, 0, ST_BF16, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "in_features = 36");
    moeq_quantized_free(&q);
}

int main(void)
{
    pack_seed_rng(&rng);
    RUN(test_4bit_words_match_hand_computed_values);
    RUN(test_8bit_symmetric_words_and_no_zero_point);
    RUN(test_round_trip_restores_every_field_for_every_width);
    RUN(test_what_the_format_cannot_hold_is_rejected);
    return test_summary();
}
