/* test_gptq.c: the GPTQ solver and the RTN baseline, as properties that
 * must hold for any input (fresh random weights and Hessians each run;
 * the seed is printed) and as exact small cases. */
#include "test.h"

#include "quant/gptq.h"
#include "quant/grid.h"
#include "common/dtype.h"

#include <cblas.h>
#include <time.h>

static test_rng rng;

/* H = (2/n) X^T X for random X [n, cols] with correlated columns, so that
 * GPTQ's error feedback has something to exploit. */
static float *random_hessian(int cols, int n)
{
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *h = calloc((size_t)cols * cols, sizeof(float));
    for (int t = 0; t < n; t++) {
        float common = test_rng_uniform(&rng);
        for (int c = 0; c < cols; c++)
            x[(size_t)t * cols + c] = test_rng_uniform(&rng) + 0.8f * common * (c % 3 == 0);
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, cols, n, 2.0f / n, x, cols, x,
                cols, 0.0f, h, cols);
    free(x);
    return h;
}

static float *random_weights(int rows, int cols)
{
    float *w = malloc(sizeof(float) * (size_t)rows * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        w[i] = 0.05f * test_rng_uniform(&rng);
    return w;
}

/* tr((W - Q) H (W - Q)^T): the layer-output error GPTQ minimises. */
static double output_error(const float *w, const moeq_quantized *q, const float *h)
{
    int rows = q->rows, cols = q->cols;
    float *d = malloc(sizeof(float) * (size_t)rows * cols);
    float *dh = malloc(sizeof(float) * (size_t)rows * cols);
    moeq_quantized_dequantize(q, d);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        d[i] = w[i] - d[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0f, d, cols, h,
                cols, 0.0f, dh, cols);
    double e = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        e += (double)d[i] * dh[i];
    free(d);
    free(dh);
    return e;
}

static int quantize(const float *w, int rows, int cols, const float *h, moeq_gptq_config *cfg,
                    moeq_quantized *q)
{
    moeq_gptq_prepared p;
    moeq_error err = {0};
    if (moeq_gptq_prepare(h, cols, cfg, &p, &err) ||
        moeq_gptq_sweep(&p, cfg, w, rows, q, NULL, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    moeq_gptq_prepared_free(&p);
    return 0;
}

static void test_gptq_beats_rtn_on_the_layer_output_error(void)
{
    const int rows = 48, cols = 256;
    int bits_list[] = {2, 3, 4, 8};
    int group_list[] = {-1, 32, 128};
    float *h = random_hessian(cols, 1024);
    float *w = random_weights(rows, cols);
    for (int b = 0; b < 4; b++)
        for (int g = 0; g < 3; g++)
            for (int act = 0; act < 2; act++) {
                moeq_gptq_config cfg = moeq_gptq_default_config();
                cfg.bits = bits_list[b];
                cfg.group_size = group_list[g];
                cfg.desc_act = act;
                cfg.sym = (b + g) % 2;
                moeq_quantized gq, rq;
                moeq_error err = {0};
                if (quantize(w, rows, cols, h, &cfg, &gq)) {
                    test_failures_in_current++;
                    continue;
                }
                CHECK_INT_EQ(moeq_rtn_quantize(w, rows, cols, &cfg, &rq, &err), MOEQ_OK);
                double eg = output_error(w, &gq, h), er = output_error(w, &rq, h);
                if (!(eg < er)) {
                    fprintf(stderr, "  bits %d group %d act %d sym %d: gptq %g >= rtn %g\n",
                            cfg.bits, cfg.group_size, act, cfg.sym, eg, er);
                    test_failures_in_current++;
                }
                moeq_quantized_free(&gq);
                moeq_quantized_free(&rq);
            }
    free(h);
    free(w);
}

static void test_identity_hessian_makes_gptq_equal_rtn(void)
{
    /* With H = I there is no correlation to feed errors through: every
     * column is rounded on its own, exactly as RTN does. */
    const int rows = 16, cols = 128;
    float *h = calloc((size_t)cols * cols, sizeof(float));
    for (int i = 0; i < cols; i++)
        h[(size_t)i * cols + i] = 1.0f;
    float *w = random_weights(rows, cols);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    cfg.sym = 0;
    moeq_quantized gq, rq;
    moeq_error err = {0};
    CHECK(quantize(w, rows, cols, h, &cfg, &gq) == 0);
    CHECK_INT_EQ(moeq_rtn_quantize(w, rows, cols, &cfg, &rq, &err), MOEQ_OK);
    CHECK(memcmp(gq.codes, rq.codes, (size_t)rows * cols) == 0);
    CHECK(memcmp(gq.scales, rq.scales, sizeof(float) * (size_t)rows * 4) == 0);
    CHECK(memcmp(gq.zeros, rq.zeros, sizeof(int32_t) * (size_t)rows * 4) == 0);
    moeq_quantized_free(&gq);
    moeq_quantized_free(&rq);
    free(h);
    free(w);
}

static void test_codes_lie_on_the_grid_and_scales_are_fp16(void)
{
    const int rows = 8, cols = 128;
    float *h = random_hessian(cols, 512);
    float *w = random_weights(rows, cols);
    for (int bits = 2; bits <= 8; bits *= 2) {
        moeq_gptq_config cfg = moeq_gptq_default_config();
        cfg.bits = bits;
        cfg.group_size = 64;
        cfg.sym = 0;
        moeq_quantized q;
        if (quantize(w, rows, cols, h, &cfg, &q)) {
            test_failures_in_current++;
            continue;
        }
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            CHECK(q.codes[i] < (1u << bits));
        for (int i = 0; i < q.n_groups * rows; i++) {
            CHECK(q.scales[i] > 0);
            CHECK(moeq_f16_to_f32(moeq_f32_to_f16(q.scales[i])) == q.scales[i]);
            CHECK(q.zeros[i] >= 0 && q.zeros[i] < (1 << bits));
        }
        for (int c = 0; c < cols; c++)
            CHECK_INT_EQ(q.g_idx[c], c / 64);
        moeq_quantized_free(&q);
    }
    free(h);
    free(w);
}

static void test_symmetric_zero_is_the_midpoint(void)
{
    float x[4] = {-0.5f, 0.25f, 0.1f, 0.0f};
    moeq_grid g = moeq_grid_fit(x, 4, 4, 1, 0);
    CHECK_INT_EQ(g.zero, 8);
    CHECK_NEAR(g.scale, 1.0 / 15.0, 1e-4, 0); /* (0.5 - -0.5) / 15, fp16-rounded */
    CHECK_INT_EQ(moeq_grid_code(g, -0.5f, 15), 0);
    moeq_grid a = moeq_grid_fit(x, 4, 4, 0, 0);
    CHECK_NEAR(a.scale, 0.75 / 15.0, 1e-4, 0);
    CHECK_INT_EQ(a.zero, 10); /* round(0.5 / 0.05) */
    float zeros[3] = {0, 0, 0};
    moeq_grid z = moeq_grid_fit(zeros, 3, 4, 0, 0);
    CHECK_NEAR(z.scale, 2.0 / 15.0, 1e-4, 0); /* an empty range becomes [-1, 1] */
}

static void test_asymmetric_zero_point_is_never_zero(void)
{
    /* All non-negative: the reference grid would put the zero at 0, which
     * GPTQ v1 cannot store; moeq uses zero 1 and keeps xmax on the grid. */
    float x[4] = {0.0f, 0.3f, 0.7f, 1.4f};
    moeq_grid g = moeq_grid_fit(x, 4, 4, 0, 0);
    CHECK_INT_EQ(g.zero, 1);
    CHECK_NEAR(g.scale, 1.4 / 14.0, 1e-4, 0);
    CHECK_NEAR(moeq_grid_value(g, moeq_grid_code(g, 1.4f, 15)), 1.4, 1e-3, 0);
    CHECK_NEAR(moeq_grid_value(g, moeq_grid_code(g, 0.0f, 15)), 0.0, 0, 0);
    /* Slightly negative minimum (within half a step): also zero 1. */
    float y[3] = {-0.01f, 0.5f, 1.5f};
    g = moeq_grid_fit(y, 3, 4, 0, 0);
    CHECK_INT_EQ(g.zero, 1);
    CHECK(moeq_grid_value(g, moeq_grid_code(g, 1.5f, 15)) >= 1.49f);
    /* Fresh random groups never get zero 0, at any width. */
    for (int bits = 2; bits <= 8; bits++) {
        for (int trial = 0; trial < 200; trial++) {
            float v[16];
            float shift = test_rng_uniform(&rng);
            for (int i = 0; i < 16; i++)
                v[i] = test_rng_uniform(&rng) + shift;
            CHECK(moeq_grid_fit(v, 16, bits, 0, 0).zero >= 1);
        }
    }
}

/* The clipping search returns the best of its candidates p [xmin, xmax],
 * p = 1 - i / 100 for i < 80. moeq_grid_fit(p x) is exactly the candidate
 * grid of p (scaling by p > 0 keeps the min and the max), so every
 * candidate can be rebuilt and compared independently. */
static void test_clipping_search_picks_the_best_candidate(void)
{
    const int n = 128;
    float x[128], px[128];
    for (int bits = 2; bits <= 8; bits = bits == 4 ? 8 : bits + 1)
        for (int sym = 0; sym <= 1; sym++)
            for (int trial = 0; trial < 20; trial++) {
                for (int i = 0; i < n; i++)
                    x[i] = 0.05f * test_rng_uniform(&rng);
                x[trial % n] *= 6.0f; /* an outlier: clipping should pay */
                moeq_grid best = moeq_grid_fit_mse(x, n, bits, sym, 0, 2.4f);
                float best_err = moeq_grid_clip_error(best, x, n, bits, 2.4f);
                int found = 0;
                for (int i = 0; i < MOEQ_GRID_MSE_STEPS; i++) {
                    float p = 1.0f - (float)i / (float)MOEQ_GRID_MSE_GRID;
                    for (int k = 0; k < n; k++)
                        px[k] = p * x[k];
                    moeq_grid g = moeq_grid_fit(px, n, bits, sym, 0);
                    CHECK(best_err <= moeq_grid_clip_error(g, x, n, bits, 2.4f));
                    found += g.scale == best.scale && g.zero == best.zero;
                }
                CHECK(found >= 1);
            }
}

/* A heavy-tailed group (Laplace quantiles): min/max grids spend their
 * levels on the tails; at 3 bits the search clips to about 0.8 of the range
 * (worked out independently in numpy: p = 0.80, error 0.00097 vs 0.00127)
 * and lowers the error in its norm; norm 0 is the plain fit. */
static void test_clipping_search_clips_heavy_tails(void)
{
    float x[128];
    for (int i = 0; i < 128; i++) {
        double u = (i + 0.5) / 128.0;
        x[i] = (float)(0.02 * (u < 0.5 ? log(2.0 * u) : -log(2.0 * (1.0 - u))));
    }
    moeq_grid plain = moeq_grid_fit(x, 128, 3, 1, 0);
    moeq_grid off = moeq_grid_fit_mse(x, 128, 3, 1, 0, 0.0f);
    CHECK(off.scale == plain.scale && off.zero == plain.zero);
    moeq_grid clip = moeq_grid_fit_mse(x, 128, 3, 1, 0, 2.4f);
    CHECK(clip.scale > 0.75f * plain.scale && clip.scale < 0.85f * plain.scale);
    CHECK_INT_EQ(clip.zero, 4);
    float e_plain = moeq_grid_clip_error(plain, x, 128, 3, 2.4f);
    float e_clip = moeq_grid_clip_error(clip, x, 128, 3, 2.4f);
    CHECK_NEAR(e_plain, 0.0012693, 1e-6, 1e-3);
    CHECK_NEAR(e_clip, 0.00096715, 1e-6, 1e-3);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.bits = 3;
    /* RTN fits its grids the same way. */
    moeq_error err = {0};
    moeq_quantized a = {0}, b = {0};
    cfg.mse = 0;
    CHECK_INT_EQ(moeq_rtn_quantize(x, 1, 128, &cfg, &a, &err), MOEQ_OK);
    cfg.mse = 2.4;
    CHECK_INT_EQ(moeq_rtn_quantize(x, 1, 128, &cfg, &b, &err), MOEQ_OK);
    CHECK(b.scales[0] == clip.scale);
    CHECK(a.scales[0] == plain.scale);
    moeq_quantized_free(&a);
    moeq_quantized_free(&b);
}

/* On weights with outliers, GPTQ with the clipping search gives a lower
 * layer-output error than GPTQ on min/max grids at 3 bits. */
static void test_clipping_search_lowers_gptq_output_error_at_3_bits(void)
{
    const int rows = 64, cols = 256;
    float *h = random_hessian(cols, 1024);
    float *w = random_weights(rows, cols);
    for (int r = 0; r < rows; r++)
        w[(size_t)r * cols + (r * 37) % cols] *= 10.0f;
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.bits = 3;
    cfg.mse = 0;
    moeq_quantized a = {0}, b = {0};
    CHECK_INT_EQ(quantize(w, rows, cols, h, &cfg, &a), 0);
    cfg.mse = 2.4;
    CHECK_INT_EQ(quantize(w, rows, cols, h, &cfg, &b), 0);
    double ea = output_error(w, &a, h), eb = output_error(w, &b, h);
    printf("  3-bit output error: min/max grids %.4g, clipping search %.4g\n", ea, eb);
    CHECK(eb < 0.9 * ea);
    moeq_quantized_free(&a);
    moeq_quantized_free(&b);
    free(h);
    free(w);
}

static void test_act_order_g_idx_maps_columns_to_the_groups_they_used(void)
{
    const int rows = 8, cols = 128;
    float *h = random_hessian(cols, 512);
    /* A distinctive diagonal order: column c gets diagonal (c * 37 % 128) + 1. */
    for (int c = 0; c < cols; c++)
        h[(size_t)c * cols + c] += (float)((c * 37) % 128 + 1);
    float *w = random_weights(rows, cols);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    cfg.desc_act = 1;
    moeq_gptq_prepared p;
    moeq_quantized q;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_sweep(&p, &cfg, w, rows, &q, NULL, &err), MOEQ_OK);
    /* Processing order is by decreasing diagonal. */
    for (int i = 1; i < cols; i++)
        CHECK(h[(size_t)p.perm[i - 1] * cols + p.perm[i - 1]] >=
              h[(size_t)p.perm[i] * cols + p.perm[i]]);
    /* Column perm[i] was quantized in group i / 32. */
    for (int i = 0; i < cols; i++)
        CHECK_INT_EQ(q.g_idx[p.perm[i]], i / 32);
    /* Each group has exactly 32 columns. */
    int count[4] = {0};
    for (int c = 0; c < cols; c++)
        count[q.g_idx[c]]++;
    for (int g = 0; g < 4; g++)
        CHECK_INT_EQ(count[g], 32);
    /* Static groups keep natural-order groups. */
    moeq_quantized s;
    cfg.static_groups = 1;
    CHECK_INT_EQ(moeq_gptq_sweep(&p, &cfg, w, rows, &s, NULL, &err), MOEQ_OK);
    for (int c = 0; c < cols; c++)
        CHECK_INT_EQ(s.g_idx[c], c / 32);
    moeq_quantized_free(&s);
    moeq_quantized_free(&q);
    moeq_gptq_prepared_free(&p);
    free(h);
    free(w);
}

static void test_dead_columns_are_zeroed(void)
{
    const int rows = 4, cols = 64;
    float *h = random_hessian(cols, 256);
    for (int c = 0; c < cols; c++) { /* inputs 5 and 40 never fire */
        h[5 * cols + c] = h[(size_t)c * cols + 5] = 0;
        h[40 * cols + c] = h[(size_t)c * cols + 40] = 0;
    }
    float *w = random_weights(rows, cols);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = -1;
    cfg.sym = 0;
    moeq_gptq_prepared p;
    moeq_quantized q;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_OK);
    CHECK_INT_EQ(p.dead_columns, 2);
    CHECK_INT_EQ(moeq_gptq_sweep(&p, &cfg, w, rows, &q, NULL, &err), MOEQ_OK);
    float *d = malloc(sizeof(float) * rows * cols);
    moeq_quantized_dequantize(&q, d);
    for (int r = 0; r < rows; r++) {
        CHECK(d[r * cols + 5] == 0.0f);
        CHECK(d[r * cols + 40] == 0.0f);
    }
    free(d);
    moeq_quantized_free(&q);
    moeq_gptq_prepared_free(&p);
    free(h);
    free(w);
}

static void test_indefinite_hessian_raises_damping_then_fails_clearly(void)
{
    const int cols = 32;
    float *h = random_hessian(cols, 128);
    /* A slightly negative first diagonal entry: 1% damping is not enough,
     * a few increments are. */
    double mean = 0;
    for (int c = 0; c < cols; c++)
        mean += h[(size_t)c * cols + c];
    mean /= cols;
    h[0] = (float)(-0.02 * mean);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = -1;
    moeq_gptq_prepared p;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_OK);
    CHECK(p.damp_used > cfg.damp_percent);
    moeq_gptq_prepared_free(&p);
    /* Strongly negative: no damping up to 100% of the mean diagonal helps. */
    h[0] = -1000.0f;
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "not positive definite");
    free(h);
}

