/* test_config.c: config.json -> model spec through architecture files, in
 * both transformers 4.x and 5.x spellings, and the errors for bad configs
 * and bad architecture files. */
#include "test.h"

#include "model/arch.h"
#include "model/config.h"
#include "model/mla.h"

static moeq_arch builtin(const char *type)
{
    moeq_arch a;
    moeq_error err = {0};
    if (moeq_arch_for_model_type(type, &a, &err) != MOEQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        exit(2);
    }
    return a;
}

/* json (read from path, for the errors) through the built-in architecture
 * of model type `type`: it must parse. The caller frees the config. */
static moeq_config parse_ok(const char *type, const char *json, const char *path)
{
    moeq_arch a = builtin(type);
    moeq_config c;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_config_parse(json, path, &a, &c, &err), MOEQ_OK);
    moeq_arch_free(&a);
    return c;
}

/* Qwen3-30B-A3B's config as transformers 4.x wrote it. */
static const char *QWEN3_MOE_V4 =
    "{\"model_type\": \"qwen3_moe\", \"hidden_size\": 2048, \"num_hidden_layers\": 48,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 4, \"head_dim\": 128,"
    " \"intermediate_size\": 6144, \"moe_intermediate_size\": 768, \"num_experts\": 128,"
    " \"num_experts_per_tok\": 8, \"norm_topk_prob\": true, \"vocab_size\": 151936,"
    " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"rope_scaling\": null,"
    " \"max_position_embeddings\": 40960, \"decoder_sparse_step\": 1, \"mlp_only_layers\": [],"
    " \"tie_word_embeddings\": false, \"attention_bias\": false, \"hidden_act\": \"silu\","
    " \"sliding_window\": null, \"use_sliding_window\": false}";

/* The same model as transformers 5.x writes it. */
static const char *QWEN3_MOE_V5 =
    "{\"model_type\": \"qwen3_moe\", \"hidden_size\": 2048, \"num_hidden_layers\": 48,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 4, \"head_dim\": 128,"
    " \"intermediate_size\": 6144, \"moe_intermediate_size\": 768, \"num_local_experts\": 128,"
    " \"num_experts_per_tok\": 8, \"norm_topk_prob\": true, \"vocab_size\": 151936,"
    " \"rms_norm_eps\": 1e-06, \"rope_parameters\": {\"rope_theta\": 1000000.0,"
    " \"rope_type\": \"default\"}, \"max_position_embeddings\": 40960,"
    " \"decoder_sparse_step\": 1, \"mlp_only_layers\": [], \"tie_word_embeddings\": false}";

static void test_v4_and_v5_spellings_give_the_same_spec(void)
{
    moeq_config c4 = parse_ok("qwen3_moe", QWEN3_MOE_V4, "v4.json");
    moeq_config c5 = parse_ok("qwen3_moe", QWEN3_MOE_V5, "v5.json");
    CHECK_INT_EQ(c4.num_experts, 128);
    CHECK_INT_EQ(c5.num_experts, 128);
    CHECK_INT_EQ(c4.num_experts_per_tok, 8);
    CHECK_INT_EQ(c4.head_dim, 128);
    CHECK_INT_EQ(c4.num_kv_heads, 4);
    CHECK_INT_EQ(c4.moe_intermediate_size, 768);
    CHECK(c4.rope.theta == 1000000.0 && c5.rope.theta == 1000000.0);
    CHECK_INT_EQ(c4.rope.type, MOEQ_ROPE_DEFAULT);
    CHECK_INT_EQ(c5.rope.type, MOEQ_ROPE_DEFAULT);
    CHECK_INT_EQ(c4.rope.rotary_dim, 128);
    CHECK_INT_EQ(c4.qk_norm, 1);
    CHECK_INT_EQ(c4.norm_topk_prob, 1);
    CHECK_NEAR(c4.rms_norm_eps, 1e-6, 0, 1e-6);
    for (int l = 0; l < 48; l++)
        CHECK(c4.layer_is_moe[l] && c5.layer_is_moe[l]);
    moeq_config_free(&c4);
    moeq_config_free(&c5);
}

static void test_n_routed_experts_spelling_is_read(void)
{
    const char *json = "{\"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                       " \"vocab_size\": 100, \"n_routed_experts\": 16, \"num_experts_per_tok\": 4,"
                       " \"moe_intermediate_size\": 32, \"intermediate_size\": 128}";
    moeq_config c = parse_ok("qwen3_moe", json, "c.json");
    CHECK_INT_EQ(c.num_experts, 16);
    moeq_config_free(&c);
}

