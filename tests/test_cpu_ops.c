/* test_cpu_ops.c: the CPU reference operations (backend/cpu/cpu_ops.h).
 * Random inputs are uniform in [-1, 1); naive references run in double, so
 * tolerances state how far fp32 with BLAS summation may drift from exact. */
#include "test.h"

#include "backend/cpu/cpu_ops.h"

static float *random_floats(test_rng *rng, size_t n)
{
    float *a = malloc(n * sizeof *a);
    if (!a) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        a[i] = test_rng_uniform(rng);
    return a;
}

/* ---- linear */

static void naive_linear(const float *x, int rows, int in, const float *w, const float *bias,
                         int out, double *y)
{
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < in; i++)
                s += (double)x[r * in + i] * w[o * in + i];
            y[r * out + o] = s;
        }
}

static void check_linear(int with_bias)
{
    test_rng rng = {0x5eed1 + (uint64_t)with_bias};
    int rows = 7, in = 131, out = 45;
    float *x = random_floats(&rng, (size_t)rows * in);
    float *w = random_floats(&rng, (size_t)out * in);
    float *b = with_bias ? random_floats(&rng, (size_t)out) : NULL;
    float y[7 * 45];
    double ref[7 * 45];
    cpu_linear(x, rows, in, w, b, out, y);
    naive_linear(x, rows, in, w, b, out, ref);
    /* 131 products of magnitude < 1: fp32 error well under 1e-5. */
    for (int i = 0; i < rows * out; i++)
        CHECK_NEAR(y[i], ref[i], 1e-5, 1e-5);
    free(x);
    free(w);
    free(b);
}

static void test_linear_matches_naive_triple_loop(void) { check_linear(0); }

static void test_linear_adds_bias_per_output(void) { check_linear(1); }

/* ---- Hessians */

static void test_hessian_equals_naive_xtx_times_alpha(void)
{
    test_rng rng = {0x4e55};
    int rows = 37, n = 19;
    float *x = random_floats(&rng, (size_t)rows * n);
    float *H = calloc((size_t)n * n, sizeof *H);
    cpu_hessian_accumulate(H, x, 20, n, 0.5f);
    cpu_hessian_accumulate(H, x + 20 * n, rows - 20, n, 0.5f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int r = 0; r < rows; r++)
                s += (double)x[r * n + i] * x[r * n + j];
            CHECK_NEAR(H[i * n + j], 0.5 * s, 1e-5, 1e-5);
        }
    free(x);
    free(H);
}

static void test_hessian_is_exactly_symmetric(void)
{
    test_rng rng = {0x5133};
    int rows = 50, n = 33;
    float *x = random_floats(&rng, (size_t)rows * n);
    float *w = random_floats(&rng, (size_t)rows);
    for (int r = 0; r < rows; r++)
        w[r] = fabsf(w[r]);
    float *H = calloc((size_t)n * n, sizeof *H);
    cpu_hessian_accumulate(H, x, rows, n, 1.0f);
    CHECK_INT_EQ(cpu_hessian_accumulate_weighted(H, x, w, rows, n, 2.0f, NULL), MOEQ_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            CHECK(H[i * n + j] == H[j * n + i]);
    free(x);
    free(w);
    free(H);
}

static void test_hessian_weighted_with_all_ones_equals_unweighted(void)
{
    test_rng rng = {0x0e5};
    int rows = 300, n = 24; /* more rows than one scratch block */
    float *x = random_floats(&rng, (size_t)rows * n);
    float *ones = malloc((size_t)rows * sizeof *ones);
    for (int r = 0; r < rows; r++)
        ones[r] = 1.0f;
    float *H1 = calloc((size_t)n * n, sizeof *H1);
    float *H2 = calloc((size_t)n * n, sizeof *H2);
    cpu_hessian_accumulate(H1, x, rows, n, 1.0f);
    CHECK_INT_EQ(cpu_hessian_accumulate_weighted(H2, x, ones, rows, n, 1.0f, NULL), MOEQ_OK);
    for (int i = 0; i < n * n; i++)
        CHECK_NEAR(H2[i], H1[i], 1e-5, 1e-6);
    free(x);
    free(ones);
    free(H1);
    free(H2);
}

static void test_hessian_weighted_matches_naive_xt_diag_w_x(void)
{
    test_rng rng = {0x3e1};
    int rows = 600, n = 17;
    float *x = random_floats(&rng, (size_t)rows * n);
    float *w = random_floats(&rng, (size_t)rows);
    for (int r = 0; r < rows; r++)
        w[r] = r % 5 == 0 ? 0.0f : fabsf(w[r]);
    float *H = calloc((size_t)n * n, sizeof *H);
    CHECK_INT_EQ(cpu_hessian_accumulate_weighted(H, x, w, rows, n, 0.25f, NULL), MOEQ_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int r = 0; r < rows; r++)
                s += (double)x[r * n + i] * w[r] * x[r * n + j];
            CHECK_NEAR(H[i * n + j], 0.25 * s, 1e-4, 1e-5);
        }
    free(x);
    free(w);
    free(H);
}

