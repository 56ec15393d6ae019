/* test_hybrid.c: hybrid models (Gated DeltaNet beside gated full
 * attention), their multimodal checkpoints and MTP blocks (and DeepSeek-V3's
 * and GLM-4.5's next-n prediction layers, the same drafter): how their configs
 * and architecture files are read and refused; the quantization pipeline end
 * to end on their fixtures: which linears are quantized by default and with
 * --quantize-linear-ba / --quantize-mtp, that every tensor of the input
 * reaches the output (byte for byte where it is not quantized), and that the
 * quantized checkpoint reads back through moeq close to the original. */
#include "test.h"
#include "fixture_run.h"
#include "cli_run.h"

#include "common/fileio.h"
#include "io/gptq_writer.h"
#include "backend/cpu/cpu_ops.h"
#include "model/config.h"
#include "model/model.h"
#include "model/mtp.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <cjson/cJSON.h>

static const char *fixture(const char *name)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    return dir;
}

static moeq_quantize_options options(void)
{
    moeq_quantize_options o = {.method = MOEQ_METHOD_GPTQ, .gptq = moeq_gptq_default_config(),
                               .expert_calib = MOEQ_EXPERT_CALIB_ALL, .min_expert_tokens = 1,
                               .true_sequential = 1, .token_chunk = 100};
    o.gptq.group_size = 16; /* divides every input dim of the hybrid fixtures */
    return o;
}

/* Quantizes fixture `name` into out on 8 windows of 96 pseudo-random
 * tokens (longer than a delta-rule chunk). */
static moeq_code quantize(const char *name, const moeq_quantize_options *opt, const char *out,
                          moeq_error *err)
{
    return quantize_dir(fixture(name), opt, out, 16 * 96, 77, 8, 96, err);
}

/* quantize into a fresh directory of the test's own (test_tmpdir(tmp)),
 * out its "out" there (out_size bytes); the run must succeed. */
static void quantize_into(const char *name, const moeq_quantize_options *opt, const char *tmp,
                          char *out, size_t out_size)
{
    snprintf(out, out_size, "%s/out", test_tmpdir(tmp));
    moeq_error err = {0};
    CHECK_INT_EQ(quantize(name, opt, out, &err), MOEQ_OK);
}

/* KL of the checkpoint at out against the fixture over 512 tokens. */
static double kl_against_original(const char *name, const char *out)
{
    return kl_on_random_tokens(fixture(name), out, 4242, 128);
}

/* How many per-expert GPTQ linears replace t when it is a fused expert
 * tensor (PREFIX.gate_up_proj [E, 2I, H] -> PREFIX.{e}.gate_proj and up_proj,
 * PREFIX.down_proj -> PREFIX.{e}.down_proj); 0 when it is not or one is
 * missing from out. */
static int fused_expert_replacements(const st_tensor *t, const st_checkpoint *out)
{
    const char *parts[2] = {"experts.gate_up_proj", "experts.down_proj"};
    size_t len = strlen(t->name);
    for (int i = 0; i < 2; i++) {
        size_t pl = strlen(parts[i]);
        if (t->ndim != 3 || len < pl || strcmp(t->name + len - pl, parts[i]))
            continue;
        int found = 0;
        for (int e = 0; e < t->shape[0]; e++) {
            const char *proj[2] = {i ? "down_proj" : "gate_proj", i ? NULL : "up_proj"};
            for (int j = 0; j < 2 && proj[j]; j++) {
                char q[600];
                snprintf(q, sizeof q, "%.*sexperts.%d.%s.qweight", (int)(len - pl), t->name, e,
                         proj[j]);
                found += st_checkpoint_find(out, q) != NULL;
            }
        }
        return found == (i ? 1 : 2) * (int)t->shape[0] ? found : 0;
    }
    return 0;
}

/* Every tensor of the source is in the output: unchanged (same dtype, shape
 * and bytes), or replaced by the GPTQ tensors of its weight (of each expert
 * for a fused expert tensor). Returns how many linears were replaced;
 * counts misses as failures. */
