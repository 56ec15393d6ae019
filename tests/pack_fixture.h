/* pack_fixture.h: the quantized weights the packing tests
 * (test_pack_gptq.c, test_pack_awq.c, test_pack_ct.c) pack: every field
 * drawn at random from a seed the test prints, and a small hand-computed
 * case. Include after test.h. */
#ifndef MOEQ_TESTS_PACK_FIXTURE_H
#define MOEQ_TESTS_PACK_FIXTURE_H

#include "common/dtype.h"
#include "quant/gptq.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* rng seeded from MOEQ_TEST_SEED, or from the clock; the seed printed so
 * that a failing run can be repeated. */
static inline void pack_seed_rng(test_rng *rng)
{
    const char *s = getenv("MOEQ_TEST_SEED");
    rng->s = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) * 2654435761u + 1;
    printf("seed %llu (set MOEQ_TEST_SEED to repeat)\n", (unsigned long long)rng->s);
}

/* A quantized weight [rows, cols] with every field drawn from rng: codes
 * and zero points over their whole range, positive normal fp16 scales
 * (exponent field 1..29; bf16_exact: only the mantissa's top 3 bits, so
 * bf16 holds them exactly too), and g_idx in shuffled (act-order-like)
 * order, or natural (column / group_size) when not shuffled. Exits when it
 * cannot allocate. */
static inline void pack_random_quantized(test_rng *rng, moeq_quantized *q, int rows, int cols,
                                         int bits, int group_size, int bf16_exact, int shuffled)
{
    moeq_error err;
    if (moeq_quantized_alloc(q, rows, cols, bits, group_size, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(2);
    }
    const uint64_t levels = 1u << bits;
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        q->codes[i] = (uint8_t)(test_rng_next(rng) % levels);
    for (size_t i = 0; i < (size_t)q->n_groups * rows; i++) {
        q->zeros[i] = (int32_t)(test_rng_next(rng) % levels);
        uint16_t h = (uint16_t)(((1 + test_rng_next(rng) % 29) << 10) |
                                (bf16_exact ? (test_rng_next(rng) & 0x7) << 7
                                            : test_rng_next(rng) & 0x3ff));
        q->scales[i] = moeq_f16_to_f32(h);
    }
    for (int c = 0; c < cols; c++)
        q->g_idx[c] = shuffled ? (int32_t)(test_rng_next(rng) % (uint64_t)q->n_groups)
                               : (group_size > 0 ? c / group_size : 0);
}

/* 4 bits, [8 out, 16 in], one group: code (o, c) = (o + c) mod 16, zero
 * (o) = o + 1, scale (o) = 0.5 + o. */
static inline void pack_hand_quantized_8x16(moeq_quantized *q)
{
    moeq_error err;
    CHECK_INT_EQ(moeq_quantized_alloc(q, 8, 16, 4, -1, &err), MOEQ_OK);
    for (int o = 0; o < 8; o++) {
        for (int c = 0; c < 16; c++)
            q->codes[o * 16 + c] = (uint8_t)((o + c) % 16);
        q->zeros[o] = o + 1;
        q->scales[o] = 0.5f + (float)o;
    }
    for (int c = 0; c < 16; c++)
        q->g_idx[c] = 0;
}

#endif