static void test_hessian_weighted_rejects_negative_weight(void)
{
    float x[4] = {1, 2, 3, 4}, w[2] = {1.0f, -0.5f}, H[4] = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(cpu_hessian_accumulate_weighted(H, x, w, 2, 2, 1.0f, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "row weight 1");
}

/* ---- RMSNorm and activations */

static void test_rmsnorm_known_values(void)
{
    /* mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5; y = x / sqrt(7.5 + eps) * w. */
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f}, y[4];
    cpu_rmsnorm(x, w, 1, 4, 0.5f, y);
    double rms = sqrt(8.0);
    CHECK_NEAR(y[0], 1 / rms, 0, 1e-6);
    CHECK_NEAR(y[1], 2 / rms, 0, 1e-6);
    CHECK_NEAR(y[2], 6 / rms, 0, 1e-6);
    CHECK_NEAR(y[3], 2 / rms, 0, 1e-6);
}

static void test_rmsnorm_normalises_each_row_separately_and_in_place(void)
{
    test_rng rng = {0x4a5};
    int rows = 5, dim = 64;
    float *x = random_floats(&rng, (size_t)rows * dim);
    float *w = random_floats(&rng, (size_t)dim);
    float *y = malloc((size_t)rows * dim * sizeof *y);
    cpu_rmsnorm(x, w, rows, dim, 1e-6f, y);
    cpu_rmsnorm(x, w, rows, dim, 1e-6f, x);
    CHECK(memcmp(x, y, (size_t)rows * dim * sizeof *y) == 0);
    free(x);
    free(w);
    free(y);
}

static void test_softmax_rows_known_values_with_large_logits(void)
{
    /* exp shifted by the max: [0, ln2, ln3] + 1000 -> 1/6, 2/6, 3/6. */
    float x[6] = {1000.0f, 1000.0f + (float)log(2.0), 1000.0f + (float)log(3.0), -1, -1, -1};
    float y[6];
    cpu_softmax_rows(x, 2, 3, y);
    CHECK_NEAR(y[0], 1.0 / 6, 0, 1e-4);
    CHECK_NEAR(y[1], 2.0 / 6, 0, 1e-4);
    CHECK_NEAR(y[2], 3.0 / 6, 0, 1e-4);
    for (int i = 3; i < 6; i++)
        CHECK_NEAR(y[i], 1.0 / 3, 0, 1e-6);
}

static void test_sigmoid_known_values(void)
{
    float x[3] = {0.0f, (float)log(3.0), -100.0f}, y[3];
    cpu_sigmoid(x, 3, y);
    CHECK_NEAR(y[0], 0.5, 0, 1e-7);
    CHECK_NEAR(y[1], 0.75, 0, 1e-6);
    CHECK_NEAR(y[2], 0.0, 1e-40, 0);
}

static void test_silu_mul_is_gate_times_sigmoid_times_up(void)
{
    float g[3] = {1.0f, -2.0f, 0.0f}, u[3] = {2.0f, 3.0f, 5.0f}, out[3];
    cpu_silu_mul(g, u, 3, out);
    CHECK_NEAR(out[0], 2.0 / (1 + exp(-1.0)), 0, 1e-6);
    CHECK_NEAR(out[1], -6.0 / (1 + exp(2.0)), 0, 1e-6);
    CHECK(out[2] == 0.0f);
}

/* ---- RoPE */

static void freqs(int rotary_dim, float *inv_freq)
{
    for (int i = 0; i < rotary_dim / 2; i++)
        inv_freq[i] = (float)pow(10000.0, -2.0 * i / rotary_dim);
}