static int check_every_tensor_reaches_output(const char *src_dir, const char *out_dir)
{
    st_checkpoint src, out;
    moeq_error err = {0};
    int replaced = 0;
    CHECK_INT_EQ(st_checkpoint_open(&src, src_dir, &err), MOEQ_OK);
    CHECK_INT_EQ(st_checkpoint_open(&out, out_dir, &err), MOEQ_OK);
    for (size_t i = 0; i < src.n_tensors; i++) {
        const st_tensor *t = src.tensors[i];
        const st_tensor *o = st_checkpoint_find(&out, t->name);
        if (o) {
            int same = o->dtype == t->dtype && o->ndim == t->ndim && o->nbytes == t->nbytes &&
                       !memcmp(o->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) &&
                       !memcmp(o->data, t->data, t->nbytes);
            if (!same) {
                fprintf(stderr, "  %s differs from the source\n", t->name);
                test_failures_in_current++;
            }
            continue;
        }
        char q[600];
        size_t len = strlen(t->name);
        if (len > 6 && !strcmp(t->name + len - 6, "weight"))
            snprintf(q, sizeof q, "%.*sqweight", (int)(len - 6), t->name);
        else
            q[0] = '\0';
        int experts = fused_expert_replacements(t, &out);
        if (q[0] && st_checkpoint_find(&out, q)) {
            replaced++;
        } else if (experts) {
            replaced += experts;
        } else {
            fprintf(stderr, "  %s is missing from the output\n", t->name);
            test_failures_in_current++;
        }
    }
    st_checkpoint_close(&src);
    st_checkpoint_close(&out);
    return replaced;
}

/* Whether out/config.json's quantization_config.dynamic has the rule. */
static int dynamic_rule(const char *out, const char *rule)
{
    char path[2200], *text;
    moeq_error err = {0};
    snprintf(path, sizeof path, "%s/config.json", out);
    if (moeq_read_text_file(path, 1 << 20, &text, &err))
        return 0;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    const cJSON *dyn =
        cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "quantization_config"), "dynamic");
    int found = cJSON_GetObjectItemCaseSensitive(dyn, rule) != NULL;
    cJSON_Delete(cfg);
    return found;
}

