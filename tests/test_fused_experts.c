/* test_fused_experts.c: fused expert tensors (gpt-oss, Llama-4) and the
 * per-layer attention settings of both as read from a checkpoint: bad
 * tensors are refused by name, layer_types, no_rope_layers and moe_layers
 * pick their layers. The forwards themselves are checked against
 * transformers in test_golden.c. */
#include "test.h"
#include "fixture_run.h"

#include "common/fileio.h"
#include "model/fused_experts.h"
#include "model/model.h"
#include "model/weights.h"

static const char *fixture(void)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/gpt_oss", MOEQ_SOURCE_DIR);
    return dir;
}

/* Copies the gpt_oss fixture into dir, leaving out `drop` and replacing
 * `reshape` (when not NULL) by a [2, 2] BF16 tensor of zeros. */
static void rewrite_fixture(const char *dir, const char *drop, const char *reshape)
{
    static const uint16_t zeros[4] = {0};
    const st_tensor small = {.name = reshape, .dtype = ST_BF16, .ndim = 2, .shape = {2, 2},
                             .nbytes = sizeof zeros, .data = zeros};
    rewrite_checkpoint(fixture(), dir, drop, reshape ? &small : NULL);
}

static moeq_code load_layer(const char *dir, int layer, moeq_error *err)
{
    moeq_model m;
    moeq_code rc = moeq_model_open(dir, NULL, &m, err);
    if (rc)
        return rc;
    moeq_layer_weights lw;
    rc = moeq_layer_weights_load(&m, layer, &lw, err);
    if (!rc)
        moeq_layer_weights_free(&lw);
    moeq_model_close(&m);
    return rc;
}

static void test_missing_fused_gate_up_is_refused_naming_it(void)
{
    const char *dir = test_tmpdir("fused_missing");
    rewrite_fixture(dir, "model.layers.1.mlp.experts.gate_up_proj", NULL);
    moeq_error err = {0};
    CHECK_INT_EQ(load_layer(dir, 0, &err), MOEQ_OK);
    CHECK_INT_EQ(load_layer(dir, 1, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "model.layers.1.mlp.experts.gate_up_proj (experts_gate_up of layer 1) "
                            "is missing");
}

static void test_misshaped_fused_bias_is_refused_naming_it(void)
{
    const char *dir = test_tmpdir("fused_bias_shape");
    rewrite_fixture(dir, "", "model.layers.0.mlp.experts.down_proj_bias");
    moeq_error err = {0};
    CHECK_INT_EQ(load_layer(dir, 0, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "model.layers.0.mlp.experts.down_proj_bias has shape [2, 2], "
                            "expected [4, 64]");
}

static void test_fused_expert_is_split_into_gate_up_and_down(void)
{
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture(), NULL, &m, &err), MOEQ_OK);
    CHECK(moeq_experts_fused(&m));
    moeq_mlp_weights w = {0};
    CHECK_INT_EQ(moeq_fused_expert_load(&m, 1, 2, &w, &err), MOEQ_OK);
    const st_tensor *gu = st_checkpoint_find(&m.ckpt, "model.layers.1.mlp.experts.gate_up_proj");
    const st_tensor *dn = st_checkpoint_find(&m.ckpt, "model.layers.1.mlp.experts.down_proj");
    CHECK(gu && dn && gu->dtype == ST_BF16);
    /* gate_up[e=2][h][c]: gate row i, input h is column 2i; up is 2i + 1.
     * down[e=2][i][h] is down row h, input i. */
    const uint16_t *g = (const uint16_t *)gu->data + 2 * 64 * 64;
    const uint16_t *d = (const uint16_t *)dn->data + 2 * 32 * 64;
    int wrong = 0;
    for (int h = 0; h < 64; h++)
        for (int i = 0; i < 32; i++) {
            float eg, eu, ed;
            uint32_t bg = (uint32_t)g[h * 64 + 2 * i] << 16, bu = (uint32_t)g[h * 64 + 2 * i + 1] << 16,
                     bd = (uint32_t)d[i * 64 + h] << 16;
            memcpy(&eg, &bg, 4);
            memcpy(&eu, &bu, 4);
            memcpy(&ed, &bd, 4);
            wrong += w.gate[i * 64 + h] != eg || w.up[i * 64 + h] != eu ||
                     w.down[h * 32 + i] != ed;
        }
    CHECK_INT_EQ(wrong, 0);
    CHECK(w.gate_bias && w.up_bias && w.down_bias);
    free(w.gate);
    free(w.up);
    free(w.down);
    free(w.gate_bias);
    free(w.up_bias);
    free(w.down_bias);
    moeq_model_close(&m);
}

static void test_layer_types_pick_the_sliding_layers(void)
{
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture(), NULL, &m, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_config_layer_window(&m.cfg, 0), 8);
    CHECK_INT_EQ(moeq_config_layer_window(&m.cfg, 1), 0);
    CHECK_INT_EQ(moeq_config_layer_window(&m.cfg, 2), 8);
    CHECK(m.cfg.router_bias && m.cfg.mlp_bias);
    CHECK(m.cfg.swiglu_limit == 0.25f && m.cfg.swiglu_alpha == 1.702f);
    moeq_model_close(&m);
}