static void test_rope_rotates_pair_by_position_times_frequency(void)
{
    /* One head of dim 2: (1, 0) at position 3 with inv_freq 0.5 -> (cos 1.5, sin 1.5). */
    float x[2] = {1.0f, 0.0f}, inv = 0.5f;
    int32_t pos = 3;
    cpu_rope_apply(x, 1, 1, 2, 2, &pos, &inv, 1.0f, 0);
    CHECK_NEAR(x[0], cos(1.5), 1e-7, 0);
    CHECK_NEAR(x[1], sin(1.5), 1e-7, 0);
}

static void test_rope_preserves_each_pair_norm(void)
{
    test_rng rng = {0x0e0e};
    int T = 6, H = 3, D = 16;
    float inv[8];
    freqs(D, inv);
    int32_t pos[6] = {0, 1, 7, 100, 2047, 40000};
    float *x = random_floats(&rng, (size_t)T * H * D);
    float *x0 = malloc((size_t)T * H * D * sizeof *x0);
    memcpy(x0, x, (size_t)T * H * D * sizeof *x0);
    cpu_rope_apply(x, T, H, D, D, pos, inv, 1.0f, 0);
    for (int th = 0; th < T * H; th++)
        for (int i = 0; i < D / 2; i++) {
            const float *a = x + th * D, *b = x0 + th * D;
            double n1 = hypot(a[i], a[i + D / 2]), n0 = hypot(b[i], b[i + D / 2]);
            CHECK_NEAR(n1, n0, 1e-6, 1e-6);
        }
    free(x);
    free(x0);
}

static void test_rope_position_zero_is_identity(void)
{
    test_rng rng = {77};
    int H = 2, D = 8;
    float inv[4];
    freqs(D, inv);
    int32_t pos = 0;
    float *x = random_floats(&rng, (size_t)H * D);
    float x0[16];
    memcpy(x0, x, sizeof x0);
    cpu_rope_apply(x, 1, H, D, D, &pos, inv, 1.0f, 0);
    CHECK(memcmp(x, x0, sizeof x0) == 0);
    cpu_rope_apply(x, 1, H, D, D, &pos, inv, 1.0f, 1);
    CHECK(memcmp(x, x0, sizeof x0) == 0);
    free(x);
}

static void test_rope_partial_rotary_leaves_tail_untouched(void)
{
    test_rng rng = {0x9a};
    int T = 3, H = 2, D = 16, R = 8;
    float inv[4];
    freqs(R, inv);
    int32_t pos[3] = {1, 5, 9};
    float *x = random_floats(&rng, (size_t)T * H * D);
    float *x0 = malloc((size_t)T * H * D * sizeof *x0);
    memcpy(x0, x, (size_t)T * H * D * sizeof *x0);
    for (int interleaved = 0; interleaved <= 1; interleaved++) {
        cpu_rope_apply(x, T, H, D, R, pos, inv, 1.0f, interleaved);
        for (int th = 0; th < T * H; th++) {
            CHECK(memcmp(x + th * D + R, x0 + th * D + R, (size_t)(D - R) * sizeof *x) == 0);
            CHECK(memcmp(x + th * D, x0 + th * D, (size_t)R * sizeof *x) != 0);
        }
    }
    free(x);
    free(x0);
}

static void test_rope_interleaved_equals_neox_after_pair_permutation(void)
{
    /* Interleaved pair (2i, 2i+1) is neox pair (i, i + R/2). */
    test_rng rng = {0x1e};
    int T = 4, H = 2, D = 12, R = 8;
    float inv[4];
    freqs(R, inv);
    int32_t pos[4] = {0, 3, 50, 1000};
    size_t n = (size_t)T * H * D;
    float *neox = random_floats(&rng, n);
    float *inter = malloc(n * sizeof *inter);
    memcpy(inter, neox, n * sizeof *inter);
    for (size_t th = 0; th < (size_t)T * H; th++)
        for (int i = 0; i < R / 2; i++) {
            inter[th * D + 2 * i] = neox[th * D + i];
            inter[th * D + 2 * i + 1] = neox[th * D + i + R / 2];
        }
    cpu_rope_apply(neox, T, H, D, R, pos, inv, 1.0f, 0);
    cpu_rope_apply(inter, T, H, D, R, pos, inv, 1.0f, 1);
    for (size_t th = 0; th < (size_t)T * H; th++) {
        for (int i = 0; i < R / 2; i++) {
            CHECK(inter[th * D + 2 * i] == neox[th * D + i]);
            CHECK(inter[th * D + 2 * i + 1] == neox[th * D + i + R / 2]);
        }
        for (int d = R; d < D; d++)
            CHECK(inter[th * D + d] == neox[th * D + d]);
    }
    free(neox);
    free(inter);
}