static void test_qwen3_next_quantizes_deltanet_and_gated_attention(void)
{
    moeq_quantize_options o = options();
    char out[2048];
    quantize_into("qwen3_next", &o, "hybrid_next", out, sizeof out);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    /* in_proj_qkvz [256, 64] -> qweight [8, 256]; out_proj [64, 64];
     * the gated q_proj of full layer 1 [256, 64]. */
    const st_tensor *t = st_checkpoint_find(&c, "model.layers.0.linear_attn.in_proj_qkvz.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 256);
    t = st_checkpoint_find(&c, "model.layers.2.linear_attn.out_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 64);
    t = st_checkpoint_find(&c, "model.layers.1.self_attn.q_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 256);
    CHECK(st_checkpoint_find(&c, "model.layers.3.mlp.shared_expert.down_proj.qweight") != NULL);
    /* By default b/a stay as they are, and so does everything not a linear. */
    const char *kept[] = {"model.layers.0.linear_attn.in_proj_ba.weight",
                          "model.layers.0.linear_attn.conv1d.weight",
                          "model.layers.0.linear_attn.A_log",
                          "model.layers.0.linear_attn.dt_bias",
                          "model.layers.2.linear_attn.norm.weight",
                          "model.layers.1.mlp.shared_expert_gate.weight"};
    for (int i = 0; i < 6; i++) {
        t = st_checkpoint_find(&c, kept[i]);
        CHECK(t && t->dtype == ST_BF16);
    }
    CHECK(st_checkpoint_find(&c, "model.layers.0.linear_attn.in_proj_ba.qweight") == NULL);
    st_checkpoint_close(&c);
    /* ... and the config tells loaders so (vLLM's "dynamic" exclusion). */
    CHECK(dynamic_rule(out, "-:.*linear_attn\\.in_proj_ba$"));
    /* 2 linear layers x (qkvz, out) + 2 full x (q, k, v, o) + 3 MoE layers x
     * (8 x 3 + shared 3) + the dense MLP of layer 2 (3). */
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture("qwen3_next"), out),
                 2 * 2 + 2 * 4 + 3 * 27 + 3);
    /* The tiny random hybrid is sensitive: at 4 bits (groups of 16) GPTQ
     * gives KL 0.081 on it, round-to-nearest 0.087 (measured). */
    double kl = kl_against_original("qwen3_next", out);
    printf("  qwen3_next 4-bit g16: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.1);
}

static void test_qwen3_next_at_8_bits_is_nearly_lossless(void)
{
    moeq_quantize_options o = options();
    o.gptq.bits = 8;
    char out[2048];
    quantize_into("qwen3_next", &o, "hybrid_next_8bit", out, sizeof out);
    double kl = kl_against_original("qwen3_next", out);
    printf("  qwen3_next 8-bit g16: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.005);
}

static void test_quantize_linear_ba_quantizes_the_gate_projections_too(void)
{
    moeq_quantize_options o = options();
    o.quantize_linear_ba = 1;
    char out[2048];
    quantize_into("qwen3_next", &o, "hybrid_next_ba", out, sizeof out);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    /* in_proj_ba [16, 64] -> qweight [8, 16] */
    const st_tensor *t = st_checkpoint_find(&c, "model.layers.2.linear_attn.in_proj_ba.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 16);
    CHECK(st_checkpoint_find(&c, "model.layers.2.linear_attn.in_proj_ba.weight") == NULL);
    st_checkpoint_close(&c);
    CHECK(!dynamic_rule(out, "-:.*linear_attn\\.in_proj_ba$"));
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture("qwen3_next"), out),
                 2 * 3 + 2 * 4 + 3 * 27 + 3);
    double kl = kl_against_original("qwen3_next", out);
    CHECK(kl > 0 && kl < 0.1);
}

/* The top-level objects of out/config.json and the source's: equal. */
static int config_object_kept(const char *name, const char *out, const char *key)
{
    char path[4200], *a = NULL, *b = NULL;
    moeq_error err = {0};
    snprintf(path, sizeof path, "%s/config.json", fixture(name));
    moeq_read_text_file(path, 1 << 20, &a, &err);
    snprintf(path, sizeof path, "%s/config.json", out);
    moeq_read_text_file(path, 1 << 20, &b, &err);
    cJSON *ca = cJSON_Parse(a ? a : ""), *cb = cJSON_Parse(b ? b : "");
    const cJSON *x = cJSON_GetObjectItem(ca, key), *y = cJSON_GetObjectItem(cb, key);
    int same = x && y && cJSON_Compare(x, y, 1);
    cJSON_Delete(ca);
    cJSON_Delete(cb);
    free(a);
    free(b);
    return same;
}

/* A multimodal checkpoint: the language model is quantized, the vision
 * tower and the MTP layer reach the output byte for byte, the config keeps
 * its nested structure and tells loaders which modules stay unquantized. */
static void check_multimodal(const char *name, int expect_quantized)
{
    moeq_quantize_options o = options();
    char out[2048];
    quantize_into(name, &o, name, out, sizeof out);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    CHECK(st_checkpoint_find(&c, "model.language_model.layers.0.linear_attn.in_proj_qkv.qweight"));
    CHECK(st_checkpoint_find(&c, "model.language_model.layers.2.self_attn.o_proj.qweight"));
    const char *copied[] = {"model.visual.blocks.0.attn.qkv.weight",
                            "model.visual.merger.linear_fc2.weight",
                            "model.visual.patch_embed.proj.weight", "mtp.fc.weight",
                            "mtp.layers.0.self_attn.q_proj.weight"};
    for (int i = 0; i < 5; i++) {
        const st_tensor *t = st_checkpoint_find(&c, copied[i]);
        CHECK(t && t->dtype == ST_BF16);
    }
    st_checkpoint_close(&c);
    /* Byte for byte, and exactly the language model's linears replaced. */
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture(name), out), expect_quantized);
    CHECK(config_object_kept(name, out, "text_config"));
    CHECK(config_object_kept(name, out, "vision_config"));
    CHECK(config_object_kept(name, out, "model_type"));
    CHECK(dynamic_rule(out, "-:(.*\\.)?visual\\..*"));
    CHECK(dynamic_rule(out, "-:(.*\\.)?mtp\\..*"));
    CHECK(dynamic_rule(out, "-:.*linear_attn\\.in_proj_ba$"));
    /* Measured at 4 bits, GPTQ / round-to-nearest: qwen3_5_moe 0.105 / 0.106
     * (its top-2-of-8 routing flips easily), qwen3_5 0.086 / 0.092; at 8 bits
     * 0.0064 / 0.0087 and 0.0007 / 0.0008. */
    double kl = kl_against_original(name, out);
    printf("  %s 4-bit g16: KL %.5f\n", name, kl);
    CHECK(kl > 0 && kl < 0.15);
}

static void test_qwen3_5_moe_quantizes_the_language_model_and_copies_the_rest(void)
{
    /* 3 linear layers x (qkv, z, out) + 1 full x 4 + 4 MoE layers x (8 x 3 + 3) */
    check_multimodal("qwen3_5_moe", 3 * 3 + 4 + 4 * 27);
}

static void test_qwen3_5_dense_quantizes_the_language_model_and_copies_the_rest(void)
{
    check_multimodal("qwen3_5", 3 * 3 + 4 + 4 * 3);
}

