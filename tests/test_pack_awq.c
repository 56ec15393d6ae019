/* test_pack_awq.c: AWQ GEMM packing (src/quant/pack_awq.c) as a
 * specification: exact words for a small hand-computed case (the AutoAWQ
 * nibble order 0 2 4 6 1 3 5 7, zero points stored without offset), the
 * round trip on fresh random weights (seed printed), and the errors for
 * what the format cannot hold. tests/peer/check_formats_peer.py checks the
 * same tensors against GPTQModel's AWQ dequantization. */
#include "test.h"
#include "pack_fixture.h"

#include "common/dtype.h"
#include "quant/pack_awq.h"

static test_rng rng;

/* Every field of a 4-bit weight at random; fp16 scales, natural g_idx (AWQ
 * has none). */
static void random_quantized(moeq_quantized *q, int rows, int cols, int group_size)
{
    pack_random_quantized(&rng, q, rows, cols, 4, group_size, 0, 0);
}

/* pack_hand_quantized_8x16: [8 out, 16 in], one group, code (o, c) =
 * (o + c) mod 16, zero (o) = o + 1, scale (o) = 0.5 + o. By hand: the word
 * of input c holds, nibble 0 upward, outputs 0 2 4 6 1 3 5 7; c = 0:
 * 0 2 4 6 1 3 5 7 -> 0x75316420; c = 1: 1 3 5 7 2 4 6 8 -> 0x86427531;
 * c = 9: 9 B D F A C E 0 -> 0x0ECAFDB9; zeros 1 3 5 7 2 4 6 8 -> 0x86427531. */
static void test_words_match_hand_computed_values(void)
{
    moeq_quantized q;
    moeq_packed_awq p;
    moeq_error err;
    pack_hand_quantized_8x16(&q);
    CHECK_INT_EQ(moeq_pack_awq(&q, &p, &err), MOEQ_OK);
    CHECK_INT_EQ((uint32_t)p.qweight[0], 0x75316420u);
    CHECK_INT_EQ((uint32_t)p.qweight[1], 0x86427531u);
    CHECK_INT_EQ((uint32_t)p.qweight[9], 0x0ECAFDB9u);
    CHECK_INT_EQ((uint32_t)p.qzeros[0], 0x86427531u);
    CHECK_INT_EQ(p.scales[0], 0x3800); /* 0.5 */
    CHECK_INT_EQ(p.scales[1], 0x3E00); /* 1.5 */
    moeq_quantized_free(&q);
    moeq_packed_awq_free(&p);
}

/* Zero points 0 and 15 are stored as they are (no v1-style offset). */
static void test_zero_points_are_stored_without_offset(void)
{
    moeq_quantized q;
    moeq_packed_awq p;
    moeq_error err;
    random_quantized(&q, 16, 32, 32);
    for (int o = 0; o < 16; o++)
        q.zeros[o] = o % 2 ? 15 : 0;
    CHECK_INT_EQ(moeq_pack_awq(&q, &p, &err), MOEQ_OK);
    /* outputs 0 2 4 6 are even (0), 1 3 5 7 odd (15): nibbles 0-3 are 0,
     * nibbles 4-7 are F */
    CHECK_INT_EQ((uint32_t)p.qzeros[0], 0xFFFF0000u);
    CHECK_INT_EQ((uint32_t)p.qzeros[1], 0xFFFF0000u);
    moeq_quantized_free(&q);
    moeq_packed_awq_free(&p);
}

static void test_round_trip_restores_every_field(void)
{
    const int groups[] = {-1, 32, 128};
    for (int k = 0; k < 3; k++) {
        moeq_quantized q, back;
        moeq_packed_awq p;
        moeq_error err;
        random_quantized(&q, 72, 256, groups[k]);
        CHECK_INT_EQ(moeq_pack_awq(&q, &p, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_unpack_awq(&p, &back, &err), MOEQ_OK);
        CHECK(memcmp(back.codes, q.codes, (size_t)72 * 256) == 0);
        CHECK(memcmp(back.zeros, q.zeros, sizeof(int32_t) * (size_t)q.n_groups * 72) == 0);
        CHECK(memcmp(back.scales, q.scales, sizeof(float) * (size_t)q.n_groups * 72) == 0);
        CHECK(memcmp(back.g_idx, q.g_idx, sizeof(int32_t) * 256) == 0);
        moeq_quantized_free(&q);
        moeq_quantized_free(&back);
        moeq_packed_awq_free(&p);
    }
}

static void test_what_the_format_cannot_hold_is_rejected(void)
{
    moeq_error err;
    moeq_quantized q;
    moeq_packed_awq p;
    CHECK_INT_EQ(moeq_awq_check_dims(3, 64, 64, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "4-bit weights only, not 3-bit");
    CHECK_INT_EQ(moeq_awq_check_dims(4, 64, 20, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "out_features = 20");
    random_quantized(&q, 8, 64, 32);
    q.g_idx[3] = 1; /* act-order with dynamic groups: needs g_idx */
    CHECK_INT_EQ(moeq_pack_awq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "g_idx[3] = 1");
    q.g_idx[3] = 0;
    q.scales[5] = 0.1f; /* not an fp16 value */
    CHECK_INT_EQ(moeq_pack_awq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "not exactly representable in F16");
    CHECK(p.qweight == NULL);
    moeq_quantized_free(&q);
}

int main(void)
{
    pack_seed_rng(&rng);
    RUN(test_words_match_hand_computed_values);
    RUN(test_zero_points_are_stored_without_offset);
    RUN(test_round_trip_restores_every_field);
    RUN(test_what_the_format_cannot_hold_is_rejected);
    return test_summary();
}