static void test_rope_attention_factor_scales_the_rotation(void)
{
    float a[2] = {0.6f, -0.8f}, b[2] = {0.6f, -0.8f}, inv = 0.25f;
    int32_t pos = 5;
    cpu_rope_apply(a, 1, 1, 2, 2, &pos, &inv, 1.0f, 0);
    cpu_rope_apply(b, 1, 1, 2, 2, &pos, &inv, 1.5f, 0);
    CHECK_NEAR(b[0], 1.5 * a[0], 1e-7, 1e-6);
    CHECK_NEAR(b[1], 1.5 * a[1], 1e-7, 1e-6);
}

/* ---- attention */

/* Straight from the definition, in double; window 0 = none; sinks or NULL. */
static void naive_attention(const float *q, const float *k, const float *v, int T, int Hq, int Hkv,
                            int D, int Dv, float scale, int window, const float *sinks,
                            float *out)
{
    double *p = malloc((size_t)T * sizeof *p);
    for (int h = 0; h < Hq; h++) {
        int g = h / (Hq / Hkv);
        for (int i = 0; i < T; i++) {
            double max = sinks ? sinks[h] : -INFINITY;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int d = 0; d < D; d++)
                    s += (double)q[(i * Hq + h) * D + d] * k[(j * Hkv + g) * D + d];
                p[j] = (window && i - j >= window) ? -INFINITY : s * scale;
                if (p[j] > max)
                    max = p[j];
            }
            double sum = sinks ? exp(sinks[h] - max) : 0;
            for (int j = 0; j <= i; j++)
                sum += p[j] = exp(p[j] - max);
            for (int e = 0; e < Dv; e++) {
                double o = 0;
                for (int j = 0; j <= i; j++)
                    o += p[j] / sum * v[(j * Hkv + g) * Dv + e];
                out[(i * Hq + h) * Dv + e] = (float)o;
            }
        }
    }
    free(p);
}

static void check_attention_vs_naive(uint64_t seed, int T, int Hq, int Hkv, int D, int Dv,
                                     int window, int with_sinks)
{
    test_rng rng = {seed};
    float *q = random_floats(&rng, (size_t)T * Hq * D);
    float *k = random_floats(&rng, (size_t)T * Hkv * D);
    float *v = random_floats(&rng, (size_t)T * Hkv * Dv);
    float *sinks = with_sinks ? random_floats(&rng, (size_t)Hq) : NULL;
    float *out = malloc((size_t)T * Hq * Dv * sizeof *out);
    float *ref = malloc((size_t)T * Hq * Dv * sizeof *ref);
    float scale = 1.0f / sqrtf((float)D);
    CHECK_INT_EQ(cpu_attention_causal(q, k, v, T, Hq, Hkv, D, Dv, scale, window, sinks, out, NULL),
                 MOEQ_OK);
    naive_attention(q, k, v, T, Hq, Hkv, D, Dv, scale, window, sinks, ref);
    for (size_t i = 0; i < (size_t)T * Hq * Dv; i++)
        CHECK_NEAR(out[i], ref[i], 2e-6, 1e-5);
    free(q);
    free(k);
    free(v);
    free(sinks);
    free(out);
    free(ref);
}

static void test_attention_matches_naive_reference_across_query_blocks(void)
{
    /* T = 150 spans three query blocks of 64; Dv != D as in MLA. */
    check_attention_vs_naive(0xa77, 150, 4, 2, 16, 12, 0, 0);
}

static void test_attention_sliding_window_matches_naive_reference(void)
{
    check_attention_vs_naive(0x51d, 150, 2, 1, 8, 8, 40, 0);
    check_attention_vs_naive(0x51e, 20, 2, 2, 8, 8, 1, 0); /* each token sees itself only */
}

static void test_attention_sinks_join_the_denominator_only(void)
{
    check_attention_vs_naive(0x5145, 70, 4, 2, 8, 8, 0, 1);
}