/* A copy of fixture `name` in dir with extra tensors: a next-token
 * prediction layer past num_hidden_layers as DeepSeek-V3 and GLM-4.5 ship
 * it (model.layers.{N}.*: eh_proj over [embedding; hidden], enorm, hnorm,
 * its own attention and experts). */
static void write_with_nextn_layer(const char *name, const char *dir)
{
    char src[4200], dst[4200];
    moeq_error err = {0};
    snprintf(src, sizeof src, "%s/config.json", fixture(name));
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    CHECK_INT_EQ(moeq_copy_file(src, dst, &err), MOEQ_OK);
    snprintf(src, sizeof src, "%s/model.safetensors", fixture(name));
    st_file f;
    CHECK_INT_EQ(st_file_open(&f, src, &err), MOEQ_OK);
    st_writer w;
    st_writer_init(&w);
    for (size_t i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        CHECK_INT_EQ(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes,
                                   &err),
                     MOEQ_OK);
    }
    static uint16_t data[256 * 64]; /* the largest of the tensors below */
    test_rng r = {3};
    for (size_t i = 0; i < sizeof data / sizeof data[0]; i++)
        data[i] = (uint16_t)(0x3c00 + (test_rng_next(&r) & 0x3ff)); /* bf16 in [0.0078, 0.0156) */
    const struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } extra[] = {{"model.layers.4.eh_proj.weight", 2, {64, 128}},
                 {"model.layers.4.enorm.weight", 1, {64, 0}},
                 {"model.layers.4.hnorm.weight", 1, {64, 0}},
                 {"model.layers.4.self_attn.q_proj.weight", 2, {256, 64}},
                 {"model.layers.4.mlp.experts.0.gate_proj.weight", 2, {32, 64}},
                 {"model.layers.4.shared_head.norm.weight", 1, {64, 0}}};
    for (int i = 0; i < 6; i++) {
        size_t n = (size_t)extra[i].shape[0] * (extra[i].ndim == 2 ? (size_t)extra[i].shape[1] : 1);
        CHECK_INT_EQ(st_writer_add(&w, extra[i].name, ST_BF16, extra[i].ndim, extra[i].shape, data,
                                   2 * n, &err),
                     MOEQ_OK);
    }
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    CHECK_INT_EQ(st_writer_write(&w, dst, &err), MOEQ_OK);
    st_writer_free(&w);
    st_file_close(&f);
}

