/* test_rope.c: RoPE inverse frequencies and attention factors of each variant
 * (model/rope.c). Expected values that are not exact were computed
 * independently in float64 with numpy from the formulas in transformers'
 * modeling_rope_utils.py, as noted at each; moeq computes in float32 like
 * transformers, hence the stated relative tolerances. */
#include "test.h"

#include "model/rope.h"

static moeq_rope_params params(moeq_rope_type type, double theta, int rotary_dim)
{
    moeq_rope_params p = {0};
    p.type = type;
    p.theta = theta;
    p.rotary_dim = rotary_dim;
    p.factor = 1.0;
    p.truncate = 1;
    return p;
}

static void test_type_names_map_to_variants(void)
{
    moeq_rope_type t = MOEQ_ROPE_LLAMA3;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_rope_type_from_name("default", &t, &err), MOEQ_OK);
    CHECK_INT_EQ(t, MOEQ_ROPE_DEFAULT);
    CHECK_INT_EQ(moeq_rope_type_from_name("linear", &t, &err), MOEQ_OK);
    CHECK_INT_EQ(t, MOEQ_ROPE_LINEAR);
    CHECK_INT_EQ(moeq_rope_type_from_name("dynamic", &t, &err), MOEQ_OK);
    CHECK_INT_EQ(t, MOEQ_ROPE_DYNAMIC);
    CHECK_INT_EQ(moeq_rope_type_from_name("yarn", &t, &err), MOEQ_OK);
    CHECK_INT_EQ(t, MOEQ_ROPE_YARN);
    CHECK_INT_EQ(moeq_rope_type_from_name("llama3", &t, &err), MOEQ_OK);
    CHECK_INT_EQ(t, MOEQ_ROPE_LLAMA3);
}

static void test_unknown_type_name_is_unsupported_and_named(void)
{
    moeq_rope_type t;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_rope_type_from_name("longrope", &t, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "longrope");
}

static void test_default_inv_freq_is_theta_power(void)
{
    /* 1 / 10000 ** (2i / 8) = 1, 0.1, 0.01, 0.001 */
    moeq_rope_params p = params(MOEQ_ROPE_DEFAULT, 10000.0, 8);
    float inv[4], af = 0;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(inv[0], 1.0, 0, 1e-7);
    CHECK_NEAR(inv[1], 0.1, 0, 1e-7);
    CHECK_NEAR(inv[2], 0.01, 0, 1e-7);
    CHECK_NEAR(inv[3], 0.001, 0, 1e-7);
    CHECK(af == 1.0f);
}

static void test_default_inv_freq_matches_torch_bits(void)
{
    /* Bit patterns from transformers 5.24 / torch 2.15 on x86-64:
     * LlamaRotaryEmbedding.compute_default_rope_parameters with rope_theta
     * 1e6, head_dim 128, printed with float.hex; indices 1, 17, 63. */
    moeq_rope_params p = params(MOEQ_ROPE_DEFAULT, 1000000.0, 128);
    float inv[64], af;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK(inv[1] == 0x1.9c975ap-1f);
    CHECK(inv[17] == 0x1.a1835p-6f);
    CHECK(inv[63] == 0x1.4d1c98p-20f);
}

static void test_linear_divides_inv_freq_by_factor(void)
{
    moeq_rope_params base = params(MOEQ_ROPE_DEFAULT, 10000.0, 64);
    moeq_rope_params lin = params(MOEQ_ROPE_LINEAR, 10000.0, 64);
    lin.factor = 2.0;
    float a[32], b[32], af;
    CHECK_INT_EQ(moeq_rope_compute(&base, 0, a, &af, NULL), MOEQ_OK);
    CHECK_INT_EQ(moeq_rope_compute(&lin, 0, b, &af, NULL), MOEQ_OK);
    for (int i = 0; i < 32; i++)
        CHECK(b[i] == a[i] / 2.0f);
    CHECK(af == 1.0f);
}

static void test_llama3_keeps_high_scales_low_and_smooths_band(void)
{
    /* Llama-3.1 settings: theta 500000, head_dim 128, factor 8, low 1, high 4,
     * original 8192. Expected from numpy float64 (the medium band is pairs
     * 29..34): */
    moeq_rope_params p = params(MOEQ_ROPE_LLAMA3, 500000.0, 128);
    p.factor = 8.0;
    p.low_freq_factor = 1.0;
    p.high_freq_factor = 4.0;
    p.original_max_position_embeddings = 8192;
    float inv[64], af;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(inv[0], 1.0, 0, 1e-6);
    CHECK_NEAR(inv[20], 1.6560440081e-02, 0, 1e-6);
    CHECK_NEAR(inv[29], 2.1665707635e-03, 0, 1e-5);
    CHECK_NEAR(inv[32], 5.2484616099e-04, 0, 1e-5);
    CHECK_NEAR(inv[34], 1.7850781277e-04, 0, 1e-5);
    CHECK_NEAR(inv[35], 9.5562123540e-05, 0, 1e-6);
    CHECK_NEAR(inv[40], 3.4281021960e-05, 0, 1e-6);
    CHECK_NEAR(inv[63], 3.0689259889e-07, 0, 1e-6);
    CHECK(af == 1.0f);
}