static void test_head_dim_absent_or_null_is_hidden_over_heads(void)
{
    const char *json = "{\"hidden_size\": 4096, \"num_hidden_layers\": 2, \"num_attention_heads\": 32,"
                       " \"num_key_value_heads\": 8, \"head_dim\": null, \"vocab_size\": 32000,"
                       " \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"
                       " \"intermediate_size\": 14336, \"rope_theta\": 1e6}";
    moeq_config c = parse_ok("mixtral", json, "c.json");
    CHECK_INT_EQ(c.head_dim, 128);
    CHECK_INT_EQ(c.moe_intermediate_size, 14336); /* Mixtral: experts use intermediate_size */
    CHECK_INT_EQ(c.norm_topk_prob, 1);
    CHECK(c.layer_is_moe[0] && c.layer_is_moe[1]);
    moeq_config_free(&c);
}

static void test_rope_scaling_v4_and_rope_parameters_v5_agree(void)
{
    const char *v4 = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                     " \"vocab_size\": 10, \"intermediate_size\": 96, \"rope_theta\": 500000.0,"
                     " \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
                     " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}";
    const char *v5 = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                     " \"vocab_size\": 10, \"intermediate_size\": 96, \"rope_parameters\":"
                     " {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0,"
                     " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                     " \"original_max_position_embeddings\": 8192}}";
    moeq_config c4 = parse_ok("llama", v4, "v4.json"), c5 = parse_ok("llama", v5, "v5.json");
    CHECK_INT_EQ(c4.rope.type, MOEQ_ROPE_LLAMA3);
    CHECK_INT_EQ(c5.rope.type, MOEQ_ROPE_LLAMA3);
    CHECK(c4.rope.theta == 500000.0 && c5.rope.theta == 500000.0);
    CHECK(c4.rope.factor == 8.0 && c5.rope.factor == 8.0);
    CHECK_INT_EQ(c4.rope.original_max_position_embeddings, 8192);
    CHECK_INT_EQ(c5.rope.original_max_position_embeddings, 8192);
    CHECK_INT_EQ(c4.qkv_bias, 0);
    moeq_config_free(&c4);
    moeq_config_free(&c5);
}

static void test_qwen_sparse_step_and_mlp_only_layers_pick_dense_layers(void)
{
    const char *json = "{\"hidden_size\": 64, \"num_hidden_layers\": 6, \"num_attention_heads\": 4,"
                       " \"vocab_size\": 10, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                       " \"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
                       " \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3],"
                       " \"shared_expert_intermediate_size\": 48}";
    moeq_config c = parse_ok("qwen2_moe", json, "c.json");
    int want[6] = {0, 1, 0, 0, 0, 1}; /* (L+1) % 2 == 0, minus layer 3 */
    for (int l = 0; l < 6; l++)
        CHECK_INT_EQ(c.layer_is_moe[l], want[l]);
    CHECK_INT_EQ(c.qkv_bias, 1);
    CHECK_INT_EQ(c.norm_topk_prob, 0);
    CHECK_INT_EQ(c.shared_expert_intermediate_size, 48);
    moeq_config_free(&c);
}

static void expect_config_error(const char *type, const char *json, moeq_code code,
                                const char *fragment)
{
    moeq_arch a = builtin(type);
    moeq_config c;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_config_parse(json, "bad/config.json", &a, &c, &err), code);
    CHECK_CONTAINS(err.msg, "bad/config.json");
    CHECK_CONTAINS(err.msg, fragment);
    moeq_arch_free(&a);
}