static void test_unknown_layer_type_is_refused_naming_it(void)
{
    moeq_arch arch;
    moeq_config cfg;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_arch_for_model_type("gpt_oss", &arch, &err), MOEQ_OK);
    const char *json = "{\"model_type\": \"gpt_oss\", \"hidden_size\": 64, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 32, "
                       "\"num_local_experts\": 4, \"num_experts_per_tok\": 2, \"sliding_window\": 8, "
                       "\"layer_types\": [\"sliding_attention\", \"linear_attention\"]}";
    CHECK_INT_EQ(moeq_config_parse(json, "cfg.json", &arch, &cfg, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "layer_types[1] = linear_attention");
    moeq_arch_free(&arch);
}

static void test_llama4_config_reads_its_layer_lists(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/llama4_text", MOEQ_SOURCE_DIR);
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_OK);
    const moeq_config *c = &m.cfg;
    const unsigned char moe[4] = {1, 1, 0, 1}, rope[4] = {1, 1, 0, 1}, chunked[4] = {1, 1, 0, 1};
    CHECK(!memcmp(c->layer_is_moe, moe, 4) && c->layer_rope && !memcmp(c->layer_rope, rope, 4) &&
          c->layer_chunked && !memcmp(c->layer_chunked, chunked, 4));
    CHECK_INT_EQ(moeq_config_layer_rope(c, 2), 0);
    CHECK_INT_EQ(c->attention_chunk_size, 8);
    CHECK(c->rope_interleaved && c->qk_l2_norm && c->attn_temperature_tuning);
    CHECK(c->floor_scale == 4.0f && c->attn_scale == 0.5f);
    CHECK_INT_EQ(c->router, MOEQ_ROUTER_TOPK_SIGMOID_INPUT);
    CHECK_INT_EQ(c->intermediate_size, 96);
    CHECK_INT_EQ(c->moe_intermediate_size, 32);
    CHECK_INT_EQ(c->shared_expert_intermediate_size, 32);
    /* Experts: gate is the first, up the second half of gate_up's columns. */
    moeq_mlp_weights w = {0};
    CHECK_INT_EQ(moeq_fused_expert_load(&m, 3, 1, &w, &err), MOEQ_OK);
    const st_tensor *gu =
        st_checkpoint_find(&m.ckpt, "model.layers.3.feed_forward.experts.gate_up_proj");
    const uint16_t *g = (const uint16_t *)gu->data + 1 * 64 * 64;
    int wrong = 0;
    for (int h = 0; w.gate && h < 64; h++)
        for (int i = 0; i < 32; i++) {
            uint32_t bg = (uint32_t)g[h * 64 + i] << 16, bu = (uint32_t)g[h * 64 + 32 + i] << 16;
            float eg, eu;
            memcpy(&eg, &bg, 4);
            memcpy(&eu, &bu, 4);
            wrong += w.gate[i * 64 + h] != eg || w.up[i * 64 + h] != eu;
        }
    CHECK_INT_EQ(wrong, 0);
    CHECK(!w.gate_bias);
    free(w.gate);
    free(w.up);
    free(w.down);
    moeq_model_close(&m);
}

static void test_llama4_bad_layer_lists_are_refused_naming_them(void)
{
    moeq_arch arch;
    moeq_config cfg;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_arch_for_model_type("llama4_text", &arch, &err), MOEQ_OK);
    const char *base = "{\"model_type\": \"llama4_text\", \"hidden_size\": 64, "
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 10, "
                       "\"intermediate_size\": 32, \"intermediate_size_mlp\": 64, "
                       "\"num_local_experts\": 4, \"num_experts_per_tok\": 1, %s}";
    char json[1024];
    snprintf(json, sizeof json, base, "\"moe_layers\": [0, 2]");
    CHECK_INT_EQ(moeq_config_parse(json, "cfg.json", &arch, &cfg, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "\"moe_layers\"[1] must be a layer index");
    snprintf(json, sizeof json, base, "\"moe_layers\": [0], \"no_rope_layers\": [1]");
    CHECK_INT_EQ(moeq_config_parse(json, "cfg.json", &arch, &cfg, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "\"no_rope_layers\" must be an array of one 0/1 flag per layer");
    snprintf(json, sizeof json, base,
             "\"moe_layers\": [0], \"layer_types\": [\"chunked_attention\", \"full_attention\"]");
    CHECK_INT_EQ(moeq_config_parse(json, "cfg.json", &arch, &cfg, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "layer_types[0] = chunked_attention");
    moeq_arch_free(&arch);
}

int main(void)
{
    RUN(test_missing_fused_gate_up_is_refused_naming_it);
    RUN(test_misshaped_fused_bias_is_refused_naming_it);
    RUN(test_fused_expert_is_split_into_gate_up_and_down);
    RUN(test_layer_types_pick_the_sliding_layers);
    RUN(test_unknown_layer_type_is_refused_naming_it);
    RUN(test_llama4_config_reads_its_layer_lists);
    RUN(test_llama4_bad_layer_lists_are_refused_naming_them);
    return test_summary();
}
