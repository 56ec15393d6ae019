/* test_awq.c: AWQ (src/quant/awq.c, src/pipeline/quantize_awq.c): the scale
 * formula and its power-of-two form, the clipping search, and on the golden
 * MoE fixtures in every expert-calibration mode: the router compensated so
 * exactly that routing does not change, the folded checkpoint closer to the
 * original than round-to-nearest. */
#include "test.h"
#include "fixture_run.h"

#include "backend/cpu/cpu_ops.h"
#include "common/dtype.h"
#include "common/fileio.h"
#include "io/gptq_writer.h"
#include "model/model.h"
#include "model/weights.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"
#include "quant/awq.h"
#include "quant/grid.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>

static const char *fixture(const char *name)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    return dir;
}

/* x_mean (1, 16, 3), w_mean 1: alpha 0.5 gives raw scales (1, 4, sqrt 3)
 * / (1 + 1e-4), normalised by sqrt(max * min) = 2 / (1 + 1e-4): 1/2, 2 and
 * sqrt(3) / 2 = 0.866; in powers of two 2^-1, 2^1 and 2^round(-0.21) = 1. */
static void test_scales_follow_the_awq_formula(void)
{
    const double xm[3] = {1.0, 16.0, 3.0}, wm[3] = {1.0, 1.0, 1.0};
    float s[3];
    moeq_awq_scales(xm, wm, 3, 0.5, 0, s);
    CHECK_NEAR(s[0], 0.5, 1e-6, 0);
    CHECK_NEAR(s[1], 2.0, 1e-6, 0);
    CHECK_NEAR(s[2], sqrt(3.0) / 2.0, 1e-6, 0);
    moeq_awq_scales(xm, wm, 3, 0.5, 1, s);
    CHECK(s[0] == 0.5f && s[1] == 2.0f && s[2] == 1.0f);
    /* alpha 0: only the weights speak; x_mean 0 clamps at 1e-4. */
    const double xz[2] = {0.0, 3.0}, wz[2] = {0.25, 1.0};
    moeq_awq_scales(xz, wz, 2, 0.0, 0, s);
    double a = 1.0 / (0.25 + 1e-4), b = 1.0 / (1.0 + 1e-4), g = sqrt(a * b);
    CHECK_NEAR(s[0], a / g, 1e-6, 1e-6);
    CHECK_NEAR(s[1], b / g, 1e-6, 1e-6);
}

/* Without H the grids are the plain min/max ones (RTN with --mse 0); with
 * H = I the search minimises the squared weight error over the candidates
 * p = 1, 0.95, ..., 0.55, so it never does worse than p = 1. */