static void test_non_finite_inputs_are_numeric_errors(void)
{
    const int cols = 32;
    float *h = random_hessian(cols, 64);
    float *w = random_weights(2, cols);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = -1;
    moeq_gptq_prepared p;
    moeq_quantized q;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_OK);
    w[7] = NAN;
    CHECK_INT_EQ(moeq_gptq_sweep(&p, &cfg, w, 2, &q, NULL, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "(0, 7)");
    moeq_gptq_prepared_free(&p);
    h[3 * cols + 4] = INFINITY;
    CHECK_INT_EQ(moeq_gptq_prepare(h, cols, &cfg, &p, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "(3, 4)");
    free(h);
    free(w);
}

static void test_bad_settings_are_rejected(void)
{
    moeq_gptq_config cfg = moeq_gptq_default_config();
    moeq_error err = {0};
    cfg.bits = 5;
    CHECK_INT_EQ(moeq_gptq_check_config(&cfg, 256, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--bits 5");
    cfg = moeq_gptq_default_config();
    cfg.group_size = 128;
    CHECK_INT_EQ(moeq_gptq_check_config(&cfg, 192, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "does not divide the input dimension 192");
    cfg.group_size = 0;
    CHECK_INT_EQ(moeq_gptq_check_config(&cfg, 256, &err), MOEQ_ERR_INVALID_ARG);
    cfg = moeq_gptq_default_config();
    cfg.damp_percent = 0;
    CHECK_INT_EQ(moeq_gptq_check_config(&cfg, 256, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--damp-percent");
    cfg = moeq_gptq_default_config();
    cfg.mse = 0.5;
    CHECK_INT_EQ(moeq_gptq_check_config(&cfg, 256, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--mse 0.5");
}

static void test_many_rows_sharing_a_hessian_equal_separate_sweeps(void)
{
    /* The batched-expert path: one sweep over stacked rows gives exactly the
     * codes of one sweep per weight. */
    const int cols = 128;
    float *h = random_hessian(cols, 512);
    float *a = random_weights(8, cols), *b = random_weights(8, cols);
    float *ab = malloc(sizeof(float) * 16 * cols);
    memcpy(ab, a, sizeof(float) * 8 * cols);
    memcpy(ab + 8 * cols, b, sizeof(float) * 8 * cols);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    moeq_quantized qa, qb, qab;
    CHECK(quantize(a, 8, cols, h, &cfg, &qa) == 0);
    CHECK(quantize(b, 8, cols, h, &cfg, &qb) == 0);
    CHECK(quantize(ab, 16, cols, h, &cfg, &qab) == 0);
    CHECK(memcmp(qab.codes, qa.codes, 8 * cols) == 0);
    CHECK(memcmp(qab.codes + 8 * cols, qb.codes, 8 * cols) == 0);
    moeq_quantized_free(&qa);
    moeq_quantized_free(&qb);
    moeq_quantized_free(&qab);
    free(h);
    free(a);
    free(b);
    free(ab);
}

/* scale_bf16: every fitted scale is a value fp16 and bf16 both hold, also
 * below fp16's normal range, and stays within bf16's rounding of the plain
 * fp16 scale. */
static void test_bf16_scales_are_exact_in_fp16_and_bf16(void)
{
    test_rng r = {4242};
    int bad = 0;
    for (int t = 0; t < 2000; t++) {
        float x[32], mag = powf(10.0f, -7.0f + 6.0f * test_rng_uniform(&r));
        for (int i = 0; i < 32; i++)
            x[i] = mag * (2.0f * test_rng_uniform(&r) - 1.0f);
        for (int sym = 0; sym < 2; sym++) {
            moeq_grid g = moeq_grid_fit_mse(x, 32, 4, sym, 1, 2.4f);
            moeq_grid h = moeq_grid_fit(x, 32, 4, sym, 0);
            moeq_grid b = moeq_grid_fit(x, 32, 4, sym, 1);
            bad += moeq_bf16_to_f32(moeq_f32_to_bf16(g.scale)) != g.scale;
            bad += moeq_f16_to_f32(moeq_f32_to_f16(g.scale)) != g.scale;
            bad += h.scale >= 6.2e-5f && fabsf(b.scale - h.scale) > h.scale / 128.0f;
        }
    }
    CHECK_INT_EQ(bad, 0);
}

int main(void)
{
    const char *s = getenv("MOEQ_TEST_SEED");
    rng.s = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) * 2654435761u + 1;
    printf("seed %llu (set MOEQ_TEST_SEED to repeat)\n", (unsigned long long)rng.s);
    RUN(test_gptq_beats_rtn_on_the_layer_output_error);
    RUN(test_identity_hessian_makes_gptq_equal_rtn);
    RUN(test_codes_lie_on_the_grid_and_scales_are_fp16);
    RUN(test_symmetric_zero_is_the_midpoint);
    RUN(test_asymmetric_zero_point_is_never_zero);
    RUN(test_clipping_search_picks_the_best_candidate);
    RUN(test_clipping_search_clips_heavy_tails);
    RUN(test_clipping_search_lowers_gptq_output_error_at_3_bits);
    RUN(test_act_order_g_idx_maps_columns_to_the_groups_they_used);
    RUN(test_dead_columns_are_zeroed);
    RUN(test_indefinite_hessian_raises_damping_then_fails_clearly);
    RUN(test_non_finite_inputs_are_numeric_errors);
    RUN(test_bad_settings_are_rejected);
    RUN(test_many_rows_sharing_a_hessian_equal_separate_sweeps);
    RUN(test_bf16_scales_are_exact_in_fp16_and_bf16);
    return test_summary();
}
