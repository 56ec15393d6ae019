/* test_source_quant.c: sources their publishers ship quantized, dequantized
 * on load: block-scaled FP8 (model/fp8_blocks.c) and gpt-oss's MXFP4 experts
 * (model/mxfp4.c). Expected values come from transformers' own
 * dequantization (tests/golden/quantized_sources.py wrote
 * tests/fixtures/quantized/); moeq must match them bit for bit. The
 * whole-model forwards on these sources are in test_golden.c. */
#include "test.h"
#include "fixture_run.h"

#include "common/fileio.h"
#include "model/fp8_blocks.h"
#include "model/fused_experts.h"
#include "model/model.h"
#include "model/mxfp4.h"
#include "moeq/safetensors.h"

static const char *fixture_path(const char *rel)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", MOEQ_SOURCE_DIR, rel);
    return path;
}

/* Dequantizes case `name` of fp8_cases.safetensors and compares every
 * element's bits with transformers' result. */
static void check_fp8_case(const char *name)
{
    st_file f;
    moeq_error err = {0};
    if (st_file_open(&f, fixture_path("quantized/fp8_cases.safetensors"), &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        return;
    }
    char key[4][128];
    const char *suffix[4] = {"weight", "weight_scale_inv", "expected", "block"};
    const st_tensor *t[4];
    for (int i = 0; i < 4; i++) {
        snprintf(key[i], sizeof key[i], "%s.%s", name, suffix[i]);
        t[i] = st_file_find(&f, key[i]);
        CHECK(t[i] != NULL);
    }
    if (t[0] && t[1] && t[2] && t[3]) {
        int32_t block[2];
        memcpy(block, t[3]->data, sizeof block);
        size_t n = (size_t)(t[0]->shape[0] * t[0]->shape[1]);
        float *got = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
        memcpy(want, t[2]->data, sizeof(float) * n);
        CHECK_INT_EQ(moeq_fp8_block_dequant(t[0], t[1], block[0], block[1], got, &err), MOEQ_OK);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; i++)
            mismatches += memcmp(&got[i], &want[i], sizeof(float)) != 0;
        CHECK_INT_EQ(mismatches, 0);
        free(got);
        free(want);
    }
    st_file_close(&f);
}

static void test_fp8_whole_blocks_match_transformers_bit_for_bit(void)
{
    check_fp8_case("whole");
}

static void test_fp8_partial_last_blocks_match_transformers_bit_for_bit(void)
{
    check_fp8_case("ragged");
}

static void test_fp8_bf16_scales_match_transformers_bit_for_bit(void)
{
    check_fp8_case("ragged_bf16_scale");
}

static void test_fp8_non_square_blocks_match_transformers_bit_for_bit(void)
{
    check_fp8_case("small_blocks");
}

/* Hand-made tensors: a 3 x 5 weight of E4M3 1.0 (0x38) in [2, 2] blocks. */
static void test_fp8_scale_of_a_wrong_shape_is_refused_naming_the_tensor(void)
{
    unsigned char q[15];
    memset(q, 0x38, sizeof q);
    float s[6] = {1, 2, 3, 4, 5, 6};
    st_tensor w = {.name = "layers.0.q_proj.weight", .dtype = ST_F8_E4M3, .ndim = 2,
                   .shape = {3, 5}, .nbytes = 15, .data = q};
    st_tensor sc = {.name = "layers.0.q_proj.weight_scale_inv", .dtype = ST_F32, .ndim = 2,
                    .shape = {3, 2}, .nbytes = 24, .data = s};
    float out[15];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_fp8_block_dequant(&w, &sc, 2, 2, out, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "layers.0.q_proj.weight_scale_inv has shape [3, 2]");
    CHECK_CONTAINS(err.msg, "expected [2, 3]");
    /* The right shape: block (i / 2, j / 2) scales its elements. */
    sc.shape[0] = 2;
    sc.shape[1] = 3;
    CHECK_INT_EQ(moeq_fp8_block_dequant(&w, &sc, 2, 2, out, &err), MOEQ_OK);
    CHECK(out[0] == 1.0f && out[2] == 2.0f && out[4] == 3.0f && out[5 * 2] == 4.0f &&
          out[5 * 2 + 4] == 6.0f);
}

