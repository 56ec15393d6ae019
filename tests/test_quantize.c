/* test_quantize.c: the layer loop end to end on the golden fixtures: the
 * written checkpoint has the GPTQ tensors and configs loaders expect, reads
 * back through moeq, stays close to the original (and closer than RTN),
 * every expert-calibration mode runs, dense models go through the same
 * loop, runs are byte-for-byte deterministic, and bad settings leave
 * nothing behind. */
#include "test.h"
#include "fixture_run.h"

#include "common/dtype.h"
#include "common/fileio.h"
#include "io/gptq_writer.h"
#include "model/model.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <cjson/cJSON.h>
#include <sys/stat.h>

static const char *fixture(const char *name)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    return dir;
}

/* 16 windows of 32 tokens of a deterministic pseudo-random stream. */
static moeq_calib_set calib_for(const moeq_model *m, uint64_t seed)
{
    enum { N = 64 * 32 };
    static int32_t stream[N];
    test_rng r = {seed};
    for (int i = 0; i < N; i++)
        stream[i] = (int32_t)(test_rng_next(&r) % (uint64_t)m->cfg.vocab_size);
    moeq_calib_set set;
    moeq_error err = {0};
    if (moeq_calib_set_sample(stream, N, 16, 32, 7, &set, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(2);
    }
    return set;
}

static moeq_quantize_options options(moeq_method method, moeq_expert_calib mode)
{
    moeq_quantize_options o = {.method = method, .gptq = moeq_gptq_default_config(),
                               .expert_calib = mode, .min_expert_tokens = 1,
                               .true_sequential = 1, .token_chunk = 100};
    o.gptq.group_size = 16; /* divides every fixture's input dims */
    return o;
}

/* Quantizes fixture `name` into out; returns the status. */
static moeq_code run(const char *name, const moeq_quantize_options *opt, const char *out,
                     moeq_error *err)
{
    return quantize_dir(fixture(name), opt, out, 64 * 32, 99, 16, 32, err); /* calib_for's */
}

/* KL of the quantized checkpoint at out against the fixture, on 512
 * pseudo-random tokens (seed 12345, not the calibration stream) in windows
 * of 32. */
static double kl_against_original(const char *name, const char *out)
{
    return kl_on_random_tokens(fixture(name), out, 12345, 32);
}

/* GPTQ of fixture `name` with expert mode `mode` into out (tmp/out, in a
 * fresh directory of the test's own; out_size bytes), which must succeed,
 * then opened into c. */
static void quantize_and_open(const char *name, moeq_expert_calib mode, const char *tmp,
                              char *out, size_t out_size, st_checkpoint *c)
{
    snprintf(out, out_size, "%s/out", test_tmpdir(tmp));
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, mode);
    moeq_error err = {0};
    CHECK_INT_EQ(run(name, &o, out, &err), MOEQ_OK);
    CHECK_INT_EQ(st_checkpoint_open(c, out, &err), MOEQ_OK);
}