static void test_yarn_ramps_between_extrapolation_and_interpolation(void)
{
    /* theta 10000, dim 64, factor 4, original 4096, beta 32/1 (defaults):
     * correction range floor(10.47) = 10 .. ceil(22.51) = 23. numpy float64. */
    moeq_rope_params p = params(MOEQ_ROPE_YARN, 10000.0, 64);
    p.factor = 4.0;
    p.original_max_position_embeddings = 4096;
    float inv[32], af;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(inv[0], 1.0, 0, 1e-6);
    CHECK_NEAR(inv[8], 1.0000000000e-01, 0, 1e-6);
    CHECK_NEAR(inv[12], 2.7973994686e-02, 0, 1e-6);
    CHECK_NEAR(inv[16], 6.5384615385e-03, 0, 1e-6);
    CHECK_NEAR(inv[20], 1.3378867024e-03, 0, 1e-6);
    CHECK_NEAR(inv[31], 3.3338035804e-05, 0, 1e-6);
}

static void test_yarn_attention_factor_defaults_to_mscale_of_factor(void)
{
    /* 0.1 * ln(4) + 1 */
    moeq_rope_params p = params(MOEQ_ROPE_YARN, 10000.0, 64);
    p.factor = 4.0;
    p.original_max_position_embeddings = 4096;
    float inv[32], af = 0;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(af, 0.1 * log(4.0) + 1.0, 0, 1e-7);
}

static void test_yarn_attention_factor_is_mscale_ratio_when_both_given(void)
{
    /* DeepSeek-V3: mscale = mscale_all_dim = 1 gives exactly 1. */
    moeq_rope_params p = params(MOEQ_ROPE_YARN, 10000.0, 64);
    p.factor = 40.0;
    p.mscale = 1.0;
    p.mscale_all_dim = 1.0;
    p.original_max_position_embeddings = 4096;
    float inv[32], af = 0;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK(af == 1.0f);
    p.mscale = 0.707;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(af, (0.1 * 0.707 * log(40.0) + 1) / (0.1 * log(40.0) + 1), 0, 1e-7);
}

static void test_yarn_explicit_attention_factor_wins(void)
{
    moeq_rope_params p = params(MOEQ_ROPE_YARN, 10000.0, 64);
    p.factor = 4.0;
    p.attention_factor = 0.5;
    p.original_max_position_embeddings = 4096;
    float inv[32], af = 0;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK(af == 0.5f);
}

static void test_dynamic_equals_default_within_max_positions(void)
{
    moeq_rope_params base = params(MOEQ_ROPE_DEFAULT, 10000.0, 64);
    moeq_rope_params dyn = params(MOEQ_ROPE_DYNAMIC, 10000.0, 64);
    dyn.factor = 2.0;
    dyn.max_position_embeddings = 4096;
    float a[32], b[32], af;
    CHECK_INT_EQ(moeq_rope_compute(&base, 0, a, &af, NULL), MOEQ_OK);
    CHECK_INT_EQ(moeq_rope_compute(&dyn, 4096, b, &af, NULL), MOEQ_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
}

static void test_dynamic_grows_base_past_max_positions(void)
{
    /* seq_len 8192 = 2 * max with factor 2: base * 3 ** (64 / 62); pair 16
     * has exponent 0.5: 1 / sqrt(10000 * 3 ** (64/62)), numpy float64. */
    moeq_rope_params p = params(MOEQ_ROPE_DYNAMIC, 10000.0, 64);
    p.factor = 2.0;
    p.max_position_embeddings = 4096;
    float inv[32], af;
    CHECK_INT_EQ(moeq_rope_compute(&p, 8192, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(inv[0], 1.0, 0, 1e-7);
    CHECK_NEAR(inv[16], 1.0 / sqrt(10000.0 * pow(3.0, 64.0 / 62.0)), 0, 1e-6);
}

static void test_partial_rotary_gives_half_as_many_frequencies(void)
{
    /* GLM-4.5: head_dim 128, partial_rotary_factor 0.5 -> rotary_dim 64, whose
     * frequencies use 64 as the dimension. */
    moeq_rope_params p = params(MOEQ_ROPE_DEFAULT, 10000.0, 64);
    float inv[33], af;
    inv[32] = -1.0f;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, NULL), MOEQ_OK);
    CHECK_NEAR(inv[16], 0.01, 0, 1e-6);
    CHECK(inv[32] == -1.0f);
}

static void test_bad_parameters_are_rejected_by_name(void)
{
    float inv[8], af;
    moeq_error err = {0};
    moeq_rope_params p = params(MOEQ_ROPE_DEFAULT, 10000.0, 7);
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "rotary_dim");
    p = params(MOEQ_ROPE_LLAMA3, 10000.0, 8);
    p.factor = 8.0;
    p.low_freq_factor = 4.0;
    p.high_freq_factor = 1.0;
    p.original_max_position_embeddings = 8192;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "high_freq_factor");
    p = params(MOEQ_ROPE_YARN, 10000.0, 8);
    p.factor = 4.0;
    CHECK_INT_EQ(moeq_rope_compute(&p, 0, inv, &af, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "original_max_position_embeddings");
}

int main(void)
{
    RUN(test_type_names_map_to_variants);
    RUN(test_unknown_type_name_is_unsupported_and_named);
    RUN(test_default_inv_freq_is_theta_power);
    RUN(test_default_inv_freq_matches_torch_bits);
    RUN(test_linear_divides_inv_freq_by_factor);
    RUN(test_llama3_keeps_high_scales_low_and_smooths_band);
    RUN(test_yarn_ramps_between_extrapolation_and_interpolation);
    RUN(test_yarn_attention_factor_defaults_to_mscale_of_factor);
    RUN(test_yarn_attention_factor_is_mscale_ratio_when_both_given);
    RUN(test_yarn_explicit_attention_factor_wins);
    RUN(test_dynamic_equals_default_within_max_positions);
    RUN(test_dynamic_grows_base_past_max_positions);
    RUN(test_partial_rotary_gives_half_as_many_frequencies);
    RUN(test_bad_parameters_are_rejected_by_name);
    return test_summary();
}