static void test_a_nextn_prediction_layer_past_the_last_layer_is_copied_unchanged(void)
{
    const char *dir = test_tmpdir("hybrid_nextn");
    char src[2048], out[2048];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK(mkdir(src, 0755) == 0);
    write_with_nextn_layer("qwen3_next", src);
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(src, NULL, &m, &err), MOEQ_OK);
    moeq_quantize_options o = options();
    moeq_calib_set set;
    static int32_t stream[8 * 96];
    for (int i = 0; i < 8 * 96; i++)
        stream[i] = (i * 37) % m.cfg.vocab_size;
    CHECK_INT_EQ(moeq_calib_set_sample(stream, 8 * 96, 4, 96, 1, &set, &err), MOEQ_OK);
    moeq_gptq_writer w;
    CHECK_INT_EQ(moeq_gptq_writer_open(&w, &m, &o, out, NULL, 0, 0, &err), MOEQ_OK);
    moeq_layer_sink sink = {moeq_gptq_writer_write_layer, NULL, &w};
    CHECK_INT_EQ(moeq_quantize_layers(&m, &set, &o, &sink, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_writer_finish(&w, NULL, &err), MOEQ_OK);
    moeq_gptq_writer_close(&w);
    moeq_calib_set_free(&set);
    moeq_model_close(&m);
    /* The same 96 linears as the fixture's; layer 4's six tensors as they were. */
    CHECK_INT_EQ(check_every_tensor_reaches_output(src, out), 2 * 2 + 2 * 4 + 3 * 27 + 3);
    st_checkpoint c;
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    CHECK(st_checkpoint_find(&c, "model.layers.4.eh_proj.weight") != NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.4.self_attn.q_proj.qweight") == NULL);
    st_checkpoint_close(&c);
}

/* What quantizing the drafter does to its drafts, on the same inputs (the
 * original model's final hidden states): out's drafts against fixture
 * `name`'s, more than half agreeing on the top token and KL in (0, 0.1). */
static void check_drafts_close(const char *name, const char *out)
{
    double agree = 0, kl = 0;
    size_t rows = 0;
    CHECK_INT_EQ(mtp_drafts_compare(fixture(name), out, &agree, &kl, &rows), 0);
    printf("  %s MTP drafts, 4-bit g16: top-1 agreement %.3f, KL %.5f over %zu positions\n",
           name, agree, kl, rows);
    CHECK(kl > 0 && kl < 0.1 && agree > 0.5);
}

/* DeepSeek-V3's (MLA) and GLM-4.5's (GQA) next-n layer with --quantize-mtp:
 * its decoder layer quantized under model.layers.{N}.*, eh_proj, the norms,
 * the router and the shared head's copies unchanged (vLLM builds eh_proj as
 * a plain nn.Linear), no dynamic rule excluding it, report.json's last
 * entry the MTP block, and its drafts close to the original's. */
static void check_nextn_quantized(const char *name, int linears, int mtp_linears,
                                  const char *qweight, int64_t rows, int64_t cols)
{
    char out[2048];
    snprintf(out, sizeof out, "%s/out", test_tmpdir(name));
    moeq_quantize_options o = options();
    o.quantize_mtp = 1;
    moeq_error err = {0};
    /* 16 windows of 24 tokens, the fixtures' golden length. */
    CHECK_INT_EQ(quantize_dir(fixture(name), &o, out, 32 * 24, 5, 16, 24, &err), MOEQ_OK);
    if (err.msg[0])
        fprintf(stderr, "  %s\n", err.msg);
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture(name), out), linears + mtp_linears);
    st_checkpoint c;
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    const st_tensor *t = st_checkpoint_find(&c, qweight);
    CHECK(t && t->shape[0] == rows && t->shape[1] == cols);
    CHECK(st_checkpoint_find(&c, "model.layers.3.mlp.experts.7.down_proj.qweight") != NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.3.mlp.shared_experts.up_proj.qweight") != NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.3.eh_proj.weight") != NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.3.eh_proj.qweight") == NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.3.shared_head.head.weight") != NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.3.mlp.gate.weight") != NULL);
    st_checkpoint_close(&c);
    CHECK(!dynamic_rule(out, "-:model\\.layers\\.3\\..*"));
    cJSON *rep = read_output_json(out, "report.json");
    CHECK(rep != NULL);
    cJSON *layers = cJSON_GetObjectItem(rep, "layers");
    CHECK_INT_EQ(cJSON_GetArraySize(layers), 4);
    cJSON *last = cJSON_GetArrayItem(layers, 3);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(last, "mtp")));
    CHECK_INT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(last, "modules")), mtp_linears);
    cJSON_Delete(rep);
    check_drafts_close(name, out);
}

/* 4 + 3 (dense layer 0) + 2 x (4 + 8 x 3 + 3); the next-n layer 4 + 8 x 3 + 3. */
static void test_quantize_mtp_quantizes_glm4_moe_s_nextn_layer(void)
{
    check_nextn_quantized("glm4_moe", 69, 31, "model.layers.3.self_attn.q_proj.qweight", 8, 96);
}

/* MLA: q_a, q_b, kv_a, kv_b, o; 5 + 3 + 2 x (5 + 8 x 3 + 3); next-n 5 + 8 x 3 + 3. */
static void test_quantize_mtp_quantizes_deepseek_v3_s_nextn_layer(void)
{
    check_nextn_quantized("deepseek_v3", 72, 32, "model.layers.3.self_attn.kv_b_proj.qweight", 4,
                          160);
}

/* Without --quantize-mtp the next-n layer is copied and the GPTQ config
 * excludes it: vLLM builds its decoder layer with the run's quantization
 * (deepseek_mtp.py), which would otherwise look for GPTQ tensors there. */
static void test_an_unquantized_nextn_layer_is_excluded_from_gptq(void)
{
    char out[2048];
    snprintf(out, sizeof out, "%s/out", test_tmpdir("nextn_kept"));
    moeq_quantize_options o = options();
    moeq_error err = {0};
    CHECK_INT_EQ(quantize_dir(fixture("glm4_moe"), &o, out, 32 * 24, 5, 8, 24, &err), MOEQ_OK);
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture("glm4_moe"), out), 69);
    CHECK(dynamic_rule(out, "-:model\\.layers\\.3\\..*"));
}

static void test_quantize_mtp_quantizes_qwen3_next_s_mtp_block(void)
{
    moeq_quantize_options o = options();
    o.quantize_mtp = 1;
    char out[2048];
    quantize_into("qwen3_next", &o, "hybrid_mtp_next", out, sizeof out);
    /* The 96 linears of the language model, the MTP block's fc + 4 + 27. */
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture("qwen3_next"), out), 96 + 1 + 4 + 27);
    CHECK(!dynamic_rule(out, "-:(.*\\.)?mtp\\..*"));
    check_drafts_close("qwen3_next", out);
}

