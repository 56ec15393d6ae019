/* test_formats.c: the three output formats end to end on the qwen2_moe
 * golden fixture (a dense layer, MoE layers with a router and a sigmoid-gated
 * shared expert): each checkpoint has the tensors, dtypes, shapes and
 * quantization_config its loaders expect, moeq reads each back, and all
 * three hold exactly the same weights. */
#include "test.h"
#include "fixture_run.h"

#include "common/fileio.h"
#include "io/gptq_writer.h"
#include "model/model.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <cjson/cJSON.h>

static const char *fixture(const char *name)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    return dir;
}

/* GPTQ, 4-bit g16 sym unless changed, bf16-exact scales (what the CLI sets
 * for awq and compressed-tensors on a bf16 model), 16 x 32 random tokens. */
static moeq_code quantize(moeq_format format, const moeq_gptq_config *g, const char *out,
                          moeq_error *err)
{
    moeq_quantize_options o = {.method = MOEQ_METHOD_GPTQ, .gptq = *g, .format = format,
                               .expert_calib = MOEQ_EXPERT_CALIB_ALL, .min_expert_tokens = 1,
                               .true_sequential = 1, .token_chunk = 100};
    moeq_model m;
    moeq_code rc = moeq_model_open(fixture("qwen2_moe"), NULL, &m, err);
    if (rc)
        return rc;
    enum { N = 64 * 32 };
    static int32_t stream[N];
    test_rng r = {31};
    for (int i = 0; i < N; i++)
        stream[i] = (int32_t)(test_rng_next(&r) % (uint64_t)m.cfg.vocab_size);
    moeq_calib_set set;
    if (!(rc = moeq_calib_set_sample(stream, N, 16, 32, 7, &set, err))) {
        moeq_gptq_writer w;
        if (!(rc = moeq_gptq_writer_open(&w, &m, &o, out, NULL, 0, 0, err))) {
            moeq_layer_sink sink = {moeq_gptq_writer_write_layer, NULL, &w};
            rc = moeq_quantize_layers(&m, &set, &o, &sink, err);
            if (!rc)
                rc = moeq_gptq_writer_finish(&w, NULL, err);
            moeq_gptq_writer_close(&w);
        }
        moeq_calib_set_free(&set);
    }
    moeq_model_close(&m);
    return rc;
}

static moeq_gptq_config config_4bit(void)
{
    moeq_gptq_config g = moeq_gptq_default_config();
    g.group_size = 16;
    g.scale_bf16 = 1;
    return g;
}

/* The quantization_config of out/config.json (the caller deletes it). */
static cJSON *read_quantization_config(const char *out)
{
    cJSON *cfg = read_output_json(out, "config.json");
    cJSON *q = cJSON_DetachItemFromObject(cfg, "quantization_config");
    cJSON_Delete(cfg);
    return q;
}

/* Checks that out holds tensor name with dtype and shape (d1 0: 1-D). */
static int has_tensor(const st_checkpoint *c, const char *name, st_dtype dtype, int64_t d0,
                      int64_t d1)
{
    const st_tensor *t = st_checkpoint_find(c, name);
    int ok = t && t->dtype == dtype && t->ndim == (d1 ? 2 : 1) && t->shape[0] == d0 &&
             (!d1 || t->shape[1] == d1);
    if (!ok)
        fprintf(stderr, "  %s: %s\n", name, t ? "wrong dtype or shape" : "missing");
    return ok;
}

/* KL of model dir a against dir b on fresh tokens: 0 when they hold the
 * same weights. */
static double kl_between(const char *a, const char *b)
{
    moeq_model ma, mb;
    moeq_error err = {0};
    moeq_eval_result r = {0};
    if (moeq_model_open(a, NULL, &ma, &err) || moeq_model_open(b, NULL, &mb, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return INFINITY;
    }
    int32_t tokens[256];
    test_rng g = {77};
    for (int i = 0; i < 256; i++)
        tokens[i] = (int32_t)(test_rng_next(&g) % (uint64_t)ma.cfg.vocab_size);
    if (moeq_evaluate(&ma, &mb, tokens, 256, 32, 0, NULL, NULL, &r, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        r.kl = INFINITY;
    }
    moeq_model_close(&ma);
    moeq_model_close(&mb);
    return r.kl;
}

/* The fixture quantized asymmetrically (config_4bit, sym 0) in format
 * into out (tmp/out, in a fresh directory of the test's own; out_size
 * bytes), which must succeed, then opened into c. */
static void quantize_asym_and_open(moeq_format format, const char *tmp, char *out,
                                   size_t out_size, st_checkpoint *c)
{
    snprintf(out, out_size, "%s/out", test_tmpdir(tmp));
    moeq_gptq_config g = config_4bit();
    g.sym = 0;
    moeq_error err = {0};
    CHECK_INT_EQ(quantize(format, &g, out, &err), MOEQ_OK);
    CHECK_INT_EQ(st_checkpoint_open(c, out, &err), MOEQ_OK);
}

static void test_awq_checkpoint_has_gemm_tensors_and_config(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_asym_and_open(MOEQ_FORMAT_AWQ, "fmt_awq", out, sizeof out, &c);
    /* experts.5.down_proj of layer 1: [64 out, 32 in], groups of 16 */
    const char *e = "model.layers.1.mlp.experts.5.down_proj.";
    char n[256];
    snprintf(n, sizeof n, "%sqweight", e);
    CHECK(has_tensor(&c, n, ST_I32, 32, 8));
    snprintf(n, sizeof n, "%sqzeros", e);
    CHECK(has_tensor(&c, n, ST_I32, 2, 8));
    snprintf(n, sizeof n, "%sscales", e);
    CHECK(has_tensor(&c, n, ST_F16, 2, 64));
    snprintf(n, sizeof n, "%sg_idx", e);
    CHECK(st_checkpoint_find(&c, n) == NULL);
    CHECK(has_tensor(&c, "model.layers.1.mlp.shared_expert.gate_proj.qweight", ST_I32, 64, 6));
    CHECK(has_tensor(&c, "model.layers.1.mlp.gate.weight", ST_BF16, 6, 64));
    CHECK(has_tensor(&c, "model.layers.1.mlp.shared_expert_gate.weight", ST_BF16, 1, 64));
    st_checkpoint_close(&c);
    cJSON *q = read_quantization_config(out);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "quant_method")), "awq");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "version")), "gemm");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(q, "zero_point")));
    CHECK_INT_EQ(cJSON_GetObjectItem(q, "bits")->valueint, 4);
    CHECK_INT_EQ(cJSON_GetObjectItem(q, "group_size")->valueint, 16);
    cJSON_Delete(q);
    char path[2200];
    snprintf(path, sizeof path, "%s/quantize_config.json", out);
    CHECK(!moeq_file_exists(path));
}