static void test_output_has_gptq_tensors_configs_and_report(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_and_open("qwen3_moe", MOEQ_EXPERT_CALIB_ALL, "quant_layout", out, sizeof out, &c);
    moeq_error err = {0};
    /* experts.7.down_proj of layer 2: [64 out, 32 in] -> 4-bit qweight [4, 64],
     * 2 groups of 16 */
    const st_tensor *qw = st_checkpoint_find(&c, "model.layers.2.mlp.experts.7.down_proj.qweight");
    const st_tensor *qz = st_checkpoint_find(&c, "model.layers.2.mlp.experts.7.down_proj.qzeros");
    const st_tensor *sc = st_checkpoint_find(&c, "model.layers.2.mlp.experts.7.down_proj.scales");
    const st_tensor *gi = st_checkpoint_find(&c, "model.layers.2.mlp.experts.7.down_proj.g_idx");
    CHECK(qw && qw->dtype == ST_I32 && qw->shape[0] == 4 && qw->shape[1] == 64);
    CHECK(qz && qz->dtype == ST_I32 && qz->shape[0] == 2 && qz->shape[1] == 8);
    CHECK(sc && sc->dtype == ST_F16 && sc->shape[0] == 2 && sc->shape[1] == 64);
    CHECK(gi && gi->dtype == ST_I32 && gi->shape[0] == 32);
    /* q_proj [128, 64]: qweight [8, 128], 4 groups of 16 */
    qw = st_checkpoint_find(&c, "model.layers.0.self_attn.q_proj.qweight");
    CHECK(qw && qw->shape[0] == 8 && qw->shape[1] == 128);
    sc = st_checkpoint_find(&c, "model.layers.0.self_attn.q_proj.scales");
    CHECK(sc && sc->shape[0] == 4);
    /* Layer 1 is dense (mlp_only_layers): its MLP is quantized too. */
    CHECK(st_checkpoint_find(&c, "model.layers.1.mlp.down_proj.qweight") != NULL);
    /* No quantized weight keeps a .weight; router, norms, embeddings do. */
    CHECK(st_checkpoint_find(&c, "model.layers.0.self_attn.q_proj.weight") == NULL);
    CHECK(st_checkpoint_find(&c, "model.layers.0.mlp.experts.0.gate_proj.weight") == NULL);
    const char *kept[] = {"model.layers.0.mlp.gate.weight", "model.layers.0.self_attn.q_norm.weight",
                          "model.layers.2.post_attention_layernorm.weight",
                          "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
    for (int i = 0; i < 6; i++) {
        const st_tensor *t = st_checkpoint_find(&c, kept[i]);
        CHECK(t && t->dtype == ST_BF16);
    }
    /* 3 layers x 4 attention + 2 MoE layers x 8 experts x 3 + 3 dense MLP
     * linears */
    int qweights = 0;
    for (size_t i = 0; i < c.n_tensors; i++)
        qweights += strstr(c.tensors[i]->name, ".qweight") != NULL;
    CHECK_INT_EQ(qweights, 63);
    st_checkpoint_close(&c);

    char path[2200], *text;
    snprintf(path, sizeof path, "%s/config.json", out);
    CHECK_INT_EQ(moeq_read_text_file(path, 1 << 20, &text, &err), MOEQ_OK);
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    cJSON *q = cJSON_GetObjectItem(cfg, "quantization_config");
    CHECK(q != NULL);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "quant_method")), "gptq");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "checkpoint_format")), "gptq");
    CHECK_INT_EQ(cJSON_GetObjectItem(q, "bits")->valueint, 4);
    CHECK_INT_EQ(cJSON_GetObjectItem(q, "group_size")->valueint, 16);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(q, "sym")));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(q, "desc_act")));
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "model_type")), "qwen3_moe");
    /* What optimum converts in each layer: the 4 attention projections, the
     * 8 experts' 3 and the dense layer's 3, sorted; never the router. */
    cJSON *in_block = cJSON_GetObjectItem(q, "modules_in_block_to_quantize");
    CHECK_INT_EQ(cJSON_GetArraySize(in_block), 1);
    cJSON *names = cJSON_GetArrayItem(in_block, 0);
    CHECK_INT_EQ(cJSON_GetArraySize(names), 4 + 8 * 3 + 3);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetArrayItem(names, 0)), "mlp.down_proj");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetArrayItem(names, 1)), "mlp.experts.0.down_proj");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetArrayItem(names, 30)), "self_attn.v_proj");
    const cJSON *name;
    cJSON_ArrayForEach(name, names) CHECK(strcmp(cJSON_GetStringValue(name), "mlp.gate"));
    cJSON_Delete(cfg);
    snprintf(path, sizeof path, "%s/quantize_config.json", out);
    CHECK(moeq_file_exists(path));
    cJSON *rep = read_output_json(out, "report.json");
    CHECK(rep != NULL);
    cJSON *layers = cJSON_GetObjectItem(rep, "layers");
    CHECK_INT_EQ(cJSON_GetArraySize(layers), 3);
    cJSON *l0 = cJSON_GetArrayItem(layers, 0);
    cJSON *tokens = cJSON_GetObjectItem(l0, "expert_tokens");
    CHECK_INT_EQ(cJSON_GetArraySize(tokens), 8);
    double sum = 0;
    for (int e = 0; e < 8; e++)
        sum += cJSON_GetArrayItem(tokens, e)->valuedouble;
    CHECK_NEAR(sum, 16 * 32 * 2, 0, 0); /* every token routed to top-2 */
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(layers, 1), "expert_tokens") == NULL);
    cJSON *mods = cJSON_GetObjectItem(l0, "modules");
    CHECK_INT_EQ(cJSON_GetArraySize(mods), 4 + 8 * 3);
    cJSON *m0 = cJSON_GetArrayItem(mods, 0);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(m0, "name")),
                 "model.layers.0.self_attn.q_proj.weight");
    CHECK(cJSON_GetObjectItem(m0, "loss")->valuedouble > 0);
    CHECK(cJSON_GetObjectItem(m0, "damp")->valuedouble >= 0.01);
    cJSON_Delete(rep);
}

static void test_gptq_stays_closer_to_the_original_than_rtn(void)
{
    const char *dir = test_tmpdir("quant_vs_rtn");
    char g[2048], r[2048];
    snprintf(g, sizeof g, "%s/gptq", dir);
    snprintf(r, sizeof r, "%s/rtn", dir);
    moeq_error err = {0};
    moeq_quantize_options og = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_quantize_options orr = options(MOEQ_METHOD_RTN, MOEQ_EXPERT_CALIB_ALL);
    og.gptq.bits = orr.gptq.bits = 3;
    /* 3-bit packing needs dimensions in multiples of 32: qwen3_moe has them. */
    CHECK_INT_EQ(run("qwen3_moe", &og, g, &err), MOEQ_OK);
    CHECK_INT_EQ(run("qwen3_moe", &orr, r, &err), MOEQ_OK);
    double kg = kl_against_original("qwen3_moe", g), kr = kl_against_original("qwen3_moe", r);
    printf("  qwen3_moe 3-bit g16: KL gptq %.5f, rtn %.5f\n", kg, kr);
    CHECK(kg > 0 && kg < kr);
}

static void test_every_expert_mode_and_dense_model_round_trips(void)
{
    const char *dir = test_tmpdir("quant_modes");
    moeq_expert_calib modes[] = {MOEQ_EXPERT_CALIB_ROUTED, MOEQ_EXPERT_CALIB_ALL,
                                 MOEQ_EXPERT_CALIB_WEIGHTED};
    const char *names[] = {"qwen3_moe", "mixtral", "qwen2_moe", "gpt_oss", "llama4_text"};
    for (int i = 0; i < 5; i++)
        for (int m = 0; m < 3; m++) {
            char out[2048];
            snprintf(out, sizeof out, "%s/%s-%d", dir, names[i], m);
            moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, modes[m]);
            moeq_error err = {0};
            CHECK_INT_EQ(run(names[i], &o, out, &err), MOEQ_OK);
            double kl = kl_against_original(names[i], out);
            if (!(kl > 0 && kl < 0.05)) {
                fprintf(stderr, "  %s mode %d: KL %g\n", names[i], m, kl);
                test_failures_in_current++;
            }
        }
    const char *dense[] = {"llama", "qwen2", "qwen3"};
    for (int i = 0; i < 3; i++) {
        char out[2048];
        snprintf(out, sizeof out, "%s/%s", dir, dense[i]);
        moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
        moeq_error err = {0};
        CHECK_INT_EQ(run(dense[i], &o, out, &err), MOEQ_OK);
        double kl = kl_against_original(dense[i], out);
        CHECK(kl > 0 && kl < 0.05);
    }
}