static void test_clipping_search_never_loses_to_the_full_range(void)
{
    test_rng r = {99};
    enum { ROWS = 16, COLS = 64 };
    float W[ROWS * COLS], Hm[COLS * COLS] = {0};
    for (int i = 0; i < ROWS * COLS; i++)
        W[i] = (test_rng_uniform(&r) - 0.5f) * (i % 17 == 0 ? 8.0f : 1.0f);
    for (int i = 0; i < COLS; i++)
        Hm[i * COLS + i] = 1.0f;
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    cfg.mse = 0;
    moeq_quantized plain, clip, rtn;
    moeq_error err;
    double lp, lc;
    CHECK_INT_EQ(moeq_awq_quantize(W, ROWS, COLS, NULL, &cfg, &plain, &lp, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_awq_quantize(W, ROWS, COLS, Hm, &cfg, &clip, &lc, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_rtn_quantize(W, ROWS, COLS, &cfg, &rtn, &err), MOEQ_OK);
    CHECK(memcmp(plain.codes, rtn.codes, ROWS * COLS) == 0);
    CHECK(memcmp(plain.scales, rtn.scales, sizeof(float) * 2 * ROWS) == 0);
    float dp[ROWS * COLS], dc[ROWS * COLS];
    moeq_quantized_dequantize(&plain, dp);
    moeq_quantized_dequantize(&clip, dc);
    double ep = 0, ec = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        ep += (double)(dp[i] - W[i]) * (dp[i] - W[i]);
        ec += (double)(dc[i] - W[i]) * (dc[i] - W[i]);
    }
    CHECK(ec <= ep);
    CHECK(ec < 0.95 * ep); /* the outlier columns make clipping pay here */
    CHECK_NEAR(lc, ec, 1e-6 * ep, 1e-5);
    moeq_quantized_free(&plain);
    moeq_quantized_free(&clip);
    moeq_quantized_free(&rtn);
}

static moeq_quantize_options options(moeq_method method, moeq_expert_calib mode)
{
    moeq_quantize_options o = {.method = method, .gptq = moeq_gptq_default_config(),
                               .expert_calib = mode, .min_expert_tokens = 1,
                               .true_sequential = 1, .token_chunk = 100};
    o.gptq.group_size = 16;
    return o;
}

/* A copy of fixture name in dir whose post_attention_layernorm weights of
 * channels 0..3 are multiplied by 8: outlier channels in every MLP input,
 * as real models have, so that AWQ's scales move well away from 1. */
static const char *with_outliers(const char *name, const char *dir)
{
    static char path[2048];
    char cmd[8400];
    snprintf(path, sizeof path, "%.1000s/%.100s-outliers", dir, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%.2047s' '%s'", path, fixture(name), path);
    CHECK(system(cmd) == 0);
    DIR *d = opendir(fixture(name));
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors"))
            continue;
        char src[4200], dst[4200];
        snprintf(src, sizeof src, "%.2047s/%.255s", fixture(name), e->d_name);
        snprintf(dst, sizeof dst, "%.2047s/%.255s", path, e->d_name);
        st_file f;
        st_writer w;
        moeq_error err = {0};
        CHECK_INT_EQ(st_file_open(&f, src, &err), MOEQ_OK);
        st_writer_init(&w);
        uint16_t *copies[64];
        int n_copies = 0;
        for (size_t i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            const void *data = t->data;
            if (strstr(t->name, "post_attention_layernorm") && n_copies < 64) {
                uint16_t *c = malloc(t->nbytes);
                memcpy(c, t->data, t->nbytes);
                for (int j = 0; j < 4; j++)
                    c[j] = moeq_f32_to_bf16(8.0f * moeq_bf16_to_f32(c[j]));
                copies[n_copies++] = c;
                data = c;
            }
            CHECK_INT_EQ(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, data, t->nbytes,
                                       &err),
                         MOEQ_OK);
        }
        CHECK_INT_EQ(st_writer_write(&w, dst, &err), MOEQ_OK);
        st_writer_free(&w);
        for (int i = 0; i < n_copies; i++)
            free(copies[i]);
        st_file_close(&f);
    }
    if (d)
        closedir(d);
    return path;
}

/* Quantizes model_dir into out on 16 windows of 32 tokens. */
static moeq_code run(const char *model_dir, const moeq_quantize_options *opt, const char *out,
                     moeq_error *err)
{
    return quantize_dir(model_dir, opt, out, 64 * 32, 99, 16, 32, err);
}

static double kl_against_original(const char *model_dir, const char *out)
{
    return kl_on_random_tokens(model_dir, out, 12345, 32);
}

/* On every MoE layer: the written post_attention_layernorm and router,
 * applied to fresh random hidden states, give router logits bit for bit
 * equal to the source's (so the same top-k), while the norm did change;
 * and report.json counts no routing change on the calibration tokens.
 * Returns the number of norm weights that changed. */
