/* test_pack_gptq.c: GPTQ v1 packing (src/quant/pack_gptq.c) as a
 * specification: exact words for tiny hand-computed cases, the layout rule
 * and the round trip on fresh random weights (the seed is printed), the v1
 * zero-point offset, and the errors for shapes the format cannot hold.
 * tests/peer/check_gptq_peer.py checks the same tensors against the peer
 * projects' own dequantization code. */
#include "test.h"
#include "pack_fixture.h"

#include "common/dtype.h"
#include "quant/pack_gptq.h"

static test_rng rng;

/* Every field at random: fp16 scales, and a g_idx in shuffled
 * (act-order-like) order. */
static void random_quantized(moeq_quantized *q, int rows, int cols, int bits, int group_size)
{
    pack_random_quantized(&rng, q, rows, cols, bits, group_size, 0, 1);
}

static void test_round_trip_restores_every_field_for_every_bit_width(void)
{
    const int widths[] = {2, 3, 4, 8};
    for (int k = 0; k < 4; k++) {
        int bits = widths[k];
        moeq_quantized q, back;
        moeq_packed_gptq p;
        moeq_error err;
        random_quantized(&q, 96, 256, bits, 64);
        CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_unpack_gptq(&p, &back, &err), MOEQ_OK);
        CHECK_INT_EQ(back.rows, 96);
        CHECK_INT_EQ(back.cols, 256);
        CHECK_INT_EQ(back.n_groups, 4);
        CHECK(memcmp(back.codes, q.codes, (size_t)96 * 256) == 0);
        CHECK(memcmp(back.zeros, q.zeros, sizeof(int32_t) * 4 * 96) == 0);
        CHECK(memcmp(back.scales, q.scales, sizeof(float) * 4 * 96) == 0);
        CHECK(memcmp(back.g_idx, q.g_idx, sizeof(int32_t) * 256) == 0);
        moeq_quantized_free(&q);
        moeq_quantized_free(&back);
        moeq_packed_gptq_free(&p);
    }
}

/* The 2/4/8-bit rule stated directly (AutoGPTQ qlinear_cuda_old.py pack():
 * input row j of a word at bit bits * (j mod 32/bits); qzeros the same over
 * output columns), checked on random fields. */
static void test_2_4_8_bit_fields_sit_at_bits_times_position_in_their_word(void)
{
    const int widths[] = {2, 4, 8};
    for (int k = 0; k < 3; k++) {
        int bits = widths[k], per_word = 32 / bits;
        uint32_t mask = (1u << bits) - 1u;
        moeq_quantized q;
        moeq_packed_gptq p;
        moeq_error err;
        random_quantized(&q, 48, 128, bits, 32);
        CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
        int bad = 0;
        for (int o = 0; o < 48; o++)
            for (int c = 0; c < 128; c++) {
                uint32_t w = (uint32_t)p.qweight[(size_t)(c / per_word) * 48 + o];
                bad += ((w >> (bits * (c % per_word))) & mask) != q.codes[(size_t)o * 128 + c];
            }
        for (int g = 0; g < 4; g++)
            for (int o = 0; o < 48; o++) {
                uint32_t w = (uint32_t)p.qzeros[(size_t)g * (48 / per_word) + o / per_word];
                uint32_t stored = (w >> (bits * (o % per_word))) & mask;
                bad += stored != ((uint32_t)(q.zeros[(size_t)g * 48 + o] - 1) & mask);
            }
        CHECK_INT_EQ(bad, 0);
        moeq_quantized_free(&q);
        moeq_packed_gptq_free(&p);
    }
}

/* pack_hand_quantized_8x16: 4 bits, [8 out, 16 in], one group, code
 * (o, c) = (o + c) mod 16, zero (o) = o + 1. By hand: qweight[0][o] holds
 * inputs 0..7 as nibbles, lowest first, qweight[1][o] inputs 8..15; qzeros
 * stores zero - 1 = o. */
static void test_4bit_words_match_hand_computed_values(void)
{
    moeq_quantized q;
    moeq_packed_gptq p;
    moeq_error err;
    pack_hand_quantized_8x16(&q);
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_qweight_rows(4, 16), 2);
    CHECK_INT_EQ(moeq_gptq_qzeros_cols(4, 8), 1);
    CHECK_INT_EQ((uint32_t)p.qweight[0 * 8 + 0], 0x76543210u);
    CHECK_INT_EQ((uint32_t)p.qweight[1 * 8 + 0], 0xFEDCBA98u);
    CHECK_INT_EQ((uint32_t)p.qweight[0 * 8 + 1], 0x87654321u);
    CHECK_INT_EQ((uint32_t)p.qweight[1 * 8 + 1], 0x0FEDCBA9u);
    CHECK_INT_EQ((uint32_t)p.qweight[0 * 8 + 7], 0xEDCBA987u);
    CHECK_INT_EQ((uint32_t)p.qweight[1 * 8 + 7], 0x6543210Fu);
    CHECK_INT_EQ((uint32_t)p.qzeros[0], 0x76543210u);
    CHECK_INT_EQ(p.scales[3], 0x4300); /* 3.5 in binary16 */
    CHECK_INT_EQ(p.wrapped_zero_points, 0);
    moeq_quantized_free(&q);
    moeq_packed_gptq_free(&p);
}