/* Every tensor of the checkpoint at dir: none may be FP8 or a block scale. */
static int fp8_leftovers(const st_checkpoint *c)
{
    int n = 0;
    for (size_t i = 0; i < c->n_tensors; i++) {
        const char *name = c->tensors[i]->name;
        size_t len = strlen(name);
        n += c->tensors[i]->dtype == ST_F8_E4M3 ||
             (len > 10 && !strcmp(name + len - 10, "_scale_inv"));
    }
    return n;
}

static void test_fp8_source_becomes_gptq_without_fp8_tensors_or_config(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_and_open("qwen3_moe_fp8", MOEQ_EXPERT_CALIB_ALL, "quant_fp8", out, sizeof out, &c);
    moeq_error err = {0};
    CHECK_INT_EQ(fp8_leftovers(&c), 0);
    /* q_proj [128, 160]: qweight [20, 128]; experts.3.down_proj [160, 80]:
     * qweight [10, 160], 5 groups of 16 */
    const st_tensor *t = st_checkpoint_find(&c, "model.layers.0.self_attn.q_proj.qweight");
    CHECK(t && t->shape[0] == 20 && t->shape[1] == 128);
    t = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.down_proj.qweight");
    CHECK(t && t->shape[0] == 10 && t->shape[1] == 160);
    t = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.down_proj.scales");
    CHECK(t && t->dtype == ST_F16 && t->shape[0] == 5 && t->shape[1] == 160);
    t = st_checkpoint_find(&c, "model.layers.1.mlp.up_proj.qweight");
    CHECK(t && t->shape[0] == 20 && t->shape[1] == 144);
    t = st_checkpoint_find(&c, "model.layers.0.mlp.gate.weight"); /* the router: not FP8 */
    CHECK(t && t->dtype == ST_BF16);
    /* The FP8 lm_head is not quantized: it is written dequantized, in bf16. */
    t = st_checkpoint_find(&c, "lm_head.weight");
    moeq_model src;
    CHECK_INT_EQ(moeq_model_open(fixture("qwen3_moe_fp8"), NULL, &src, &err), MOEQ_OK);
    float *head = NULL;
    size_t n = (size_t)src.cfg.vocab_size * src.cfg.hidden_size;
    CHECK_INT_EQ(moeq_model_load_f32(&src, MOEQ_T_LM_HEAD, -1, -1, src.cfg.vocab_size,
                                     src.cfg.hidden_size, &head, &err),
                 MOEQ_OK);
    CHECK(t && t->dtype == ST_BF16 && t->nbytes == 2 * n);
    size_t differ = 0;
    for (size_t i = 0; t && head && i < n; i++) {
        uint16_t b;
        memcpy(&b, (const char *)t->data + 2 * i, 2);
        differ += b != moeq_f32_to_bf16(head[i]);
    }
    CHECK_INT_EQ(differ, 0);
    free(head);
    moeq_model_close(&src);
    st_checkpoint_close(&c);
    cJSON *cfg = read_output_json(out, "config.json");
    cJSON *q = cJSON_GetObjectItem(cfg, "quantization_config");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "quant_method")), "gptq");
    CHECK(cJSON_GetObjectItem(q, "weight_block_size") == NULL);
    CHECK(cJSON_GetObjectItem(q, "fmt") == NULL);
    cJSON_Delete(cfg);
    double kl = kl_against_original("qwen3_moe_fp8", out);
    CHECK(kl > 0 && kl < 0.05);
}

/* The bf16 element i of a 1-D or flattened tensor. */
static uint16_t bf16_at(const st_tensor *t, size_t i)
{
    uint16_t b;
    memcpy(&b, (const char *)t->data + 2 * i, 2);
    return b;
}