static void test_attention_single_token_returns_its_value(void)
{
    test_rng rng = {99};
    int Hq = 4, Hkv = 2, D = 8, Dv = 6;
    float *q = random_floats(&rng, (size_t)Hq * D);
    float *k = random_floats(&rng, (size_t)Hkv * D);
    float *v = random_floats(&rng, (size_t)Hkv * Dv);
    float out[4 * 6];
    CHECK_INT_EQ(cpu_attention_causal(q, k, v, 1, Hq, Hkv, D, Dv, 0.3f, 0, NULL, out, NULL),
                 MOEQ_OK);
    for (int h = 0; h < Hq; h++)
        for (int e = 0; e < Dv; e++)
            CHECK_NEAR(out[h * Dv + e], v[(h / 2) * Dv + e], 1e-7, 1e-6);
    free(q);
    free(k);
    free(v);
}

static void test_attention_is_causal(void)
{
    /* Changing the k and v of tokens >= 40 leaves the outputs of tokens < 40
     * bit-identical. */
    test_rng rng = {0xca5a1};
    int T = 90, Hq = 2, Hkv = 1, D = 8;
    size_t nq = (size_t)T * Hq * D, nkv = (size_t)T * Hkv * D;
    float *q = random_floats(&rng, nq);
    float *k = random_floats(&rng, nkv);
    float *v = random_floats(&rng, nkv);
    float *a = malloc(nq * sizeof *a), *b = malloc(nq * sizeof *b);
    CHECK_INT_EQ(cpu_attention_causal(q, k, v, T, Hq, Hkv, D, D, 0.35f, 0, NULL, a, NULL), MOEQ_OK);
    for (size_t i = 40 * (size_t)Hkv * D; i < nkv; i++) {
        k[i] = test_rng_uniform(&rng);
        v[i] = test_rng_uniform(&rng);
    }
    CHECK_INT_EQ(cpu_attention_causal(q, k, v, T, Hq, Hkv, D, D, 0.35f, 0, NULL, b, NULL), MOEQ_OK);
    CHECK(memcmp(a, b, 40 * (size_t)Hq * D * sizeof *a) == 0);
    CHECK(memcmp(a, b, nq * sizeof *a) != 0);
    free(q);
    free(k);
    free(v);
    free(a);
    free(b);
}

static void test_attention_gqa_equals_mha_with_repeated_kv_heads(void)
{
    test_rng rng = {0x6a};
    int T = 33, Hq = 6, Hkv = 2, D = 8, group = Hq / Hkv;
    float *q = random_floats(&rng, (size_t)T * Hq * D);
    float *k = random_floats(&rng, (size_t)T * Hkv * D);
    float *v = random_floats(&rng, (size_t)T * Hkv * D);
    float *k_rep = malloc((size_t)T * Hq * D * sizeof *k_rep);
    float *v_rep = malloc((size_t)T * Hq * D * sizeof *v_rep);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < Hq; h++) {
            memcpy(k_rep + ((size_t)t * Hq + h) * D, k + ((size_t)t * Hkv + h / group) * D,
                   (size_t)D * sizeof *k);
            memcpy(v_rep + ((size_t)t * Hq + h) * D, v + ((size_t)t * Hkv + h / group) * D,
                   (size_t)D * sizeof *v);
        }
    float *gqa = malloc((size_t)T * Hq * D * sizeof *gqa);
    float *mha = malloc((size_t)T * Hq * D * sizeof *mha);
    CHECK_INT_EQ(cpu_attention_causal(q, k, v, T, Hq, Hkv, D, D, 0.4f, 0, NULL, gqa, NULL), MOEQ_OK);
    CHECK_INT_EQ(cpu_attention_causal(q, k_rep, v_rep, T, Hq, Hq, D, D, 0.4f, 0, NULL, mha, NULL),
                 MOEQ_OK);
    for (size_t i = 0; i < (size_t)T * Hq * D; i++)
        CHECK_NEAR(gqa[i], mha[i], 1e-7, 1e-6);
    free(q);
    free(k);
    free(v);
    free(k_rep);
    free(v_rep);
    free(gqa);
    free(mha);
}