static void test_quantize_mtp_calibrates_and_quantizes_the_mtp_block(void)
{
    moeq_quantize_options o = options();
    o.quantize_mtp = 1;
    char out[2048];
    quantize_into("qwen3_5_moe", &o, "hybrid_mtp", out, sizeof out);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, out, &err), MOEQ_OK);
    /* fc [64, 128] -> qweight [16, 64]; the MTP layer's attention and experts. */
    const st_tensor *t = st_checkpoint_find(&c, "mtp.fc.qweight");
    CHECK(t && t->shape[0] == 16 && t->shape[1] == 64);
    CHECK(st_checkpoint_find(&c, "mtp.layers.0.self_attn.q_proj.qweight") != NULL);
    CHECK(st_checkpoint_find(&c, "mtp.layers.0.mlp.experts.7.down_proj.qweight") != NULL);
    CHECK(st_checkpoint_find(&c, "mtp.layers.0.mlp.shared_expert.up_proj.qweight") != NULL);
    CHECK(st_checkpoint_find(&c, "mtp.pre_fc_norm_hidden.weight") != NULL);
    CHECK(st_checkpoint_find(&c, "mtp.layers.0.mlp.gate.weight") != NULL);
    st_checkpoint_close(&c);
    /* The language model's 121 linears and the MTP block's fc + 4 + 27. */
    CHECK_INT_EQ(check_every_tensor_reaches_output(fixture("qwen3_5_moe"), out), 121 + 1 + 4 + 27);
    CHECK(!dynamic_rule(out, "-:(.*\\.)?mtp\\..*"));
    CHECK(dynamic_rule(out, "-:(.*\\.)?visual\\..*"));
    /* report.json marks the MTP block's entry, after the 4 layers. */
    cJSON *rep = read_output_json(out, "report.json");
    CHECK(rep != NULL);
    cJSON *layers = cJSON_GetObjectItem(rep, "layers");
    CHECK_INT_EQ(cJSON_GetArraySize(layers), 5);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 4), "mtp")));
    CHECK(!cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 3), "mtp"));
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(
                     cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 4),
                                                            "modules"),
                                        0),
                     "name")),
                 "mtp.fc.weight");
    cJSON_Delete(rep);
    check_drafts_close("qwen3_5_moe", out);
}

/* A minimal Qwen3-Next config.json with `extra` spliced in. */
static moeq_code parse_next(const char *extra, moeq_config *c, moeq_error *err)
{
    char json[2048];
    snprintf(json, sizeof json,
             "{\"model_type\": \"qwen3_next\", \"hidden_size\": 64, \"num_hidden_layers\": 4, "
             "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32, "
             "\"vocab_size\": 160, \"num_experts\": 8, \"num_experts_per_tok\": 2, "
             "\"moe_intermediate_size\": 32, \"shared_expert_intermediate_size\": 48%s}",
             extra);
    moeq_arch a;
    moeq_code rc = moeq_arch_for_model_type("qwen3_next", &a, err);
    if (!rc) {
        rc = moeq_config_parse(json, "bad/config.json", &a, c, err);
        moeq_arch_free(&a);
    }
    return rc;
}

static const char *HEADS = ", \"linear_num_key_heads\": 2, \"linear_num_value_heads\": 4, "
                           "\"linear_key_head_dim\": 16, \"linear_value_head_dim\": 8";

static void test_linear_layers_come_from_layer_types_or_the_interval(void)
{
    moeq_config c;
    moeq_error err = {0};
    char extra[512];
    snprintf(extra, sizeof extra, "%s, \"layer_types\": [\"full_attention\", "
             "\"linear_attention\", \"linear_attention\", \"full_attention\"]", HEADS);
    CHECK_INT_EQ(parse_next(extra, &c, &err), MOEQ_OK);
    CHECK(!c.layer_is_linear[0] && c.layer_is_linear[1] && c.layer_is_linear[2] &&
          !c.layer_is_linear[3]);
    CHECK_INT_EQ(c.la_conv_kernel, 4); /* the default */
    CHECK_INT_EQ(c.attn_output_gate, 1);
    moeq_config_free(&c);
    /* Without layer_types: every full_attention_interval-th layer is full. */
    snprintf(extra, sizeof extra, "%s, \"full_attention_interval\": 2", HEADS);
    CHECK_INT_EQ(parse_next(extra, &c, &err), MOEQ_OK);
    CHECK(c.layer_is_linear[0] && !c.layer_is_linear[1] && c.layer_is_linear[2] &&
          !c.layer_is_linear[3]);
    moeq_config_free(&c);
}