static void test_gpt_oss_fused_experts_are_written_per_expert_with_their_biases(void)
{
    char out[2048];
    st_checkpoint c, src;
    quantize_and_open("gpt_oss", MOEQ_EXPERT_CALIB_ROUTED, "quant_gpt_oss", out, sizeof out, &c);
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&src, fixture("gpt_oss"), &err), MOEQ_OK);
    /* Per expert, under the names vLLM maps (experts.E.{gate,up,down}_proj):
     * gate/up [32 out, 64 in] -> qweight [8, 32]; down [64, 32] -> [4, 64]. */
    const st_tensor *t = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.gate_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 32);
    t = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.up_proj.scales");
    CHECK(t && t->shape[0] == 4 && t->shape[1] == 32);
    t = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.down_proj.qweight");
    CHECK(t && t->shape[0] == 4 && t->shape[1] == 64);
    /* q_proj [4 heads x 24, 64]: qweight [8, 96]; o_proj [64, 96]: [12, 64]. */
    t = st_checkpoint_find(&c, "model.layers.0.self_attn.q_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 96);
    t = st_checkpoint_find(&c, "model.layers.0.self_attn.o_proj.qweight");
    CHECK(t && t->shape[0] == 12 && t->shape[1] == 64);
    /* Biases: gate from the even, up from the odd entries of gate_up_proj_bias
     * row e; down from down_proj_bias row e; the source's bytes. */
    const st_tensor *fgu = st_checkpoint_find(&src, "model.layers.2.mlp.experts.gate_up_proj_bias");
    const st_tensor *fd = st_checkpoint_find(&src, "model.layers.2.mlp.experts.down_proj_bias");
    const st_tensor *bg = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.gate_proj.bias");
    const st_tensor *bu = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.up_proj.bias");
    const st_tensor *bd = st_checkpoint_find(&c, "model.layers.2.mlp.experts.3.down_proj.bias");
    CHECK(fgu && fd && bg && bu && bd && bg->dtype == ST_BF16 && bg->shape[0] == 32 &&
          bu->shape[0] == 32 && bd->shape[0] == 64);
    size_t differ = 0;
    for (size_t i = 0; fgu && bg && bu && i < 32; i++)
        differ += bf16_at(bg, i) != bf16_at(fgu, 3 * 64 + 2 * i) ||
                  bf16_at(bu, i) != bf16_at(fgu, 3 * 64 + 2 * i + 1);
    for (size_t i = 0; fd && bd && i < 64; i++)
        differ += bf16_at(bd, i) != bf16_at(fd, 3 * 64 + i);
    CHECK_INT_EQ(differ, 0);
    /* No fused tensor is left; sinks, biases of attention and router are kept. */
    for (size_t i = 0; i < c.n_tensors; i++)
        CHECK(!strstr(c.tensors[i]->name, "gate_up_proj") &&
              !strstr(c.tensors[i]->name, "experts.down_proj"));
    const char *kept[] = {"model.layers.1.self_attn.sinks", "model.layers.1.mlp.router.bias",
                          "model.layers.1.mlp.router.weight", "model.layers.1.self_attn.o_proj.bias"};
    for (int i = 0; i < 4; i++)
        CHECK(st_checkpoint_find(&c, kept[i]) != NULL);
    int qweights = 0;
    for (size_t i = 0; i < c.n_tensors; i++)
        qweights += strstr(c.tensors[i]->name, ".qweight") != NULL;
    CHECK_INT_EQ(qweights, 3 * (4 + 4 * 3));
    st_checkpoint_close(&src);
    st_checkpoint_close(&c);
    /* moeq reads its own output back per expert; it stays close to the source. */
    double kl = kl_against_original("gpt_oss", out);
    printf("  gpt_oss 4-bit g16 routed: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.05);
}

static void test_gpt_oss_mxfp4_source_becomes_gptq_without_mxfp4_tensors_or_config(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_and_open("gpt_oss_mxfp4", MOEQ_EXPERT_CALIB_ALL, "quant_gpt_oss_mxfp4", out,
                      sizeof out, &c);
    int leftovers = 0, qweights = 0;
    for (size_t i = 0; i < c.n_tensors; i++) {
        leftovers += strstr(c.tensors[i]->name, "_blocks") || strstr(c.tensors[i]->name, "_scales") ||
                     strstr(c.tensors[i]->name, "gate_up_proj");
        qweights += strstr(c.tensors[i]->name, ".qweight") != NULL;
    }
    CHECK_INT_EQ(leftovers, 0);
    CHECK_INT_EQ(qweights, 3 * (4 + 4 * 3));
    const st_tensor *t = st_checkpoint_find(&c, "model.layers.1.mlp.experts.0.down_proj.qweight");
    CHECK(t && t->shape[0] == 4 && t->shape[1] == 64);
    CHECK(st_checkpoint_find(&c, "model.layers.1.mlp.experts.0.up_proj.bias") != NULL);
    st_checkpoint_close(&c);
    cJSON *cfg = read_output_json(out, "config.json");
    cJSON *q = cJSON_GetObjectItem(cfg, "quantization_config");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "quant_method")), "gptq");
    CHECK(cJSON_GetObjectItem(q, "modules_to_not_convert") == NULL);
    cJSON_Delete(cfg);
    double kl = kl_against_original("gpt_oss_mxfp4", out);
    printf("  gpt_oss_mxfp4 4-bit g16 all: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.05);
}

static void test_llama4_fused_experts_are_written_per_expert_beside_the_shared_expert(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_and_open("llama4_text", MOEQ_EXPERT_CALIB_ROUTED, "quant_llama4", out, sizeof out, &c);
    /* Experts under vLLM's per-expert names: gate/up [32, 64] -> qweight
     * [8, 32], down [64, 32] -> [4, 64]; the shared expert and layer 2's
     * dense MLP [96, 64] under their own names. */
    const st_tensor *t =
        st_checkpoint_find(&c, "model.layers.3.feed_forward.experts.2.up_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 32);
    t = st_checkpoint_find(&c, "model.layers.3.feed_forward.experts.2.down_proj.qweight");
    CHECK(t && t->shape[0] == 4 && t->shape[1] == 64);
    t = st_checkpoint_find(&c, "model.layers.0.feed_forward.shared_expert.gate_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 32);
    t = st_checkpoint_find(&c, "model.layers.2.feed_forward.gate_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 96);
    CHECK(st_checkpoint_find(&c, "model.layers.0.feed_forward.router.weight") != NULL);
    int fused = 0, qweights = 0;
    for (size_t i = 0; i < c.n_tensors; i++) {
        fused += strstr(c.tensors[i]->name, "experts.gate_up_proj") ||
                 strstr(c.tensors[i]->name, "experts.down_proj");
        qweights += strstr(c.tensors[i]->name, ".qweight") != NULL;
    }
    CHECK_INT_EQ(fused, 0);
    /* 4 layers x 4 attention; 3 MoE layers x (4 experts + shared) x 3; 1 dense x 3 */
    CHECK_INT_EQ(qweights, 16 + 45 + 3);
    st_checkpoint_close(&c);
    double kl = kl_against_original("llama4_text", out);
    printf("  llama4_text 4-bit g16 routed: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.05);
}

static void test_llama4_multimodal_checkpoint_keeps_its_vision_model(void)
{
    char out[2048];
    st_checkpoint c, src;
    quantize_and_open("llama4", MOEQ_EXPERT_CALIB_ALL, "quant_llama4_mm", out, sizeof out, &c);
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&src, fixture("llama4"), &err), MOEQ_OK);
    const st_tensor *t = st_checkpoint_find(
        &c, "language_model.model.layers.1.feed_forward.experts.3.gate_proj.qweight");
    CHECK(t && t->shape[0] == 8 && t->shape[1] == 32);
    CHECK(st_checkpoint_find(&c, "language_model.model.layers.2.feed_forward.down_proj.qweight"));
    CHECK(!st_checkpoint_find(&c, "language_model.model.layers.1.feed_forward.experts.gate_up_proj"));
    /* The vision model and projector are copied byte for byte. */
    int vision = 0, same = 0;
    for (size_t i = 0; i < src.n_tensors; i++) {
        const st_tensor *s = src.tensors[i];
        if (strncmp(s->name, "vision_model.", 13) && strncmp(s->name, "multi_modal_projector.", 22))
            continue;
        vision++;
        const st_tensor *d = st_checkpoint_find(&c, s->name);
        same += d && d->dtype == s->dtype && d->nbytes == s->nbytes &&
                !memcmp(d->data, s->data, s->nbytes);
    }
    CHECK(vision > 0);
    CHECK_INT_EQ(same, vision);
    st_checkpoint_close(&src);
    st_checkpoint_close(&c);
    /* Loaders are told to leave them unquantized. */
    cJSON *cfg = read_output_json(out, "config.json");
    cJSON *dyn = cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "quantization_config"), "dynamic");
    CHECK(cJSON_GetObjectItem(dyn, "-:(.*\\.)?vision_model\\..*") != NULL);
    CHECK(cJSON_GetObjectItem(dyn, "-:(.*\\.)?multi_modal_projector\\..*") != NULL);
    cJSON_Delete(cfg);
    double kl = kl_against_original("llama4", out);
    printf("  llama4 (multimodal) 4-bit g16 all: KL %.5f\n", kl);
    CHECK(kl > 0 && kl < 0.05);
}