static void test_malformed_config_is_an_error_naming_the_field(void)
{
    expect_config_error("llama", "{\"hidden_size\": 64", MOEQ_ERR_FORMAT, "not a JSON object");
    expect_config_error("llama", "[1, 2]", MOEQ_ERR_FORMAT, "not a JSON object");
    expect_config_error("llama", "{\"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                        " \"vocab_size\": 10, \"intermediate_size\": 8}",
                        MOEQ_ERR_NOT_FOUND, "hidden_size");
    expect_config_error("llama", "{\"hidden_size\": \"64\", \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
                        MOEQ_ERR_FORMAT, "hidden_size");
    expect_config_error("llama", "{\"hidden_size\": 64, \"num_hidden_layers\": -1,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
                        MOEQ_ERR_FORMAT, "num_hidden_layers");
    expect_config_error("llama", "{\"hidden_size\": 64, \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 4, \"num_key_value_heads\": 3,"
                        " \"vocab_size\": 10, \"intermediate_size\": 8}",
                        MOEQ_ERR_FORMAT, "num_key_value_heads");
    expect_config_error("llama", "{\"hidden_size\": 64, \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8,"
                        " \"rope_parameters\": {\"rope_type\": \"longrope\"}}",
                        MOEQ_ERR_UNSUPPORTED, "longrope");
    expect_config_error("llama", "{\"hidden_size\": 64, \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8,"
                        " \"hidden_act\": \"gelu\"}",
                        MOEQ_ERR_UNSUPPORTED, "gelu");
    expect_config_error("qwen3_moe", "{\"hidden_size\": 64, \"num_hidden_layers\": 1,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"num_experts\": 4,"
                        " \"num_experts_per_tok\": 5, \"moe_intermediate_size\": 8}",
                        MOEQ_ERR_FORMAT, "num_experts_per_tok");
    expect_config_error("qwen3_moe", "{\"hidden_size\": 64, \"num_hidden_layers\": 2,"
                        " \"num_attention_heads\": 4, \"vocab_size\": 10, \"num_experts\": 4,"
                        " \"num_experts_per_tok\": 2, \"moe_intermediate_size\": 8,"
                        " \"mlp_only_layers\": [7]}",
                        MOEQ_ERR_FORMAT, "mlp_only_layers");
}

static void test_unknown_model_type_lists_supported_ones_and_the_guide(void)
{
    moeq_arch a;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_arch_for_model_type("falcon_h1", &a, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "falcon_h1");
    const char *types[] = {"llama", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"};
    for (int i = 0; i < 6; i++)
        CHECK_CONTAINS(err.msg, types[i]);
    CHECK_CONTAINS(err.msg, "docs/adding-a-model.md");
    CHECK_CONTAINS(err.msg, "--arch-file");
}

static void test_tensor_templates_expand_layer_and_expert(void)
{
    moeq_arch a = builtin("mixtral");
    char buf[256];
    CHECK_INT_EQ(moeq_arch_tensor_name(&a, MOEQ_T_EXPERT_GATE_PROJ, 12, 7, buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, "model.layers.12.block_sparse_moe.experts.7.w1.weight");
    CHECK_INT_EQ(moeq_arch_tensor_name(&a, MOEQ_T_EXPERT_UP_PROJ, 0, 0, buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, "model.layers.0.block_sparse_moe.experts.0.w3.weight");
    CHECK_INT_EQ(moeq_arch_tensor_name(&a, MOEQ_T_GATE_PROJ, 0, -1, buf, sizeof buf), -1);
    CHECK_INT_EQ(moeq_arch_tensor_name(&a, MOEQ_T_ROUTER, 3, -1, buf, 8), -1); /* too small */
    moeq_arch_free(&a);
}

static void expect_arch_error(const char *json, const char *fragment)
{
    moeq_arch a;
    moeq_error err = {0};
    CHECK(moeq_arch_parse(json, "my_arch.json", &a, &err) != MOEQ_OK);
    CHECK_CONTAINS(err.msg, "my_arch.json");
    CHECK_CONTAINS(err.msg, fragment);
}

#define DENSE_TENSORS                                                                          \
    "\"tensors\": {\"embed\": \"e\", \"final_norm\": \"n\", \"attn_norm\": \"l.{L}.a\","        \
    " \"q_proj\": \"l.{L}.q\", \"k_proj\": \"l.{L}.k\", \"v_proj\": \"l.{L}.v\","              \
    " \"o_proj\": \"l.{L}.o\", \"mlp_norm\": \"l.{L}.m\", \"gate_proj\": \"l.{L}.g\","         \
    " \"up_proj\": \"l.{L}.u\", \"down_proj\": \"l.{L}.d\"}"

static void test_valid_user_architecture_file_parses(void)
{
    moeq_arch a;
    moeq_error err = {0};
    const char *json = "{\"name\": \"mine\", \"model_types\": [\"mine\"], \"components\":"
                       " {\"attention\": \"gqa\"}, " DENSE_TENSORS "}";
    CHECK_INT_EQ(moeq_arch_parse(json, "my_arch.json", &a, &err), MOEQ_OK);
    CHECK_INT_EQ(a.moe_layers, MOEQ_MOE_LAYERS_NONE);
    moeq_arch_free(&a);
}

static void test_bad_architecture_files_are_errors_naming_the_field(void)
{
    expect_arch_error("{", "not a JSON object");
    expect_arch_error("{\"model_types\": [\"x\"], \"components\": {}, " DENSE_TENSORS "}",
                      "\"name\"");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [], \"components\": {}, " DENSE_TENSORS "}",
                      "model_types");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\":"
                      " {\"attention\": \"ring\"}, " DENSE_TENSORS "}",
                      "components.attention");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\":"
                      " {\"flux\": \"on\"}, " DENSE_TENSORS "}",
                      "components.flux");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\": {},"
                      " \"params\": {\"warp\": {\"value\": 1}}, " DENSE_TENSORS "}",
                      "params.warp");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\": {},"
                      " \"params\": {\"qk_norm\": {\"keys\": []}}, " DENSE_TENSORS "}",
                      "params.qk_norm");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\": {},"
                      " \"tensors\": {\"embed\": \"e\"}}",
                      "tensors.final_norm");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\": {},"
                      " \"tensors\": {\"q_proj\": \"no.layer.placeholder\"}}",
                      "tensors.q_proj");
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\":"
                      " {\"router\": \"softmax_topk\", \"moe_layers\": \"all\"}, " DENSE_TENSORS "}",
                      "tensors.router");
    /* Found by fuzz_config (tests/fuzz/regressions/config): a role given
     * twice leaked the first template; now it is an error. */
    expect_arch_error("{\"name\": \"x\", \"model_types\": [\"x\"], \"components\": {},"
                      " \"tensors\": {\"embed\": \"e\", \"embed\": \"f\"}}",
                      "tensors.embed is given twice");
}