static void test_bad_hybrid_configs_are_errors_naming_the_field(void)
{
    moeq_config c;
    moeq_error err = {0};
    char extra[512];
    snprintf(extra, sizeof extra, "%s, \"layer_types\": [\"linear_attention\"]", HEADS);
    CHECK_INT_EQ(parse_next(extra, &c, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "bad/config.json");
    CHECK_CONTAINS(err.msg, "\"layer_types\" must be an array of 4 layer types");
    snprintf(extra, sizeof extra, "%s, \"layer_types\": [\"full_attention\", "
             "\"sliding_attention\", \"full_attention\", \"full_attention\"]", HEADS);
    CHECK_INT_EQ(parse_next(extra, &c, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "\"layer_types\"[1] is sliding_attention");
    CHECK_INT_EQ(parse_next(", \"linear_num_key_heads\": 3, \"linear_num_value_heads\": 4, "
                            "\"linear_key_head_dim\": 16, \"linear_value_head_dim\": 8",
                            &c, &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "linear_num_value_heads (4) is not a multiple of "
                            "linear_num_key_heads (3)");
    CHECK_INT_EQ(parse_next(", \"linear_num_value_heads\": 4", &c, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "\"linear_num_key_heads\" is missing");
}

static void test_bad_hybrid_architecture_files_are_errors_naming_the_field(void)
{
    const char *head = "{\"name\": \"x\", \"model_types\": [\"x\"], ";
    const char *base_tensors =
        "\"embed\": \"e\", \"final_norm\": \"n\", \"attn_norm\": \"l.{L}.a\", "
        "\"q_proj\": \"l.{L}.q.weight\", \"k_proj\": \"l.{L}.k.weight\", "
        "\"v_proj\": \"l.{L}.v.weight\", \"o_proj\": \"l.{L}.o.weight\", "
        "\"mlp_norm\": \"l.{L}.m\", \"gate_proj\": \"l.{L}.g.weight\", "
        "\"up_proj\": \"l.{L}.u.weight\", \"down_proj\": \"l.{L}.d.weight\"";
    const struct {
        const char *middle, *tensors, *expect;
    } cases[] = {
        {"\"components\": {\"linear_attention\": \"gated_deltanet\"}, ",
         ", \"linear_conv\": \"l.{L}.c\", \"linear_dt_bias\": \"l.{L}.dt\", "
         "\"linear_a_log\": \"l.{L}.al\", \"linear_norm\": \"l.{L}.n\", "
         "\"linear_out_proj\": \"l.{L}.op.weight\", \"linear_in_qkv\": \"l.{L}.qkv.weight\"",
         "gated_deltanet needs either tensors.linear_in_qkv, linear_in_z"},
        {"\"components\": {\"linear_attention\": \"mamba\"}, ", "",
         "components.linear_attention must be one of: none, gated_deltanet"},
        {"\"components\": {}, \"mtp_layer_prefix\": [\"l.\"], ", "",
         "\"mtp_layer_prefix\" must be [from, to]"},
        {"\"components\": {}, \"mtp_layer_prefix\": [\"l.{L}.\", \"l.3.\"], ", "",
         "to with {L} or {N}"},
        {"\"components\": {}, \"mtp_keep_fc\": true, ", "",
         "\"mtp_keep_fc\" must be true or false, beside \"mtp_layer_prefix\""},
        {"\"components\": {}, \"mtp_layer_prefix\": [\"l.{L}.\", \"l.{N}.\"], "
         "\"mtp_zero_first_embedding\": 1, ", "",
         "\"mtp_zero_first_embedding\" must be true or false"},
        {"\"components\": {}, \"keep_modules\": [\"vis.ual\"], ", "",
         "keep_modules entries must be module names"},
        {"\"components\": {}, ", ", \"experts_gate_up\": \"l.{L}.gu\"",
         "tensors.experts_gate_up and experts_down go together"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[2048];
        snprintf(json, sizeof json, "%s%s\"tensors\": {%s%s}}", head, cases[i].middle,
                 base_tensors, cases[i].tensors);
        moeq_arch a;
        moeq_error err = {0};
        CHECK(moeq_arch_parse(json, "my_arch.json", &a, &err) != MOEQ_OK);
        CHECK_CONTAINS(err.msg, "my_arch.json");
        CHECK_CONTAINS(err.msg, cases[i].expect);
    }
}

static void test_an_mtp_block_of_another_form_is_refused(void)
{
    const char *dir = test_tmpdir("hybrid_mtp_form");
    char path[4200], target[4200], *text;
    moeq_error err = {0};
    snprintf(path, sizeof path, "%s/config.json", fixture("qwen3_5_moe"));
    CHECK_INT_EQ(moeq_read_text_file(path, 1 << 20, &text, &err), MOEQ_OK);
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    cJSON_AddNumberToObject(cJSON_GetObjectItem(cfg, "text_config"), "mtp_num_hidden_layers", 2);
    char *out = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    test_write_file(path, out, strlen(out));
    cJSON_free(out);
    cJSON_Delete(cfg);
    snprintf(target, sizeof target, "%s/model.safetensors", fixture("qwen3_5_moe"));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(symlink(target, path) == 0);
    moeq_model m;
    moeq_mtp mtp;
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_mtp_open(&m, &mtp, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "an MTP block of 2 layers is not supported");
    moeq_model_close(&m);
}

static void test_cli_quantizes_the_mtp_block_or_says_there_is_none(void)
{
    char dir[2048], bin[2200], args[8192];
    static char out[1 << 16];
    /* test_tmpdir is relative to the build directory; the CLI runs from the source. */
    if (!getcwd(dir, sizeof dir - 64))
        return;
    strcat(dir, "/");
    strcat(dir, test_tmpdir("hybrid_cli"));
    snprintf(bin, sizeof bin, "%s/calib.bin", dir);
    int32_t tokens[2048];
    test_rng r = {9};
    for (int i = 0; i < 2048; i++)
        tokens[i] = (int32_t)(test_rng_next(&r) % 150);
    test_write_file(bin, tokens, sizeof tokens);
    snprintf(args, sizeof args,
             "quantize --model tests/fixtures/golden/qwen3_5_moe --out '%s/out' --calib '%s' "
             "--nsamples 4 --seqlen 96 --group-size 16 --quantize-mtp true",
             dir, bin);
    CHECK_INT_EQ(run_moeq(args, out, sizeof out), 0);
    CHECK_CONTAINS(out, "MTP block: loaded");
    CHECK_CONTAINS(out, "\nmtp ");
    char path[2300];
    snprintf(path, sizeof path, "%s/out", dir);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, path, &err), MOEQ_OK);
    CHECK(st_checkpoint_find(&c, "mtp.fc.qweight") != NULL);
    st_checkpoint_close(&c);
    snprintf(args, sizeof args,
             "quantize --model tests/fixtures/golden/qwen3_moe --out '%s/out2' --calib '%s' "
             "--nsamples 4 --seqlen 96 --group-size 16 --quantize-mtp true",
             dir, bin);
    CHECK(run_moeq(args, out, sizeof out) != 0);
    CHECK_CONTAINS(out, "--quantize-mtp: tests/fixtures/golden/qwen3_moe has no MTP block that "
                        "architecture qwen3_moe names");
    snprintf(path, sizeof path, "%s/out2", dir);
    CHECK(!moeq_dir_exists(path));
}

int main(void)
{
    RUN(test_linear_layers_come_from_layer_types_or_the_interval);
    RUN(test_bad_hybrid_configs_are_errors_naming_the_field);
    RUN(test_bad_hybrid_architecture_files_are_errors_naming_the_field);
    RUN(test_qwen3_next_quantizes_deltanet_and_gated_attention);
    RUN(test_qwen3_next_at_8_bits_is_nearly_lossless);
    RUN(test_quantize_linear_ba_quantizes_the_gate_projections_too);
    RUN(test_qwen3_5_moe_quantizes_the_language_model_and_copies_the_rest);
    RUN(test_qwen3_5_dense_quantizes_the_language_model_and_copies_the_rest);
    RUN(test_a_nextn_prediction_layer_past_the_last_layer_is_copied_unchanged);
    RUN(test_quantize_mtp_calibrates_and_quantizes_the_mtp_block);
    RUN(test_quantize_mtp_quantizes_qwen3_next_s_mtp_block);
    RUN(test_quantize_mtp_quantizes_glm4_moe_s_nextn_layer);
    RUN(test_quantize_mtp_quantizes_deepseek_v3_s_nextn_layer);
    RUN(test_an_unquantized_nextn_layer_is_excluded_from_gptq);
    RUN(test_cli_quantizes_the_mtp_block_or_says_there_is_none);
    RUN(test_an_mtp_block_of_another_form_is_refused);
    return test_summary();
}