static int same_file(const char *a, const char *b);

/* Each of the four shards of outputs a and b is the same, byte for byte. */
static void check_same_shards(const char *a, const char *b)
{
    for (int s = 1; s <= 4; s++) {
        char fa[2200], fb[2200];
        snprintf(fa, sizeof fa, "%s/model-%05d-of-00004.safetensors", a, s);
        snprintf(fb, sizeof fb, "%s/model-%05d-of-00004.safetensors", b, s);
        CHECK(same_file(fa, fb));
    }
}

static void test_true_sequential_off_calibrates_on_the_original_layer(void)
{
    const char *dir = test_tmpdir("quant_sequential");
    char a[2048], b[2048], c[2048], d[2048];
    snprintf(a, sizeof a, "%s/ts", dir);
    snprintf(b, sizeof b, "%s/no-ts", dir);
    snprintf(c, sizeof c, "%s/rtn-ts", dir);
    snprintf(d, sizeof d, "%s/rtn-no-ts", dir);
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_error err = {0};
    CHECK_INT_EQ(run("qwen2_moe", &o, a, &err), MOEQ_OK);
    o.true_sequential = 0;
    CHECK_INT_EQ(run("qwen2_moe", &o, b, &err), MOEQ_OK);
    /* Layer 0's q/k/v see the same inputs either way; o_proj does not. */
    char fa[2200], fb[2200];
    snprintf(fa, sizeof fa, "%s/model-00001-of-00004.safetensors", a);
    snprintf(fb, sizeof fb, "%s/model-00001-of-00004.safetensors", b);
    CHECK(!same_file(fa, fb));
    double kl_ts = kl_against_original("qwen2_moe", a);
    double kl_no = kl_against_original("qwen2_moe", b);
    CHECK(kl_ts > 0 && kl_ts < 0.05 && kl_no > 0 && kl_no < 0.05);
    /* RTN uses no activations: both orders give the same bytes. */
    o = options(MOEQ_METHOD_RTN, MOEQ_EXPERT_CALIB_ALL);
    CHECK_INT_EQ(run("qwen2_moe", &o, c, &err), MOEQ_OK);
    o.true_sequential = 0;
    CHECK_INT_EQ(run("qwen2_moe", &o, d, &err), MOEQ_OK);
    for (int s = 1; s <= 4; s++) {
        snprintf(fa, sizeof fa, "%s/model-%05d-of-00004.safetensors", c, s);
        snprintf(fb, sizeof fb, "%s/model-%05d-of-00004.safetensors", d, s);
        CHECK(same_file(fa, fb));
    }
}

static int same_file(const char *a, const char *b)
{
    char *x, *y;
    size_t nx, ny;
    moeq_error err = {0};
    if (moeq_read_file(a, 1 << 26, &x, &nx, &err) || moeq_read_file(b, 1 << 26, &y, &ny, &err))
        return 0;
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static void test_routed_with_every_expert_below_the_floor_equals_bypass(void)
{
    /* The fallback of routed mode is exactly the bypass calibration. */
    const char *dir = test_tmpdir("quant_fallback");
    char a[2048], b[2048];
    snprintf(a, sizeof a, "%s/all", dir);
    snprintf(b, sizeof b, "%s/routed", dir);
    moeq_quantize_options oa = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_quantize_options orr = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ROUTED);
    orr.min_expert_tokens = 1 << 30;
    moeq_error err = {0};
    CHECK_INT_EQ(run("mixtral", &oa, a, &err), MOEQ_OK);
    CHECK_INT_EQ(run("mixtral", &orr, b, &err), MOEQ_OK);
    check_same_shards(a, b);
}