/* DeepSeek-V3's config.json (transformers 4.x spelling, YaRN). */
static const char *DEEPSEEK_V3 =
    "{\"model_type\": \"%s\", \"hidden_size\": 7168, \"num_hidden_layers\": 61,"
    " \"num_attention_heads\": 128, \"num_key_value_heads\": 128, \"vocab_size\": 129280,"
    " \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048, \"n_routed_experts\": 256,"
    " \"n_shared_experts\": 1, \"num_experts_per_tok\": 8, \"n_group\": 8, \"topk_group\": 4,"
    " \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 3, \"moe_layer_freq\": 1,"
    " \"norm_topk_prob\": true, \"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\","
    " \"q_lora_rank\": %s, \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128,"
    " \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"rms_norm_eps\": 1e-06,"
    " \"max_position_embeddings\": 163840, \"rope_theta\": 10000, \"attention_bias\": false,"
    " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0,"
    " \"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}}";

static void test_deepseek_v3_and_kimi_k2_configs_give_mla_routing_and_dense_layers(void)
{
    const char *types[] = {"deepseek_v3", "kimi_k2"};
    for (int i = 0; i < 2; i++) {
        moeq_arch a = builtin(types[i]);
        CHECK_STR_EQ(a.name, "deepseek_v3");
        char json[2048];
        snprintf(json, sizeof json, DEEPSEEK_V3, types[i], "1536");
        moeq_config c;
        moeq_error err = {0};
        CHECK_INT_EQ(moeq_config_parse(json, "ds.json", &a, &c, &err), MOEQ_OK);
        CHECK_INT_EQ(c.attention, MOEQ_ATTENTION_MLA);
        CHECK_INT_EQ(c.q_lora_rank, 1536);
        CHECK_INT_EQ(c.kv_lora_rank, 512);
        CHECK_INT_EQ(c.qk_nope_head_dim, 128);
        CHECK_INT_EQ(c.v_head_dim, 128);
        CHECK_INT_EQ(c.head_dim, 64); /* RoPE turns the rope part only */
        CHECK_INT_EQ(c.rope.rotary_dim, 64);
        CHECK_INT_EQ(c.rope.type, MOEQ_ROPE_YARN);
        CHECK_INT_EQ(c.rope_interleaved, 1);
        CHECK_INT_EQ(c.router, MOEQ_ROUTER_SIGMOID_TOPK);
        CHECK_INT_EQ(c.n_group, 8);
        CHECK_INT_EQ(c.topk_group, 4);
        CHECK_NEAR(c.routed_scaling_factor, 2.5, 0, 0);
        CHECK_INT_EQ(c.num_experts, 256);
        CHECK_INT_EQ(c.shared_expert_intermediate_size, 2048);
        for (int l = 0; l < 61; l++)
            CHECK_INT_EQ(c.layer_is_moe[l], l >= 3);
        /* 192^-0.5 * (0.1 ln 40 + 1)^2 */
        double m = 0.1 * log(40.0) + 1.0;
        CHECK_NEAR(moeq_mla_softmax_scale(&c), m * m / sqrt(192.0), 1e-15, 0);
        moeq_config_free(&c);
        /* q_lora_rank null: plain q_proj (DeepSeek-V2-Lite layout). */
        snprintf(json, sizeof json, DEEPSEEK_V3, types[i], "null");
        CHECK_INT_EQ(moeq_config_parse(json, "ds.json", &a, &c, &err), MOEQ_OK);
        CHECK_INT_EQ(c.q_lora_rank, 0);
        moeq_config_free(&c);
        moeq_arch_free(&a);
    }
}