static void test_fp8_scale_of_an_integer_dtype_is_refused(void)
{
    unsigned char q[4] = {0x38, 0x38, 0x38, 0x38};
    int32_t s = 1;
    st_tensor w = {.name = "w", .dtype = ST_F8_E4M3, .ndim = 2, .shape = {2, 2}, .nbytes = 4,
                   .data = q};
    st_tensor sc = {.name = "w_scale_inv", .dtype = ST_I32, .ndim = 2, .shape = {1, 1},
                    .nbytes = 4, .data = &s};
    float out[4];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_fp8_block_dequant(&w, &sc, 128, 128, out, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "w_scale_inv");
    CHECK_CONTAINS(err.msg, "I32");
}

/* Copies the FP8 fixture into dir as one model.safetensors, leaving out
 * `drop` and giving `reshape` (when not NULL) the shape [1, 1]. */
static void rewrite_fp8_fixture(const char *dir, const char *drop, const char *reshape)
{
    static const float one = 1.0f;
    const st_tensor small = {.name = reshape, .dtype = ST_F32, .ndim = 2, .shape = {1, 1},
                             .nbytes = sizeof one, .data = &one};
    char src[4096];
    snprintf(src, sizeof src, "%s", fixture_path("golden/qwen3_moe_fp8"));
    rewrite_checkpoint(src, dir, drop, reshape ? &small : NULL);
}

static moeq_code load_q_proj(const char *dir, moeq_error *err)
{
    moeq_model m;
    moeq_code rc = moeq_model_open(dir, NULL, &m, err);
    if (rc)
        return rc;
    float *q = NULL;
    rc = moeq_model_load_f32(&m, MOEQ_T_Q_PROJ, 0, -1, (int64_t)m.cfg.num_heads * m.cfg.head_dim,
                             m.cfg.hidden_size, &q, err);
    free(q);
    moeq_model_close(&m);
    return rc;
}

static void test_fp8_weight_without_its_scale_is_refused_naming_both(void)
{
    const char *dir = test_tmpdir("fp8_no_scale");
    rewrite_fp8_fixture(dir, "model.layers.0.self_attn.q_proj.weight_scale_inv", NULL);
    moeq_error err = {0};
    CHECK_INT_EQ(load_q_proj(dir, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "model.layers.0.self_attn.q_proj.weight has no scale tensor "
                            "model.layers.0.self_attn.q_proj.weight_scale_inv");
}

static void test_fp8_checkpoint_scale_of_a_wrong_shape_is_refused_naming_it(void)
{
    const char *dir = test_tmpdir("fp8_bad_scale");
    rewrite_fp8_fixture(dir, "", "model.layers.0.self_attn.q_proj.weight_scale_inv");
    moeq_error err = {0};
    CHECK_INT_EQ(load_q_proj(dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "model.layers.0.self_attn.q_proj.weight_scale_inv has shape [1, 1], "
                            "expected [1, 2]");
}

static void test_fp8_checkpoint_weights_equal_the_block_dequantization(void)
{
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture_path("golden/qwen3_moe_fp8"), NULL, &m, &err), MOEQ_OK);
    CHECK_INT_EQ(m.cfg.fp8_block_rows, 128);
    CHECK_INT_EQ(m.cfg.fp8_block_cols, 128);
    int inter = m.cfg.moe_intermediate_size, hidden = m.cfg.hidden_size;
    float *down = NULL;
    CHECK_INT_EQ(moeq_model_load_f32(&m, MOEQ_T_EXPERT_DOWN_PROJ, 0, 3, hidden, inter, &down,
                                     &err),
                 MOEQ_OK);
    const st_tensor *w = st_checkpoint_find(&m.ckpt, "model.layers.0.mlp.experts.3.down_proj.weight");
    const st_tensor *s =
        st_checkpoint_find(&m.ckpt, "model.layers.0.mlp.experts.3.down_proj.weight_scale_inv");
    CHECK(w && s && w->dtype == ST_F8_E4M3 && s->shape[0] == 2 && s->shape[1] == 1);
    float *want = malloc(sizeof(float) * (size_t)hidden * inter);
    CHECK_INT_EQ(moeq_fp8_block_dequant(w, s, 128, 128, want, &err), MOEQ_OK);
    CHECK(down && memcmp(down, want, sizeof(float) * (size_t)hidden * inter) == 0);
    free(want);
    free(down);
    moeq_model_close(&m);
}