static void test_compressed_tensors_checkpoint_has_packed_tensors_and_config(void)
{
    char out[2048];
    st_checkpoint c;
    quantize_asym_and_open(MOEQ_FORMAT_COMPRESSED_TENSORS, "fmt_ct", out, sizeof out, &c);
    const char *e = "model.layers.1.mlp.experts.5.down_proj.";
    char n[256];
    snprintf(n, sizeof n, "%sweight_packed", e);
    CHECK(has_tensor(&c, n, ST_I32, 64, 4));
    snprintf(n, sizeof n, "%sweight_scale", e);
    CHECK(has_tensor(&c, n, ST_BF16, 64, 2)); /* the model's dtype */
    snprintf(n, sizeof n, "%sweight_zero_point", e);
    CHECK(has_tensor(&c, n, ST_I32, 8, 2));
    snprintf(n, sizeof n, "%sweight_shape", e);
    CHECK(has_tensor(&c, n, ST_I64, 2, 0));
    const st_tensor *shape = st_checkpoint_find(&c, n);
    int64_t dims[2] = {0, 0};
    if (shape)
        memcpy(dims, shape->data, sizeof dims);
    CHECK(dims[0] == 64 && dims[1] == 32);
    st_checkpoint_close(&c);
    cJSON *q = read_quantization_config(out);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "quant_method")),
                 "compressed-tensors");
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(q, "format")), "pack-quantized");
    cJSON *w = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(q, "config_groups"), "group_0"), "weights");
    CHECK_INT_EQ(cJSON_GetObjectItem(w, "num_bits")->valueint, 4);
    CHECK_INT_EQ(cJSON_GetObjectItem(w, "group_size")->valueint, 16);
    CHECK_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(w, "strategy")), "group");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(w, "symmetric")));
    /* Every unquantized Linear is ignored: lm_head, routers and the
     * shared-expert gates of the MoE layers (1 only: sparse step 2). */
    char *ignore = cJSON_PrintUnformatted(cJSON_GetObjectItem(q, "ignore"));
    CHECK_STR_EQ(ignore, "[\"lm_head\",\"model.layers.1.mlp.gate\","
                         "\"model.layers.1.mlp.shared_expert_gate\"]");
    free(ignore);
    cJSON_Delete(q);
}

static void test_the_three_formats_hold_the_same_weights(void)
{
    const char *dir = test_tmpdir("fmt_same");
    const moeq_format formats[] = {MOEQ_FORMAT_GPTQ, MOEQ_FORMAT_AWQ,
                                   MOEQ_FORMAT_COMPRESSED_TENSORS};
    for (int sym = 0; sym < 2; sym++) {
        char out[3][2048];
        moeq_gptq_config g = config_4bit();
        g.sym = sym;
        for (int f = 0; f < 3; f++) {
            snprintf(out[f], sizeof out[f], "%s/%s-%d", dir, moeq_format_name(formats[f]), sym);
            moeq_error err = {0};
            CHECK_INT_EQ(quantize(formats[f], &g, out[f], &err), MOEQ_OK);
        }
        /* Identical logits: KL exactly 0 against the GPTQ checkpoint. */
        CHECK(kl_between(out[1], out[0]) == 0.0);
        CHECK(kl_between(out[2], out[0]) == 0.0);
        /* and they differ from the original model */
        CHECK(kl_between(out[0], fixture("qwen2_moe")) > 0.0);
    }
}

static void test_formats_without_g_idx_refuse_dynamic_act_order(void)
{
    moeq_gptq_config g = config_4bit();
    g.desc_act = 1;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_format_check(MOEQ_FORMAT_AWQ, &g, 64, 64, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--static-groups true");
    CHECK_INT_EQ(moeq_format_check(MOEQ_FORMAT_GPTQ, &g, 64, 64, &err), MOEQ_OK);
    g.static_groups = 1;
    CHECK_INT_EQ(moeq_format_check(MOEQ_FORMAT_COMPRESSED_TENSORS, &g, 64, 64, &err), MOEQ_OK);
    g.bits = 8;
    CHECK_INT_EQ(moeq_format_check(MOEQ_FORMAT_AWQ, &g, 64, 64, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "4-bit weights only");
}

int main(void)
{
    RUN(test_awq_checkpoint_has_gemm_tensors_and_config);
    RUN(test_compressed_tensors_checkpoint_has_packed_tensors_and_config);
    RUN(test_the_three_formats_hold_the_same_weights);
    RUN(test_formats_without_g_idx_refuse_dynamic_act_order);
    return test_summary();
}