static void test_glm45_config_reads_partial_rotary_shared_expert_and_groups(void)
{
    /* GLM-4.5-Air's config.json. */
    const char *json =
        "{\"model_type\": \"glm4_moe\", \"hidden_size\": 4096, \"num_hidden_layers\": 46,"
        " \"num_attention_heads\": 96, \"num_key_value_heads\": 8, \"head_dim\": 128,"
        " \"partial_rotary_factor\": 0.5, \"attention_bias\": true, \"use_qk_norm\": false,"
        " \"vocab_size\": 151552, \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408,"
        " \"n_routed_experts\": 128, \"n_shared_experts\": 1, \"num_experts_per_tok\": 8,"
        " \"n_group\": 1, \"topk_group\": 1, \"routed_scaling_factor\": 1.0,"
        " \"first_k_dense_replace\": 1, \"norm_topk_prob\": true, \"rope_theta\": 1000000,"
        " \"rms_norm_eps\": 1e-05, \"max_position_embeddings\": 131072}";
    moeq_config c = parse_ok("glm4_moe", json, "glm.json");
    CHECK_INT_EQ(c.attention, MOEQ_ATTENTION_GQA);
    CHECK_INT_EQ(c.rope.rotary_dim, 64);
    CHECK_INT_EQ(c.qkv_bias, 1);
    CHECK_INT_EQ(c.o_bias, 0);
    CHECK_INT_EQ(c.qk_norm, 0);
    CHECK_INT_EQ(c.router, MOEQ_ROUTER_SIGMOID_TOPK);
    CHECK_INT_EQ(c.shared_expert_intermediate_size, 1408);
    CHECK_INT_EQ(c.layer_is_moe[0], 0);
    CHECK_INT_EQ(c.layer_is_moe[1], 1);
    CHECK_INT_EQ(c.layer_is_moe[45], 1);
    moeq_config_free(&c);
    /* Without partial_rotary_factor GLM still turns half of each head, as
     * transformers' Glm4MoeConfig assumes. */
    char *copy = malloc(strlen(json) + 1);
    strcpy(copy, json);
    char *p = strstr(copy, "\"partial_rotary_factor\"");
    memcpy(p, "\"unrelated_option_name\"", 23);
    c = parse_ok("glm4_moe", copy, "glm.json");
    CHECK_INT_EQ(c.rope.rotary_dim, 64);
    moeq_config_free(&c);
    free(copy);
}

static void test_minimax_m2_rotary_dim_and_full_qk_norm(void)
{
    const char *json =
        "{\"model_type\": \"minimax_m2\", \"hidden_size\": 3072, \"num_hidden_layers\": 62,"
        " \"num_attention_heads\": 48, \"num_key_value_heads\": 8, \"head_dim\": 128,"
        " \"rotary_dim\": 64, \"rope_theta\": 5000000, \"intermediate_size\": 1536,"
        " \"num_local_experts\": 256, \"num_experts_per_tok\": 8, \"vocab_size\": 200064,"
        " \"use_qk_norm\": true, \"qk_norm_type\": \"per_layer\", \"scoring_func\": \"sigmoid\","
        " \"use_routing_bias\": true}";
    moeq_config c = parse_ok("minimax_m2", json, "mm.json");
    CHECK_INT_EQ(c.rope.rotary_dim, 64);
    CHECK_INT_EQ(c.qk_norm, 1);
    CHECK_INT_EQ(c.qk_norm_full, 1);
    CHECK_INT_EQ(c.moe_intermediate_size, 1536);
    CHECK_INT_EQ(c.n_group, 1);
    CHECK_NEAR(c.routed_scaling_factor, 1.0, 0, 0);
    for (int l = 0; l < 62; l++)
        CHECK_INT_EQ(c.layer_is_moe[l], 1);
    moeq_config_free(&c);
}