static moeq_code parse_with_quantization(const char *qcfg, moeq_config *cfg, moeq_error *err)
{
    char json[1024];
    snprintf(json, sizeof json,
             "{\"model_type\": \"qwen3\", \"hidden_size\": 64, \"num_hidden_layers\": 1, "
             "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 96, "
             "\"quantization_config\": %s}",
             qcfg);
    moeq_arch arch;
    moeq_code rc = moeq_arch_for_model_type("qwen3", &arch, err);
    if (rc)
        return rc;
    rc = moeq_config_parse(json, "cfg.json", &arch, cfg, err);
    moeq_arch_free(&arch);
    return rc;
}

static void test_fp8_quantization_config_gives_the_block_size(void)
{
    moeq_config cfg;
    moeq_error err = {0};
    CHECK_INT_EQ(parse_with_quantization("{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
                                         "\"weight_block_size\": [128, 64]}",
                                         &cfg, &err),
                 MOEQ_OK);
    CHECK_INT_EQ(cfg.fp8_block_rows, 128);
    CHECK_INT_EQ(cfg.fp8_block_cols, 64);
    CHECK_INT_EQ(cfg.quant_bits, 0);
    moeq_config_free(&cfg);
}

static void test_fp8_quantization_config_without_blocks_or_e4m3_is_refused(void)
{
    moeq_config cfg;
    moeq_error err = {0};
    CHECK_INT_EQ(parse_with_quantization("{\"quant_method\": \"fp8\"}", &cfg, &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "without weight_block_size");
    CHECK_INT_EQ(parse_with_quantization("{\"quant_method\": \"fp8\", \"weight_block_size\": "
                                         "[128]}",
                                         &cfg, &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "quantization_config.weight_block_size");
    CHECK_INT_EQ(parse_with_quantization("{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\", "
                                         "\"weight_block_size\": [128, 128]}",
                                         &cfg, &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "quantization_config.fmt e5m2");
}

static void test_mxfp4_decodes_every_code_in_both_nibbles(void)
{
    static const float e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2,
                                   -3, -4, -6};
    uint8_t blocks[32], scales[2] = {128, 0}; /* 2^1 and 2^-127 */
    for (int k = 0; k < 16; k++)
        blocks[k] = blocks[16 + k] = (uint8_t)(k | (15 - k) << 4);
    float out[64];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_mxfp4_dequant(blocks, scales, 1, 2, out, "t", &err), MOEQ_OK);
    int wrong = 0;
    for (int k = 0; k < 16; k++) {
        wrong += out[2 * k] != 2 * e2m1[k] || out[2 * k + 1] != 2 * e2m1[15 - k];
        wrong += out[32 + 2 * k] != ldexpf(e2m1[k], -127) ||
                 out[32 + 2 * k + 1] != ldexpf(e2m1[15 - k], -127);
    }
    CHECK_INT_EQ(wrong, 0);
    CHECK(out[32 + 2] == ldexpf(1.0f, -128) && out[32 + 2] > 0); /* 0.5 * 2^-127: subnormal */
    CHECK(signbit(out[16]) && out[16] == 0.0f);                  /* code 8 is -0 */
}

static void test_mxfp4_nan_scale_is_refused_naming_the_tensor(void)
{
    uint8_t blocks[32] = {0}, scales[2] = {127, 0xFF};
    float out[64];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_mxfp4_dequant(blocks, scales, 2, 1, out, "tensor x_scales", &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "tensor x_scales: scale of row 1, block 0 is 0xFF");
}

/* Every expert of layer 0 of the MXFP4 fixture against transformers'
 * convert_moe_packed_tensors: gate_up_proj [E, H, 2I], down_proj [E, I, H]. */
static void test_mxfp4_experts_match_transformers_bit_for_bit(void)
{
    moeq_model m;
    st_file ref;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture_path("golden/gpt_oss_mxfp4"), NULL, &m, &err), MOEQ_OK);
    CHECK_INT_EQ(st_file_open(&ref, fixture_path("quantized/mxfp4_reference.safetensors"), &err),
                 MOEQ_OK);
    CHECK(m.cfg.mxfp4);
    const int E = m.cfg.num_experts, H = m.cfg.hidden_size, I = m.cfg.moe_intermediate_size;
    const st_tensor *gu = st_file_find(&ref, "gate_up_proj"), *dn = st_file_find(&ref, "down_proj");
    CHECK(gu && dn && gu->dtype == ST_F32 && gu->nbytes == sizeof(float) * E * H * 2 * I);
    CHECK(!st_checkpoint_find(&m.ckpt, "model.layers.0.mlp.experts.gate_up_proj") &&
          st_checkpoint_find(&m.ckpt, "model.layers.0.mlp.experts.gate_up_proj_blocks"));
    size_t wrong = 0;
    for (int e = 0; gu && dn && e < E; e++) {
        moeq_mlp_weights w = {0};
        CHECK_INT_EQ(moeq_fused_expert_load(&m, 0, e, &w, &err), MOEQ_OK);
        const float *g = (const float *)gu->data + (size_t)e * H * 2 * I;
        const float *d = (const float *)dn->data + (size_t)e * I * H;
        for (int h = 0; w.gate && h < H; h++)
            for (int i = 0; i < I; i++)
                wrong += memcmp(&w.gate[i * H + h], &g[h * 2 * I + 2 * i], 4) != 0 ||
                         memcmp(&w.up[i * H + h], &g[h * 2 * I + 2 * i + 1], 4) != 0 ||
                         memcmp(&w.down[h * I + i], &d[i * H + h], 4) != 0;
        free(w.gate);
        free(w.up);
        free(w.down);
        free(w.gate_bias);
        free(w.up_bias);
        free(w.down_bias);
    }
    CHECK_INT_EQ(wrong, 0);
    st_file_close(&ref);
    moeq_model_close(&m);
}

int main(void)
{
    RUN(test_fp8_whole_blocks_match_transformers_bit_for_bit);
    RUN(test_fp8_partial_last_blocks_match_transformers_bit_for_bit);
    RUN(test_fp8_bf16_scales_match_transformers_bit_for_bit);
    RUN(test_fp8_non_square_blocks_match_transformers_bit_for_bit);
    RUN(test_fp8_scale_of_a_wrong_shape_is_refused_naming_the_tensor);
    RUN(test_fp8_scale_of_an_integer_dtype_is_refused);
    RUN(test_fp8_weight_without_its_scale_is_refused_naming_both);
    RUN(test_fp8_checkpoint_scale_of_a_wrong_shape_is_refused_naming_it);
    RUN(test_fp8_checkpoint_weights_equal_the_block_dequantization);
    RUN(test_fp8_quantization_config_gives_the_block_size);
    RUN(test_fp8_quantization_config_without_blocks_or_e4m3_is_refused);
    RUN(test_mxfp4_decodes_every_code_in_both_nibbles);
    RUN(test_mxfp4_nan_scale_is_refused_naming_the_tensor);
    RUN(test_mxfp4_experts_match_transformers_bit_for_bit);
    return test_summary();
}
