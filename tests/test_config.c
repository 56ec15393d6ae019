/* test_config.c: config.json -> model spec through architecture files, in
 * both transformers 4.x and 5.x spellings, and the errors for bad configs
 * and bad architecture files. */
#include "test.h"

#include "model/arch.h"
#include "model/config.h"

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
    moeq_arch a = builtin("qwen3_moe");
    moeq_config c4, c5;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_config_parse(QWEN3_MOE_V4, "v4.json", &a, &c4, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_config_parse(QWEN3_MOE_V5, "v5.json", &a, &c5, &err), MOEQ_OK);
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
    moeq_arch_free(&a);
}

static void test_n_routed_experts_spelling_is_read(void)
{
    moeq_arch a = builtin("qwen3_moe");
    moeq_config c;
    moeq_error err = {0};
    const char *json = "{\"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                       " \"vocab_size\": 100, \"n_routed_experts\": 16, \"num_experts_per_tok\": 4,"
                       " \"moe_intermediate_size\": 32, \"intermediate_size\": 128}";
    CHECK_INT_EQ(moeq_config_parse(json, "c.json", &a, &c, &err), MOEQ_OK);
    CHECK_INT_EQ(c.num_experts, 16);
    moeq_config_free(&c);
    moeq_arch_free(&a);
}

static void test_head_dim_absent_or_null_is_hidden_over_heads(void)
{
    moeq_arch a = builtin("mixtral");
    moeq_config c;
    moeq_error err = {0};
    const char *json = "{\"hidden_size\": 4096, \"num_hidden_layers\": 2, \"num_attention_heads\": 32,"
                       " \"num_key_value_heads\": 8, \"head_dim\": null, \"vocab_size\": 32000,"
                       " \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"
                       " \"intermediate_size\": 14336, \"rope_theta\": 1e6}";
    CHECK_INT_EQ(moeq_config_parse(json, "c.json", &a, &c, &err), MOEQ_OK);
    CHECK_INT_EQ(c.head_dim, 128);
    CHECK_INT_EQ(c.moe_intermediate_size, 14336); /* Mixtral: experts use intermediate_size */
    CHECK_INT_EQ(c.norm_topk_prob, 1);
    CHECK(c.layer_is_moe[0] && c.layer_is_moe[1]);
    moeq_config_free(&c);
    moeq_arch_free(&a);
}

static void test_rope_scaling_v4_and_rope_parameters_v5_agree(void)
{
    moeq_arch a = builtin("llama");
    moeq_config c4, c5;
    moeq_error err = {0};
    const char *v4 = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                     " \"vocab_size\": 10, \"intermediate_size\": 96, \"rope_theta\": 500000.0,"
                     " \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
                     " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}";
    const char *v5 = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                     " \"vocab_size\": 10, \"intermediate_size\": 96, \"rope_parameters\":"
                     " {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0,"
                     " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                     " \"original_max_position_embeddings\": 8192}}";
    CHECK_INT_EQ(moeq_config_parse(v4, "v4.json", &a, &c4, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_config_parse(v5, "v5.json", &a, &c5, &err), MOEQ_OK);
    CHECK_INT_EQ(c4.rope.type, MOEQ_ROPE_LLAMA3);
    CHECK_INT_EQ(c5.rope.type, MOEQ_ROPE_LLAMA3);
    CHECK(c4.rope.theta == 500000.0 && c5.rope.theta == 500000.0);
    CHECK(c4.rope.factor == 8.0 && c5.rope.factor == 8.0);
    CHECK_INT_EQ(c4.rope.original_max_position_embeddings, 8192);
    CHECK_INT_EQ(c5.rope.original_max_position_embeddings, 8192);
    CHECK_INT_EQ(c4.qkv_bias, 0);
    moeq_config_free(&c4);
    moeq_config_free(&c5);
    moeq_arch_free(&a);
}

static void test_qwen_sparse_step_and_mlp_only_layers_pick_dense_layers(void)
{
    moeq_arch a = builtin("qwen2_moe");
    moeq_config c;
    moeq_error err = {0};
    const char *json = "{\"hidden_size\": 64, \"num_hidden_layers\": 6, \"num_attention_heads\": 4,"
                       " \"vocab_size\": 10, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                       " \"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
                       " \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3],"
                       " \"shared_expert_intermediate_size\": 48}";
    CHECK_INT_EQ(moeq_config_parse(json, "c.json", &a, &c, &err), MOEQ_OK);
    int want[6] = {0, 1, 0, 0, 0, 1}; /* (L+1) % 2 == 0, minus layer 3 */
    for (int l = 0; l < 6; l++)
        CHECK_INT_EQ(c.layer_is_moe[l], want[l]);
    CHECK_INT_EQ(c.qkv_bias, 1);
    CHECK_INT_EQ(c.norm_topk_prob, 0);
    CHECK_INT_EQ(c.shared_expert_intermediate_size, 48);
    moeq_config_free(&c);
    moeq_arch_free(&a);
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
                      " {\"attention\": \"mla\"}, " DENSE_TENSORS "}",
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
    return test_summary();
}
