/* test_deltanet.c: the gated delta rule (model/deltanet.h). The recurrence is
 * checked on a case worked by hand; the chunked form, which the forward
 * uses, must agree with it and with a float64 recurrence on fresh random
 * inputs of several shapes and chunk lengths. The whole block is checked
 * against transformers in test_golden.c (qwen3_next). */
#include "test.h"

#include "model/deltanet.h"

/* The recurrence in double, the yardstick for both fp32 forms. */
static void recurrent_f64(const moeq_delta_inputs *in, double *out)
{
    const int r = in->Hv / in->Hk, Dk = in->Dk, Dv = in->Dv;
    double *S = calloc((size_t)Dk * Dv, sizeof *S), *delta = calloc((size_t)Dv, sizeof *delta);
    for (int h = 0; h < in->Hv; h++) {
        memset(S, 0, sizeof *S * (size_t)Dk * Dv);
        for (int t = 0; t < in->T; t++) {
            const float *q = in->q + ((size_t)t * in->Hk + h / r) * Dk;
            const float *k = in->k + ((size_t)t * in->Hk + h / r) * Dk;
            const float *v = in->v + ((size_t)t * in->Hv + h) * Dv;
            double decay = exp((double)in->g[(size_t)t * in->Hv + h]);
            double beta = in->beta[(size_t)t * in->Hv + h];
            for (int i = 0; i < Dk * Dv; i++)
                S[i] *= decay;
            for (int d = 0; d < Dv; d++) {
                double m = 0;
                for (int i = 0; i < Dk; i++)
                    m += S[i * Dv + d] * k[i];
                delta[d] = (v[d] - m) * beta;
            }
            for (int i = 0; i < Dk; i++)
                for (int d = 0; d < Dv; d++)
                    S[i * Dv + d] += k[i] * delta[d];
            for (int d = 0; d < Dv; d++) {
                double o = 0;
                for (int i = 0; i < Dk; i++)
                    o += S[i * Dv + d] * q[i];
                out[((size_t)t * in->Hv + h) * Dv + d] = o;
            }
        }
    }
    free(S);
    free(delta);
}

static void test_recurrence_matches_a_case_worked_by_hand(void)
{
    /* One head, Dk = Dv = 1, k = q = 1: S1 = 0.5 (2 - 0) = 1, o1 = 1;
     * S2 = 0.5 * 1 + 1 * (3 - 0.5 * 1) = 3, o2 = 3. */
    float q[2] = {1, 1}, k[2] = {1, 1}, v[2] = {2, 3}, g[2] = {0, logf(0.5f)}, beta[2] = {0.5f, 1};
    moeq_delta_inputs in = {q, k, v, g, beta, 2, 1, 1, 1, 1};
    float out[2], chunked[2];
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_delta_rule_recurrent(&in, out, &err), MOEQ_OK);
    CHECK_NEAR(out[0], 1.0, 1e-6, 0);
    CHECK_NEAR(out[1], 3.0, 1e-6, 0);
    CHECK_INT_EQ(moeq_delta_rule_chunked(&in, 2, chunked, &err), MOEQ_OK);
    CHECK_NEAR(chunked[0], 1.0, 1e-6, 0);
    CHECK_NEAR(chunked[1], 3.0, 1e-6, 0);
}

/* Random inputs as the model feeds them: q and k L2-normalised (q also
 * scaled by Dk^-1/2), v in [-1, 1), decays g in (-2, 0], beta in (0, 1). */