static void test_attention_rejects_heads_not_a_multiple_of_kv_heads(void)
{
    float x[64] = {0}, out[64];
    moeq_error err = {0};
    CHECK_INT_EQ(cpu_attention_causal(x, x, x, 2, 3, 2, 4, 4, 1.0f, 0, NULL, out, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "Hq=3 Hkv=2");
}

/* ---- routing */

static cpu_router_params softmax_router(int top_k, int norm)
{
    cpu_router_params p = {0};
    p.scoring = CPU_ROUTER_SOFTMAX;
    p.top_k = top_k;
    p.norm_topk_prob = norm;
    return p;
}

static void test_router_softmax_picks_largest_probabilities(void)
{
    /* logits ln 1..4 -> probabilities 0.1 0.2 0.3 0.4; top-2 = experts 3, 2. */
    float logits[4] = {0.0f, (float)log(2.0), (float)log(3.0), (float)log(4.0)};
    float w[2];
    int32_t e[2];
    cpu_router_params p = softmax_router(2, 0);
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 4, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 3);
    CHECK_INT_EQ(e[1], 2);
    CHECK_NEAR(w[0], 0.4, 0, 1e-6);
    CHECK_NEAR(w[1], 0.3, 0, 1e-6);
    p.norm_topk_prob = 1; /* Mixtral, Qwen3-MoE: 4/7, 3/7 */
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 4, &p, w, e, NULL), MOEQ_OK);
    CHECK_NEAR(w[0], 4.0 / 7, 0, 1e-6);
    CHECK_NEAR(w[1], 3.0 / 7, 0, 1e-6);
}

static void test_router_norm_topk_prob_weights_sum_to_one(void)
{
    test_rng rng = {0x70b};
    int T = 20, E = 16, k = 4;
    float *logits = random_floats(&rng, (size_t)T * E);
    float w[20 * 4];
    int32_t e[20 * 4];
    cpu_router_params p = softmax_router(k, 1);
    CHECK_INT_EQ(cpu_router_topk(logits, T, E, &p, w, e, NULL), MOEQ_OK);
    for (int t = 0; t < T; t++) {
        double s = 0;
        for (int j = 0; j < k; j++) {
            s += w[t * k + j];
            if (j)
                CHECK(w[t * k + j] <= w[t * k + j - 1]);
            for (int i = 0; i < j; i++)
                CHECK(e[t * k + i] != e[t * k + j]);
        }
        CHECK_NEAR(s, 1.0, 1e-6, 0);
    }
    free(logits);
}

static void test_router_ties_go_to_lower_index(void)
{
    float logits[5] = {0.5f, 2.0f, 1.0f, 2.0f, 2.0f};
    float w[2];
    int32_t e[2];
    cpu_router_params p = softmax_router(2, 0);
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 5, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 1);
    CHECK_INT_EQ(e[1], 3);
}

static void test_router_sigmoid_bias_selects_but_does_not_weight(void)
{
    /* sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75; the bias lifts expert 0 above
     * expert 1 for selection, but the weights stay the plain sigmoids. */
    float logits[3] = {0.0f, (float)log(3.0), -5.0f};
    float bias[3] = {0.3f, 0.0f, 0.0f};
    float w[2];
    int32_t e[2];
    cpu_router_params p = {0};
    p.scoring = CPU_ROUTER_SIGMOID;
    p.top_k = 2;
    p.e_score_correction_bias = bias;
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 3, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 0);
    CHECK_INT_EQ(e[1], 1);
    CHECK_NEAR(w[0], 0.5, 0, 1e-6);
    CHECK_NEAR(w[1], 0.75, 0, 1e-6);
    p.norm_topk_prob = 1;
    p.routed_scaling_factor = 2.5f; /* 2.5 * (0.4, 0.6) */
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 3, &p, w, e, NULL), MOEQ_OK);
    CHECK_NEAR(w[0], 1.0, 0, 1e-6);
    CHECK_NEAR(w[1], 1.5, 0, 1e-6);
}

static void test_router_group_limit_keeps_experts_of_best_groups(void)
{
    /* 3 groups of 3 experts, keep 1 group. Expert 0 has the single highest
     * score, but group 1 has the best sum of two (0.7 + 0.6 > 0.9 + 0.1), so
     * both picks come from group 1. */
    float s[9] = {0.9f, 0.1f, 0.1f, 0.7f, 0.6f, 0.1f, 0.2f, 0.2f, 0.2f};
    float logits[9];
    for (int i = 0; i < 9; i++)
        logits[i] = (float)log(s[i] / (1 - s[i])); /* sigmoid(logit) = s */
    float w[2];
    int32_t e[2];
    cpu_router_params p = {0};
    p.scoring = CPU_ROUTER_SIGMOID;
    p.top_k = 2;
    p.n_group = 3;
    p.topk_group = 1;
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 9, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 3);
    CHECK_INT_EQ(e[1], 4);
    CHECK_NEAR(w[0], 0.7, 0, 1e-6);
    CHECK_NEAR(w[1], 0.6, 0, 1e-6);
    p.topk_group = 2; /* groups 1 and 0 now: expert 0 first */
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 9, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 0);
    CHECK_INT_EQ(e[1], 3);
}