static void test_same_inputs_give_byte_identical_output(void)
{
    const char *dir = test_tmpdir("quant_determinism");
    char a[2048], b[2048];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_WEIGHTED);
    o.gptq.desc_act = 1;
    moeq_error err = {0};
    CHECK_INT_EQ(run("qwen3_moe", &o, a, &err), MOEQ_OK);
    CHECK_INT_EQ(run("qwen3_moe", &o, b, &err), MOEQ_OK);
    const char *files[] = {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                           "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                           "model.safetensors.index.json", "config.json"};
    for (int i = 0; i < 6; i++) {
        char fa[2200], fb[2200];
        snprintf(fa, sizeof fa, "%s/%s", a, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", b, files[i]);
        CHECK(same_file(fa, fb));
    }
}

/* token_chunk 0 is the default chunk (a library caller that leaves it out
 * once looped forever on the CPU): the output equals an explicit chunk of
 * MOEQ_DEFAULT_TOKEN_CHUNK byte for byte; a negative chunk is refused. */
static void test_token_chunk_zero_is_the_default_chunk(void)
{
    const char *dir = test_tmpdir("quant_token_chunk");
    char a[2048], b[2048], c[2048];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_error err = {0};
    o.token_chunk = 0;
    CHECK_INT_EQ(run("qwen3_moe", &o, a, &err), MOEQ_OK);
    o.token_chunk = MOEQ_DEFAULT_TOKEN_CHUNK;
    CHECK_INT_EQ(run("qwen3_moe", &o, b, &err), MOEQ_OK);
    check_same_shards(a, b);
    o.token_chunk = -1;
    CHECK_INT_EQ(run("qwen3_moe", &o, c, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "token chunk -1");
    struct stat st;
    CHECK(stat(c, &st) != 0);
}

static void test_existing_output_is_refused_and_failures_leave_nothing(void)
{
    const char *dir = test_tmpdir("quant_refuse");
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_error err = {0};
    /* An existing output directory: refused before any work. */
    CHECK_INT_EQ(run("llama", &o, dir, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "already exists");
    /* A group size that does not divide the inputs (64 / 48): the run fails
     * and neither the output nor a partial directory remains. */
    char out[2048];
    snprintf(out, sizeof out, "%s/out", dir);
    o.gptq.group_size = 48;
    CHECK_INT_EQ(run("llama", &o, out, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--group-size 48");
    CHECK_CONTAINS(err.msg, "layer 0");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir);
    CHECK(system(cmd) == 0);
}

static void test_nan_weights_and_activations_stop_the_run_naming_layer_and_module(void)
{
    const char *dir = test_tmpdir("quant_nan");
    char src[2048], out[2048];
    moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, MOEQ_EXPERT_CALIB_ALL);
    moeq_error err = {0};
    /* A NaN in a quantized weight: the solver names it. */
    snprintf(src, sizeof src, "%s/weight", dir);
    CHECK(mkdir(src, 0755) == 0);
    copy_poisoned(fixture("llama"), src, "model.layers.1.self_attn.k_proj.weight", 70, 0x7FC0);
    moeq_model m;
    CHECK_INT_EQ(moeq_model_open(src, NULL, &m, &err), MOEQ_OK);
    moeq_calib_set set = calib_for(&m, 5);
    snprintf(out, sizeof out, "%s/out-weight", dir);
    moeq_gptq_writer w;
    CHECK_INT_EQ(moeq_gptq_writer_open(&w, &m, &o, out, NULL, 0, 0, &err), MOEQ_OK);
    moeq_layer_sink sink = {moeq_gptq_writer_write_layer, moeq_gptq_writer_layer_done, &w};
    CHECK_INT_EQ(moeq_quantize_layers(&m, &set, &o, &sink, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "layer 1, k_proj");
    CHECK_CONTAINS(err.msg, "non-finite");
    moeq_gptq_writer_close(&w);
    moeq_calib_set_free(&set);
    moeq_model_close(&m);
    /* A NaN in a norm weight (not quantized) poisons the activations. */
    snprintf(src, sizeof src, "%s/norm", dir);
    CHECK(mkdir(src, 0755) == 0);
    copy_poisoned(fixture("llama"), src, "model.layers.2.post_attention_layernorm.weight", 3,
                  0x7FC0);
    CHECK_INT_EQ(moeq_model_open(src, NULL, &m, &err), MOEQ_OK);
    set = calib_for(&m, 5);
    snprintf(out, sizeof out, "%s/out-norm", dir);
    CHECK_INT_EQ(moeq_gptq_writer_open(&w, &m, &o, out, NULL, 0, 0, &err), MOEQ_OK);
    sink.ctx = &w;
    CHECK_INT_EQ(moeq_quantize_layers(&m, &set, &o, &sink, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "layer 2: non-finite activation in the input of the MLP");
    moeq_gptq_writer_close(&w);
    moeq_calib_set_free(&set);
    moeq_model_close(&m);
    /* Neither output directory exists. */
    CHECK(!moeq_dir_exists(out));
}

/* The four GPTQ tensors of a quantized linear `base` (its name without
 * "weight") of shape [out, in] at 4 bits, groups of 16, and no base.weight. */
static void expect_gptq(const st_checkpoint *c, const char *base, int out, int in)
{
    char name[512];
    const struct {
        const char *suffix;
        st_dtype dtype;
        int64_t rows, cols;
    } parts[] = {{"qweight", ST_I32, in / 8, out},
                 {"qzeros", ST_I32, in / 16, out / 8},
                 {"scales", ST_F16, in / 16, out},
                 {"g_idx", ST_I32, in, 0}};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s%s", base, parts[i].suffix);
        const st_tensor *t = st_checkpoint_find(c, name);
        int ok = t && t->dtype == parts[i].dtype && t->ndim == (parts[i].cols ? 2 : 1) &&
                 t->shape[0] == parts[i].rows && (!parts[i].cols || t->shape[1] == parts[i].cols);
        if (!ok) {
            fprintf(stderr, "  %s: %s, expected [%lld, %lld]\n", name,
                    t ? "wrong dtype or shape" : "missing", (long long)parts[i].rows,
                    (long long)parts[i].cols);
            test_failures_in_current++;
        }
    }
    snprintf(name, sizeof name, "%sweight", base);
    if (st_checkpoint_find(c, name)) {
        fprintf(stderr, "  %s is still in the output\n", name);
        test_failures_in_current++;
    }
}

/* A tensor copied unquantized, with its shape ([n] or [rows, cols]). */
static void expect_kept(const st_checkpoint *c, const char *name, int64_t rows, int64_t cols)
{
    const st_tensor *t = st_checkpoint_find(c, name);
    if (!t || t->ndim != (cols ? 2 : 1) || t->shape[0] != rows || (cols && t->shape[1] != cols)) {
        fprintf(stderr, "  %s: %s\n", name, t ? "wrong shape" : "missing");
        test_failures_in_current++;
    }
}

static int count_qweights(const st_checkpoint *c)
{
    int n = 0;
    for (size_t i = 0; i < c->n_tensors; i++)
        n += strstr(c->tensors[i]->name, ".qweight") != NULL;
    return n;
}

/* Quantizes fixture name in each expert mode, in a fresh directory
 * (returned) of the test's own; each output stays close to the original.
 * The all-experts output (dir/NAME-1) is opened into c for the layout
 * checks and its path left in out. */
static const char *quantize_in_every_mode(const char *name, st_checkpoint *c, char *out,
                                          size_t out_size)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "quant_%s", name);
    const char *dir = test_tmpdir(tmp);
    moeq_expert_calib modes[] = {MOEQ_EXPERT_CALIB_ROUTED, MOEQ_EXPERT_CALIB_ALL,
                                 MOEQ_EXPERT_CALIB_WEIGHTED};
    for (int m = 0; m < 3; m++) {
        char mode_out[2048];
        snprintf(mode_out, sizeof mode_out, "%s/%s-%d", dir, name, m);
        moeq_quantize_options o = options(MOEQ_METHOD_GPTQ, modes[m]);
        moeq_error err = {0};
        CHECK_INT_EQ(run(name, &o, mode_out, &err), MOEQ_OK);
        double kl = kl_against_original(name, mode_out);
        printf("  %s %s: KL %.5f\n", name, moeq_expert_calib_name(modes[m]), kl);
        if (!(kl > 0 && kl < 0.05)) {
            fprintf(stderr, "  %s mode %d: KL %g\n", name, m, kl);
            test_failures_in_current++;
        }
    }
    snprintf(out, out_size, "%s/%s-1", dir, name);
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(c, out, &err), MOEQ_OK);
    return dir;
}

static void test_glm4_moe_quantizes_to_vllm_tensor_names(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_in_every_mode("glm4_moe", &c, out, sizeof out);
    /* Layer 0 dense (first_k_dense_replace 1), layers 1-2 MoE: 8 experts,
     * two shared experts' width (64). Heads 4 x 24, kv heads 2. */
    expect_gptq(&c, "model.layers.0.self_attn.q_proj.", 96, 64);
    expect_gptq(&c, "model.layers.0.self_attn.k_proj.", 48, 64);
    expect_gptq(&c, "model.layers.0.self_attn.o_proj.", 64, 96);
    expect_gptq(&c, "model.layers.0.mlp.down_proj.", 64, 96);
    expect_gptq(&c, "model.layers.2.mlp.experts.7.gate_proj.", 32, 64);
    expect_gptq(&c, "model.layers.2.mlp.experts.7.down_proj.", 64, 32);
    expect_gptq(&c, "model.layers.1.mlp.shared_experts.up_proj.", 64, 64);
    expect_gptq(&c, "model.layers.1.mlp.shared_experts.down_proj.", 64, 64);
    expect_kept(&c, "model.layers.1.self_attn.q_proj.bias", 96, 0);
    expect_kept(&c, "model.layers.1.self_attn.q_norm.weight", 24, 0);
    expect_kept(&c, "model.layers.1.mlp.gate.weight", 8, 64);
    expect_kept(&c, "model.layers.1.mlp.gate.e_score_correction_bias", 8, 0);
    /* 3 x 4 attention + 3 dense + 2 x (8 x 3 + 3) */
    CHECK_INT_EQ(count_qweights(&c), 69);
    st_checkpoint_close(&c);
}

static void test_minimax_m2_quantizes_to_vllm_tensor_names(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_in_every_mode("minimax_m2", &c, out, sizeof out);
    /* Every layer MoE: 6 experts w1 (gate), w3 (up), w2 (down) of width 48. */
    expect_gptq(&c, "model.layers.0.block_sparse_moe.experts.5.w1.", 48, 64);
    expect_gptq(&c, "model.layers.0.block_sparse_moe.experts.5.w3.", 48, 64);
    expect_gptq(&c, "model.layers.2.block_sparse_moe.experts.0.w2.", 64, 48);
    expect_gptq(&c, "model.layers.2.self_attn.v_proj.", 64, 64);
    expect_kept(&c, "model.layers.0.self_attn.q_norm.weight", 128, 0);
    expect_kept(&c, "model.layers.0.self_attn.k_norm.weight", 64, 0);
    expect_kept(&c, "model.layers.0.block_sparse_moe.gate.weight", 6, 64);
    expect_kept(&c, "model.layers.0.block_sparse_moe.e_score_correction_bias", 6, 0);
    CHECK_INT_EQ(count_qweights(&c), 3 * (4 + 6 * 3));
    st_checkpoint_close(&c);
}

static void test_deepseek_v3_quantizes_every_mla_linear(void)
{
    char out[2048];
    st_checkpoint c;
    const char *dir = quantize_in_every_mode("deepseek_v3", &c, out, sizeof out);
    /* 4 heads, nope 16 + rope 8, v 24, q_lora 48, kv_lora 32. */
    for (int l = 0; l < 3; l++) {
        char base[256];
        snprintf(base, sizeof base, "model.layers.%d.self_attn.q_a_proj.", l);
        expect_gptq(&c, base, 48, 64);
        snprintf(base, sizeof base, "model.layers.%d.self_attn.q_b_proj.", l);
        expect_gptq(&c, base, 96, 48);
        snprintf(base, sizeof base, "model.layers.%d.self_attn.kv_a_proj_with_mqa.", l);
        expect_gptq(&c, base, 40, 64);
        snprintf(base, sizeof base, "model.layers.%d.self_attn.kv_b_proj.", l);
        expect_gptq(&c, base, 160, 32);
        snprintf(base, sizeof base, "model.layers.%d.self_attn.o_proj.", l);
        expect_gptq(&c, base, 64, 96);
    }
    expect_gptq(&c, "model.layers.0.mlp.gate_proj.", 96, 64);
    expect_gptq(&c, "model.layers.2.mlp.experts.3.up_proj.", 32, 64);
    expect_gptq(&c, "model.layers.1.mlp.shared_experts.down_proj.", 64, 32);
    expect_kept(&c, "model.layers.1.self_attn.q_a_proj.bias", 48, 0);
    expect_kept(&c, "model.layers.1.self_attn.kv_a_proj_with_mqa.bias", 40, 0);
    expect_kept(&c, "model.layers.1.self_attn.o_proj.bias", 64, 0);
    expect_kept(&c, "model.layers.1.self_attn.q_a_layernorm.weight", 48, 0);
    expect_kept(&c, "model.layers.1.self_attn.kv_a_layernorm.weight", 32, 0);
    expect_kept(&c, "model.layers.2.mlp.gate.e_score_correction_bias", 8, 0);
    /* 3 x 5 attention + 3 dense + 2 x (8 x 3 + 3) */
    CHECK_INT_EQ(count_qweights(&c), 72);
    st_checkpoint_close(&c);
    /* The MLA Hessians come from real inputs: GPTQ beats round-to-nearest. */
    char rtn[2048];
    snprintf(rtn, sizeof rtn, "%s/rtn", dir);
    moeq_quantize_options o = options(MOEQ_METHOD_RTN, MOEQ_EXPERT_CALIB_ALL);
    moeq_error err = {0};
    CHECK_INT_EQ(run("deepseek_v3", &o, rtn, &err), MOEQ_OK);
    double kl_gptq = kl_against_original("deepseek_v3", out);
    double kl_rtn = kl_against_original("deepseek_v3", rtn);
    printf("  deepseek_v3 4-bit g16: KL gptq %.5f, rtn %.5f\n", kl_gptq, kl_rtn);
    CHECK(kl_gptq < kl_rtn);
}

static void test_deepseek_v3_without_q_lora_quantizes_q_proj(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_in_every_mode("deepseek_v3_q_proj", &c, out, sizeof out);
    /* 4 heads, nope 8 + rope 16, v 16, kv_lora 32; layers 0-1 dense. */
    expect_gptq(&c, "model.layers.3.self_attn.q_proj.", 96, 64);
    expect_gptq(&c, "model.layers.3.self_attn.kv_a_proj_with_mqa.", 48, 64);
    expect_gptq(&c, "model.layers.3.self_attn.kv_b_proj.", 96, 32);
    expect_gptq(&c, "model.layers.3.self_attn.o_proj.", 64, 64);
    expect_gptq(&c, "model.layers.1.mlp.up_proj.", 80, 64);
    CHECK(st_checkpoint_find(&c, "model.layers.0.self_attn.q_a_proj.qweight") == NULL);
    /* 4 x 4 attention + 2 x 3 dense + 2 x (6 x 3 + 3) */
    CHECK_INT_EQ(count_qweights(&c), 64);
    st_checkpoint_close(&c);
}

static void test_deepseek_v2_quantizes_every_mla_linear(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_in_every_mode("deepseek_v2", &c, out, sizeof out);
    /* 4 heads, nope 16 + rope 8, v 16, q_lora 48, kv_lora 32; 8 experts and
     * two shared experts' width (64) from layer 1. */
    expect_gptq(&c, "model.layers.2.self_attn.q_a_proj.", 48, 64);
    expect_gptq(&c, "model.layers.2.self_attn.q_b_proj.", 96, 48);
    expect_gptq(&c, "model.layers.2.self_attn.kv_a_proj_with_mqa.", 40, 64);
    expect_gptq(&c, "model.layers.2.self_attn.kv_b_proj.", 128, 32);
    expect_gptq(&c, "model.layers.2.self_attn.o_proj.", 64, 64);
    expect_gptq(&c, "model.layers.2.mlp.shared_experts.gate_proj.", 64, 64);
    expect_gptq(&c, "model.layers.1.mlp.experts.6.down_proj.", 64, 32);
    expect_kept(&c, "model.layers.1.mlp.gate.weight", 8, 64);
    CHECK(st_checkpoint_find(&c, "model.layers.1.mlp.gate.e_score_correction_bias") == NULL);
    /* 3 x 5 attention + 3 dense + 2 x (8 x 3 + 3) */
    CHECK_INT_EQ(count_qweights(&c), 72);
    st_checkpoint_close(&c);
}

int main(void)
{
    RUN(test_output_has_gptq_tensors_configs_and_report);
    RUN(test_gptq_stays_closer_to_the_original_than_rtn);
    RUN(test_every_expert_mode_and_dense_model_round_trips);
    RUN(test_routed_with_every_expert_below_the_floor_equals_bypass);
    RUN(test_true_sequential_off_calibrates_on_the_original_layer);
    RUN(test_same_inputs_give_byte_identical_output);
    RUN(test_token_chunk_zero_is_the_default_chunk);
    RUN(test_existing_output_is_refused_and_failures_leave_nothing);
    RUN(test_nan_weights_and_activations_stop_the_run_naming_layer_and_module);
    RUN(test_fp8_source_becomes_gptq_without_fp8_tensors_or_config);
    RUN(test_gpt_oss_fused_experts_are_written_per_expert_with_their_biases);
    RUN(test_gpt_oss_mxfp4_source_becomes_gptq_without_mxfp4_tensors_or_config);
    RUN(test_llama4_fused_experts_are_written_per_expert_beside_the_shared_expert);
    RUN(test_llama4_multimodal_checkpoint_keeps_its_vision_model);
    RUN(test_glm4_moe_quantizes_to_vllm_tensor_names);
    RUN(test_minimax_m2_quantizes_to_vllm_tensor_names);
    RUN(test_deepseek_v3_quantizes_every_mla_linear);
    RUN(test_deepseek_v3_without_q_lora_quantizes_q_proj);
    RUN(test_deepseek_v2_quantizes_every_mla_linear);
    return test_summary();
}