/* Codes in the caller's memory (the CUDA loop's pinned buffer) pack the
 * same and survive moeq_quantized_free, which leaves them to their owner
 * (a free() of this stack array would abort under the sanitizers). */
static void test_borrowed_codes_pack_alike_and_are_not_freed(void)
{
    uint8_t codes[8 * 16];
    moeq_quantized own, borrowed;
    moeq_packed_gptq p_own, p_borrowed;
    moeq_error err;
    CHECK_INT_EQ(moeq_quantized_alloc(&own, 8, 16, 4, -1, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_quantized_alloc_codes_in(&borrowed, 8, 16, 4, -1, codes, &err), MOEQ_OK);
    CHECK(borrowed.codes == codes && borrowed.codes_borrowed && !own.codes_borrowed);
    for (int o = 0; o < 8; o++) {
        for (int c = 0; c < 16; c++)
            own.codes[o * 16 + c] = codes[o * 16 + c] = (uint8_t)((3 * o + c) % 16);
        own.zeros[o] = borrowed.zeros[o] = 8;
        own.scales[o] = borrowed.scales[o] = 0.25f;
    }
    for (int c = 0; c < 16; c++)
        own.g_idx[c] = borrowed.g_idx[c] = 0;
    CHECK_INT_EQ(moeq_pack_gptq(&own, &p_own, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_pack_gptq(&borrowed, &p_borrowed, &err), MOEQ_OK);
    CHECK(memcmp(p_own.qweight, p_borrowed.qweight, sizeof(int32_t) * 2 * 8) == 0);
    moeq_quantized_free(&borrowed);
    CHECK(borrowed.codes == NULL);
    CHECK_INT_EQ(codes[5 * 16 + 7], (3 * 5 + 7) % 16);
    moeq_quantized_free(&own);
    moeq_packed_gptq_free(&p_own);
    moeq_packed_gptq_free(&p_borrowed);
}

/* 3 bits, [32 out, 32 in], one group: even output columns hold codes
 * c mod 8, odd ones 7 - c mod 8; zero (o) = (o + 1) mod 8, so qzeros stores
 * o mod 8 (zero 0 wraps to 7). Expected words by hand: field i at bit 3i of
 * the 96-bit little-endian stream; 0,1,..,7 repeated is the 24-bit pattern
 * 0xFAC688 four times, 7,6,..,0 is 0x053977. Cross-checked against
 * AutoGPTQ's pack() loop (qlinear_cuda_old.py), whose field 10 splits 2 + 1
 * bits over words 0/1 and field 21 splits 1 + 2 bits over words 1/2. */
static void test_3bit_words_match_hand_computed_values(void)
{
    moeq_quantized q;
    moeq_packed_gptq p;
    moeq_error err;
    CHECK_INT_EQ(moeq_quantized_alloc(&q, 32, 32, 3, -1, &err), MOEQ_OK);
    for (int o = 0; o < 32; o++) {
        for (int c = 0; c < 32; c++)
            q.codes[o * 32 + c] = (uint8_t)(o % 2 ? 7 - c % 8 : c % 8);
        q.zeros[o] = (o + 1) % 8;
        q.scales[o] = 1.0f;
        q.g_idx[o] = 0;
    }
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
    const uint32_t up[3] = {0x88FAC688u, 0xC688FAC6u, 0xFAC688FAu};
    const uint32_t down[3] = {0x77053977u, 0x39770539u, 0x05397705u};
    for (int k = 0; k < 3; k++) {
        CHECK_INT_EQ((uint32_t)p.qweight[k * 32 + 0], up[k]);
        CHECK_INT_EQ((uint32_t)p.qweight[k * 32 + 1], down[k]);
        CHECK_INT_EQ((uint32_t)p.qweight[k * 32 + 30], up[k]);
        CHECK_INT_EQ((uint32_t)p.qweight[k * 32 + 31], down[k]);
        CHECK_INT_EQ((uint32_t)p.qzeros[k], up[k]);
    }
    CHECK_INT_EQ(p.wrapped_zero_points, 4);
    moeq_quantized back;
    CHECK_INT_EQ(moeq_unpack_gptq(&p, &back, &err), MOEQ_OK);
    CHECK(memcmp(back.codes, q.codes, 32 * 32) == 0);
    CHECK(memcmp(back.zeros, q.zeros, sizeof(int32_t) * 32) == 0);
    moeq_quantized_free(&back);
    moeq_quantized_free(&q);
    moeq_packed_gptq_free(&p);
}

/* v1 stores zero - 1 masked to `bits` bits: zero 0 becomes all ones in its
 * field only (AutoGPTQ's unmasked numpy pack spilled ones into the fields
 * above it), is counted, and unpacks to 0 again. */
static void test_zero_point_is_stored_minus_one_and_zero_wraps_to_all_ones(void)
{
    const int widths[] = {4, 8};
    const uint32_t expected[] = {0x6543210Fu, 0x020100FFu};
    for (int k = 0; k < 2; k++) {
        int bits = widths[k], out = 32 / bits;
        moeq_quantized q, back;
        moeq_packed_gptq p;
        moeq_error err;
        CHECK_INT_EQ(moeq_quantized_alloc(&q, out, 32, bits, -1, &err), MOEQ_OK);
        memset(q.codes, 0, (size_t)out * 32);
        for (int o = 0; o < out; o++) {
            q.zeros[o] = o;
            q.scales[o] = 0.25f;
        }
        memset(q.g_idx, 0, sizeof(int32_t) * 32);
        CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
        CHECK_INT_EQ((uint32_t)p.qzeros[0], expected[k]);
        CHECK_INT_EQ(p.wrapped_zero_points, 1);
        CHECK_INT_EQ(moeq_unpack_gptq(&p, &back, &err), MOEQ_OK);
        CHECK(memcmp(back.zeros, q.zeros, sizeof(int32_t) * (size_t)out) == 0);
        moeq_quantized_free(&back);
        moeq_quantized_free(&q);
        moeq_packed_gptq_free(&p);
    }
}

static void test_dims_the_format_cannot_hold_are_named(void)
{
    moeq_error err;
    CHECK_INT_EQ(moeq_gptq_check_dims(4, 12, 64, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "in_features = 12");
    CHECK_CONTAINS(err.msg, "multiple of 8");
    CHECK_INT_EQ(moeq_gptq_check_dims(4, 64, 12, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "qzeros");
    CHECK_CONTAINS(err.msg, "out_features = 12");
    CHECK_INT_EQ(moeq_gptq_check_dims(3, 48, 32, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "in_features = 48");
    CHECK_CONTAINS(err.msg, "multiple of 32");
    CHECK_INT_EQ(moeq_gptq_check_dims(3, 32, 16, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "out_features = 16");
    CHECK_INT_EQ(moeq_gptq_check_dims(2, 16, 16, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_check_dims(8, 4, 4, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_check_dims(5, 32, 32, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "not 5");

    moeq_quantized q;
    moeq_packed_gptq p;
    random_quantized(&q, 64, 20, 4, -1);
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "in_features = 20");
    CHECK(p.qweight == NULL);
    moeq_quantized_free(&q);
}

static void test_values_the_tensors_cannot_hold_exactly_are_rejected(void)
{
    moeq_quantized q;
    moeq_packed_gptq p;
    moeq_error err;
    random_quantized(&q, 8, 32, 4, 16);
    q.codes[3 * 32 + 5] = 16;
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "code 16 at (row 3, col 5)");
    q.codes[3 * 32 + 5] = 15;
    q.zeros[1 * 8 + 2] = 16;
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "zero point 16 at (group 1, row 2)");
    q.zeros[1 * 8 + 2] = 0;
    q.scales[7] = 0.1f;
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "(group 0, row 7) is not exactly representable in F16");
    q.scales[7] = 0.125f;
    q.g_idx[9] = 2;
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "g_idx[9] = 2");
    q.g_idx[9] = 1;
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
    moeq_quantized_free(&q);
    moeq_packed_gptq_free(&p);
}

static void test_unpack_rejects_inconsistent_tensors(void)
{
    moeq_quantized q, back;
    moeq_packed_gptq p;
    moeq_error err;
    random_quantized(&q, 8, 32, 4, 16);
    CHECK_INT_EQ(moeq_pack_gptq(&q, &p, &err), MOEQ_OK);
    p.g_idx[31] = 5;
    CHECK_INT_EQ(moeq_unpack_gptq(&p, &back, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "g_idx[31] = 5");
    p.g_idx[31] = 1;
    p.group_size = 8;
    CHECK_INT_EQ(moeq_unpack_gptq(&p, &back, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "hold 2 groups, but group_size 8");
    CHECK(back.codes == NULL);
    moeq_quantized_free(&q);
    moeq_packed_gptq_free(&p);
}

int main(void)
{
    pack_seed_rng(&rng);
    RUN(test_round_trip_restores_every_field_for_every_bit_width);
    RUN(test_2_4_8_bit_fields_sit_at_bits_times_position_in_their_word);
    RUN(test_4bit_words_match_hand_computed_values);
    RUN(test_borrowed_codes_pack_alike_and_are_not_freed);
    RUN(test_3bit_words_match_hand_computed_values);
    RUN(test_zero_point_is_stored_minus_one_and_zero_wraps_to_all_ones);
    RUN(test_dims_the_format_cannot_hold_are_named);
    RUN(test_values_the_tensors_cannot_hold_exactly_are_rejected);
    RUN(test_unpack_rejects_inconsistent_tensors);
    return test_summary();
}