static void test_router_softmax_group_limit_ranks_groups_by_their_best_expert(void)
{
    /* DeepSeek-V2 group_limited_greedy: 2 groups of 3, keep 1. Group 1 holds
     * the single best expert (logit 2) though group 0 has the larger sum;
     * weights are the softmax over all six, not renormalised. */
    float logits[6] = {1.5f, 1.5f, 1.5f, 2.0f, -3.0f, -3.0f};
    float probs[6], w[2];
    int32_t e[2];
    cpu_softmax_rows(logits, 1, 6, probs);
    cpu_router_params p = {0};
    p.scoring = CPU_ROUTER_SOFTMAX;
    p.top_k = 2;
    p.n_group = 2;
    p.topk_group = 1;
    p.routed_scaling_factor = 16.0f;
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 6, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 3);
    CHECK_INT_EQ(e[1], 4);
    CHECK_NEAR(w[0], 16.0 * probs[3], 0, 1e-6);
    CHECK_NEAR(w[1], 16.0 * probs[4], 0, 1e-6);
    p.n_group = 1; /* without the limit: experts 3 and 0 */
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 6, &p, w, e, NULL), MOEQ_OK);
    CHECK_INT_EQ(e[0], 3);
    CHECK_INT_EQ(e[1], 0);
}

static void test_router_rejects_groups_that_do_not_divide_experts(void)
{
    float logits[10] = {0}, w[2];
    int32_t e[2];
    moeq_error err = {0};
    cpu_router_params p = {0};
    p.scoring = CPU_ROUTER_SIGMOID;
    p.top_k = 2;
    p.n_group = 3;
    p.topk_group = 1;
    CHECK_INT_EQ(cpu_router_topk(logits, 1, 10, &p, w, e, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "n_group=3");
}

int main(void)
{
    RUN(test_linear_matches_naive_triple_loop);
    RUN(test_linear_adds_bias_per_output);
    RUN(test_hessian_equals_naive_xtx_times_alpha);
    RUN(test_hessian_is_exactly_symmetric);
    RUN(test_hessian_weighted_with_all_ones_equals_unweighted);
    RUN(test_hessian_weighted_matches_naive_xt_diag_w_x);
    RUN(test_hessian_weighted_rejects_negative_weight);
    RUN(test_rmsnorm_known_values);
    RUN(test_rmsnorm_normalises_each_row_separately_and_in_place);
    RUN(test_softmax_rows_known_values_with_large_logits);
    RUN(test_sigmoid_known_values);
    RUN(test_silu_mul_is_gate_times_sigmoid_times_up);
    RUN(test_rope_rotates_pair_by_position_times_frequency);
    RUN(test_rope_preserves_each_pair_norm);
    RUN(test_rope_position_zero_is_identity);
    RUN(test_rope_partial_rotary_leaves_tail_untouched);
    RUN(test_rope_interleaved_equals_neox_after_pair_permutation);
    RUN(test_rope_attention_factor_scales_the_rotation);
    RUN(test_attention_matches_naive_reference_across_query_blocks);
    RUN(test_attention_sliding_window_matches_naive_reference);
    RUN(test_attention_sinks_join_the_denominator_only);
    RUN(test_attention_single_token_returns_its_value);
    RUN(test_attention_is_causal);
    RUN(test_attention_gqa_equals_mha_with_repeated_kv_heads);
    RUN(test_attention_rejects_heads_not_a_multiple_of_kv_heads);
    RUN(test_router_softmax_picks_largest_probabilities);
    RUN(test_router_norm_topk_prob_weights_sum_to_one);
    RUN(test_router_ties_go_to_lower_index);
    RUN(test_router_sigmoid_bias_selects_but_does_not_weight);
    RUN(test_router_group_limit_keeps_experts_of_best_groups);
    RUN(test_router_softmax_group_limit_ranks_groups_by_their_best_expert);
    RUN(test_router_rejects_groups_that_do_not_divide_experts);
    return test_summary();
}