static long check_router_compensation(const char *model_dir, const char *out)
{
    moeq_model a, b;
    moeq_error err = {0};
    if (moeq_model_open(model_dir, NULL, &a, &err) || moeq_model_open(out, NULL, &b, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        return 0;
    }
    const moeq_config *cfg = &a.cfg;
    const int H = cfg->hidden_size, E = cfg->num_experts, n = 200;
    long changed = 0;
    test_rng r = {7};
    float *x = malloc(sizeof(float) * n * H), *h = malloc(sizeof(float) * n * H);
    float *la = malloc(sizeof(float) * n * E), *lb = malloc(sizeof(float) * n * E);
    for (int i = 0; i < n * H; i++)
        x[i] = 4.0f * (test_rng_uniform(&r) - 0.5f);
    for (int l = 0; l < cfg->num_layers; l++) {
        if (!cfg->layer_is_moe[l])
            continue;
        moeq_layer_weights wa, wb;
        CHECK_INT_EQ(moeq_layer_weights_load(&a, l, &wa, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_layer_weights_load(&b, l, &wb, &err), MOEQ_OK);
        cpu_rmsnorm(x, wa.mlp_norm, n, H, cfg->rms_norm_eps, h);
        cpu_linear(h, n, H, wa.router, NULL, E, la);
        cpu_rmsnorm(x, wb.mlp_norm, n, H, cfg->rms_norm_eps, h);
        cpu_linear(h, n, H, wb.router, NULL, E, lb);
        CHECK(memcmp(la, lb, sizeof(float) * n * E) == 0);
        for (int j = 0; j < H; j++)
            changed += wa.mlp_norm[j] != wb.mlp_norm[j];
        if (wa.shared_gate) {
            float ga = 0, gb = 0;
            cpu_rmsnorm(x, wa.mlp_norm, 1, H, cfg->rms_norm_eps, h);
            cpu_linear(h, 1, H, wa.shared_gate, NULL, 1, &ga);
            cpu_rmsnorm(x, wb.mlp_norm, 1, H, cfg->rms_norm_eps, h);
            cpu_linear(h, 1, H, wb.shared_gate, NULL, 1, &gb);
            CHECK(ga == gb);
        }
        moeq_layer_weights_free(&wa);
        moeq_layer_weights_free(&wb);
    }
    free(x);
    free(h);
    free(la);
    free(lb);
    moeq_model_close(&a);
    moeq_model_close(&b);
    cJSON *rep = read_output_json(out, "report.json");
    CHECK(rep != NULL);
    const cJSON *layer;
    int moe_layers = 0;
    cJSON_ArrayForEach(layer, cJSON_GetObjectItem(rep, "layers"))
    {
        const cJSON *rc = cJSON_GetObjectItem(layer, "awq_routing_changes");
        if (rc) {
            moe_layers++;
            CHECK_INT_EQ(rc->valueint, 0);
        }
    }
    CHECK(moe_layers > 0);
    cJSON_Delete(rep);
    return changed;
}

static void test_router_compensation_keeps_routing_in_every_mode(void)
{
    const char *dir = test_tmpdir("awq_router");
    const char *names[] = {"qwen3_moe", "qwen2_moe", "mixtral"};
    const moeq_expert_calib modes[] = {MOEQ_EXPERT_CALIB_ROUTED, MOEQ_EXPERT_CALIB_ALL,
                                       MOEQ_EXPERT_CALIB_WEIGHTED};
    for (int i = 0; i < 3; i++)
        for (int m = 0; m < 3; m++) {
            char out[2048], model[4200];
            snprintf(model, sizeof model, "%s", with_outliers(names[i], dir));
            snprintf(out, sizeof out, "%s/%s-%d", dir, names[i], m);
            moeq_quantize_options o = options(MOEQ_METHOD_AWQ, modes[m]);
            moeq_error err = {0};
            CHECK_INT_EQ(run(model, &o, out, &err), MOEQ_OK);
            long changed = check_router_compensation(model, out);
            printf("  %s, mode %d: %ld of the MoE norms' weights scaled\n", names[i], m, changed);
            if (changed == 0) {
                fprintf(stderr, "  %s mode %d: no norm weight was scaled\n", names[i], m);
                test_failures_in_current++;
            }
        }
}

static void test_awq_is_closer_to_the_original_than_rtn(void)
{
    const char *dir = test_tmpdir("awq_vs_rtn");
    const char *names[] = {"qwen3_moe", "qwen2_moe", "mixtral", "qwen3"};
    for (int i = 0; i < 4; i++) {
        char a[2048], r[2048];
        snprintf(a, sizeof a, "%s/%s-awq", dir, names[i]);
        snprintf(r, sizeof r, "%s/%s-rtn", dir, names[i]);
        moeq_quantize_options oa = options(MOEQ_METHOD_AWQ, MOEQ_EXPERT_CALIB_ALL);
        moeq_quantize_options orr = options(MOEQ_METHOD_RTN, MOEQ_EXPERT_CALIB_ALL);
        orr.gptq.mse = 0; /* AWQ's own clipping replaces --mse */
        moeq_error err = {0};
        const char *model = with_outliers(names[i], dir);
        CHECK_INT_EQ(run(model, &oa, a, &err), MOEQ_OK);
        CHECK_INT_EQ(run(model, &orr, r, &err), MOEQ_OK);
        double ka = kl_against_original(model, a), kr = kl_against_original(model, r);
        printf("  %s (outlier channels) 4-bit g16: KL awq %.5f, rtn %.5f\n", names[i], ka, kr);
        CHECK(ka > 0 && ka < kr);
    }
}

int main(void)
{
    RUN(test_scales_follow_the_awq_formula);
    RUN(test_clipping_search_never_loses_to_the_full_range);
    RUN(test_router_compensation_keeps_routing_in_every_mode);
    RUN(test_awq_is_closer_to_the_original_than_rtn);
    return test_summary();
}