static void test_deepseek_v2_greedy_topk_method_ignores_groups(void)
{
    moeq_arch a = builtin("deepseek_v2");
    /* DeepSeek-V2-Lite with greedy: 16 groups of 4 experts cannot hold 6
     * picks inside topk_group = 1 of them, but greedy ignores groups. */
    const char *json =
        "{\"model_type\": \"deepseek_v2\", \"hidden_size\": 2048, \"num_hidden_layers\": 27,"
        " \"num_attention_heads\": 16, \"vocab_size\": 102400, \"intermediate_size\": 10944,"
        " \"moe_intermediate_size\": 1408, \"n_routed_experts\": 64, \"n_shared_experts\": 2,"
        " \"num_experts_per_tok\": 6, \"n_group\": 16, \"topk_group\": 1,"
        " \"topk_method\": \"%s\", \"first_k_dense_replace\": 1, \"q_lora_rank\": null,"
        " \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64,"
        " \"v_head_dim\": 128, \"rope_theta\": 10000}";
    char buf[2048];
    moeq_config c;
    moeq_error err = {0};
    snprintf(buf, sizeof buf, json, "greedy");
    CHECK_INT_EQ(moeq_config_parse(buf, "v2.json", &a, &c, &err), MOEQ_OK);
    CHECK_INT_EQ(c.n_group, 1);
    CHECK_INT_EQ(c.router, MOEQ_ROUTER_SOFTMAX_TOPK);
    CHECK_INT_EQ(c.rope_interleaved, 1);
    CHECK_INT_EQ(c.norm_topk_prob, 0);
    CHECK_INT_EQ(c.shared_expert_intermediate_size, 2816);
    CHECK_INT_EQ(c.layer_is_moe[0], 0);
    CHECK_INT_EQ(c.layer_is_moe[1], 1);
    moeq_config_free(&c);
    snprintf(buf, sizeof buf, json, "group_limited_greedy");
    CHECK_INT_EQ(moeq_config_parse(buf, "v2.json", &a, &c, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "n_group = 16");
    snprintf(buf, sizeof buf, json, "random");
    CHECK_INT_EQ(moeq_config_parse(buf, "v2.json", &a, &c, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "topk_method \"random\"");
    moeq_arch_free(&a);
}

static void test_bad_groups_and_moe_layer_freq_are_errors_naming_the_field(void)
{
    moeq_arch a = builtin("deepseek_v3");
    char json[2048];
    snprintf(json, sizeof json, DEEPSEEK_V3, "deepseek_v3", "1536");
    moeq_config c;
    moeq_error err = {0};
    /* 256 experts do not split into 7 groups. */
    char *g = strstr(json, "\"n_group\": 8");
    g[11] = '7';
    CHECK_INT_EQ(moeq_config_parse(json, "ds.json", &a, &c, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "n_group = 7");
    CHECK_CONTAINS(err.msg, "ds.json");
    g[11] = '8';
    char *f = strstr(json, "\"moe_layer_freq\": 1");
    f[18] = '2';
    CHECK_INT_EQ(moeq_config_parse(json, "ds.json", &a, &c, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "moe_layer_freq");
    moeq_arch_free(&a);
}

int main(void)
{
    RUN(test_v4_and_v5_spellings_give_the_same_spec);
    RUN(test_n_routed_experts_spelling_is_read);
    RUN(test_head_dim_absent_or_null_is_hidden_over_heads);
    RUN(test_rope_scaling_v4_and_rope_parameters_v5_agree);
    RUN(test_qwen_sparse_step_and_mlp_only_layers_pick_dense_layers);
    RUN(test_malformed_config_is_an_error_naming_the_field);
    RUN(test_unknown_model_type_lists_supported_ones_and_the_guide);
    RUN(test_tensor_templates_expand_layer_and_expert);
    RUN(test_valid_user_architecture_file_parses);
    RUN(test_bad_architecture_files_are_errors_naming_the_field);
    RUN(test_deepseek_v3_and_kimi_k2_configs_give_mla_routing_and_dense_layers);
    RUN(test_glm45_config_reads_partial_rotary_shared_expert_and_groups);
    RUN(test_minimax_m2_rotary_dim_and_full_qk_norm);
    RUN(test_deepseek_v2_greedy_topk_method_ignores_groups);
    RUN(test_bad_groups_and_moe_layer_freq_are_errors_naming_the_field);
    return test_summary();
}