static void random_inputs(test_rng *rng, int T, int Hk, int Hv, int Dk, int Dv, float **bufs)
{
    size_t nk = (size_t)T * Hk * Dk, nv = (size_t)T * Hv * Dv, nh = (size_t)T * Hv;
    float *q = malloc(sizeof(float) * nk), *k = malloc(sizeof(float) * nk);
    float *v = malloc(sizeof(float) * nv), *g = malloc(sizeof(float) * nh);
    float *beta = malloc(sizeof(float) * nh);
    for (size_t i = 0; i < nk; i++) {
        q[i] = test_rng_uniform(rng);
        k[i] = test_rng_uniform(rng);
    }
    for (size_t row = 0; row < (size_t)T * Hk; row++) {
        double sq = 0, sk = 0;
        for (int d = 0; d < Dk; d++) {
            sq += (double)q[row * Dk + d] * q[row * Dk + d];
            sk += (double)k[row * Dk + d] * k[row * Dk + d];
        }
        for (int d = 0; d < Dk; d++) {
            q[row * Dk + d] = (float)(q[row * Dk + d] / sqrt(sq) / sqrt((double)Dk));
            k[row * Dk + d] = (float)(k[row * Dk + d] / sqrt(sk));
        }
    }
    for (size_t i = 0; i < nv; i++)
        v[i] = test_rng_uniform(rng);
    for (size_t i = 0; i < nh; i++) {
        g[i] = -(test_rng_uniform(rng) + 1.0f);
        beta[i] = 0.5f + 0.49f * test_rng_uniform(rng);
    }
    bufs[0] = q, bufs[1] = k, bufs[2] = v, bufs[3] = g, bufs[4] = beta;
}

/* Largest |a - b| over the largest |ref|. */
static double rel_to(const float *a, const double *ref, size_t n)
{
    double diff = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs(a[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    return diff / scale;
}

static void check_chunked_agrees(uint64_t seed, int T, int Hk, int Hv, int Dk, int Dv, int chunk)
{
    test_rng rng = {seed};
    float *b[5];
    random_inputs(&rng, T, Hk, Hv, Dk, Dv, b);
    moeq_delta_inputs in = {b[0], b[1], b[2], b[3], b[4], T, Hk, Hv, Dk, Dv};
    size_t n = (size_t)T * Hv * Dv;
    float *rec = malloc(sizeof(float) * n), *chk = malloc(sizeof(float) * n);
    double *exact = malloc(sizeof(double) * n);
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_delta_rule_recurrent(&in, rec, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_delta_rule_chunked(&in, chunk, chk, &err), MOEQ_OK);
    recurrent_f64(&in, exact);
    /* fp32 against the exact recurrence and against each other: a few ulps
     * of the output scale (measured here: at most 1.6e-6 from float64). */
    double *rec64 = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++)
        rec64[i] = rec[i];
    double e_rec = rel_to(rec, exact, n), e_chk = rel_to(chk, exact, n);
    double e_both = rel_to(chk, rec64, n);
    if (!(e_rec <= 5e-6) || !(e_chk <= 5e-6) || !(e_both <= 5e-6)) {
        fprintf(stderr, "  T=%d Hk=%d Hv=%d Dk=%d Dv=%d chunk=%d: recurrent %.3g and chunked "
                        "%.3g from float64, %.3g apart (> 5e-6)\n",
                T, Hk, Hv, Dk, Dv, chunk, e_rec, e_chk, e_both);
        test_failures_in_current++;
    }
    free(rec64);
    for (int i = 0; i < 5; i++)
        free(b[i]);
    free(rec);
    free(chk);
    free(exact);
}

static void test_chunked_form_matches_recurrence_on_random_inputs(void)
{
    check_chunked_agrees(11, 150, 2, 4, 16, 8, MOEQ_DELTA_CHUNK); /* a partial last chunk */
    check_chunked_agrees(12, 128, 1, 1, 32, 32, MOEQ_DELTA_CHUNK); /* exactly two chunks */
    check_chunked_agrees(13, 40, 3, 6, 8, 12, 7);
    check_chunked_agrees(14, 33, 2, 2, 16, 16, 1);  /* chunks of one token: the recurrence */
    check_chunked_agrees(15, 200, 4, 8, 64, 32, 64);
}

static void test_chunked_form_refuses_bad_shapes(void)
{
    float x[4] = {0};
    moeq_delta_inputs in = {x, x, x, x, x, 1, 3, 4, 1, 1};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_delta_rule_chunked(&in, 64, x, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "multiple of key heads");
    in.Hk = 1;
    CHECK_INT_EQ(moeq_delta_rule_chunked(&in, 0, x, &err), MOEQ_ERR_INVALID_ARG);
}

int main(void)
{
    RUN(test_recurrence_matches_a_case_worked_by_hand);
    RUN(test_chunked_form_matches_recurrence_on_random_inputs);
    RUN(test_chunked_form_refuses_bad_shapes);
    return test_summary();
}
