/* test_eval.c: moeq_evaluate's perplexity, KL divergence and top-1
 * agreement, checked against the same quantities computed here in double
 * precision from transformers' own logits (the golden fixtures). */
#include "test.h"

#include "model/model.h"
#include "moeq/safetensors.h"
#include "pipeline/evaluate.h"

typedef struct {
    moeq_model model;
    st_file golden;
    const int32_t *tokens;
    const float *logits;
    int S, T, V;
} fixture;

/* The golden fixture `name`: its model and golden tokens and logits; -1
 * (counted as a failure of the running test) when it does not open. */
static int open_fixture(const char *name, fixture *f)
{
    char dir[4096], path[4200];
    moeq_error err = {0};
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    if (moeq_model_open(dir, NULL, &f->model, &err) || st_file_open(&f->golden, path, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        return -1;
    }
    const st_tensor *t = st_file_find(&f->golden, "tokens");
    const st_tensor *l = st_file_find(&f->golden, "logits");
    f->tokens = t->data;
    f->logits = l->data;
    f->S = (int)t->shape[0];
    f->T = (int)t->shape[1];
    f->V = (int)l->shape[2];
    return 0;
}

static void close_fixture(fixture *f)
{
    st_file_close(&f->golden);
    moeq_model_close(&f->model);
}

static void log_softmax(const float *x, int v, double *out)
{
    double mx = x[0], sum = 0;
    for (int i = 1; i < v; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < v; i++)
        sum += exp(x[i] - mx);
    for (int i = 0; i < v; i++)
        out[i] = x[i] - mx - log(sum);
}

static void test_perplexity_equals_exp_mean_nll_of_transformers_logits(void)
{
    fixture f;
    if (open_fixture("qwen3_moe", &f))
        return;
    double nll = 0, *lp = malloc(sizeof(double) * f.V);
    for (int s = 0; s < f.S; s++)
        for (int t = 0; t + 1 < f.T; t++) {
            log_softmax(f.logits + ((size_t)s * f.T + t) * f.V, f.V, lp);
            nll -= lp[f.tokens[s * f.T + t + 1]];
        }
    size_t predicted = (size_t)f.S * (f.T - 1);
    nll /= (double)predicted;
    moeq_eval_result r;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, f.tokens, (size_t)f.S * f.T, f.T, 0, NULL, NULL,
                               &r, &err),
                 MOEQ_OK);
    CHECK_INT_EQ(r.windows, f.S);
    CHECK_INT_EQ(r.predicted, predicted);
    CHECK_NEAR(r.nll, nll, 1e-5, 0);
    CHECK_NEAR(r.perplexity, exp(nll), 0, 1e-5);
    CHECK_INT_EQ(r.has_reference, 0);
    free(lp);
    close_fixture(&f);
}

static void test_kl_and_top1_against_a_reference_match_a_direct_computation(void)
{
    /* Two different models over the same 160-token vocabulary and tokens:
     * qwen3 (dense) as the candidate, qwen3_moe as the reference. */
    fixture cand, ref;
    if (open_fixture("qwen3", &cand) || open_fixture("qwen3_moe", &ref))
        return;
    CHECK_INT_EQ(cand.V, ref.V);
    int S = ref.S, T = ref.T, V = ref.V;
    /* The candidate's golden logits are for its own tokens; score both on
     * the reference's tokens, with the candidate's logits from moeq (its
     * forward matches transformers to 1e-5, see test_golden). */
    float *cand_logits = malloc(sizeof(float) * (size_t)S * T * V);
    char path[] = "test-tmp-eval-logits.bin";
    moeq_eval_result r;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_evaluate(&cand.model, &ref.model, ref.tokens, (size_t)S * T, T, 0, path,
                               NULL, &r, &err),
                 MOEQ_OK);
    FILE *lf = fopen(path, "rb");
    CHECK(lf && fread(cand_logits, sizeof(float), (size_t)S * T * V, lf) == (size_t)S * T * V);
    if (lf)
        fclose(lf);
    remove(path);
    double kl = 0, ref_nll = 0, *p = malloc(sizeof(double) * V), *q = malloc(sizeof(double) * V);
    size_t agree = 0, n = 0;
    for (int s = 0; s < S; s++)
        for (int t = 0; t + 1 < T; t++) {
            const float *rl = ref.logits + ((size_t)s * T + t) * V;
            const float *cl = cand_logits + ((size_t)s * T + t) * V;
            log_softmax(rl, V, p);
            log_softmax(cl, V, q);
            int am_r = 0, am_c = 0;
            for (int i = 0; i < V; i++) {
                kl += exp(p[i]) * (p[i] - q[i]);
                am_r = rl[i] > rl[am_r] ? i : am_r;
                am_c = cl[i] > cl[am_c] ? i : am_c;
            }
            ref_nll -= p[ref.tokens[s * T + t + 1]];
            agree += am_r == am_c;
            n++;
        }
    CHECK_NEAR(r.kl, kl / (double)n, 1e-5, 1e-4);
    CHECK(r.kl > 0.01); /* two unrelated random models really differ */
    CHECK_NEAR(r.top1_agreement, (double)agree / (double)n, 1e-12, 0);
    CHECK_NEAR(r.ref_nll, ref_nll / (double)n, 1e-5, 0);
    free(p);
    free(q);
    free(cand_logits);
    close_fixture(&cand);
    close_fixture(&ref);
}

static void test_a_model_against_itself_has_zero_kl_and_full_agreement(void)
{
    fixture f;
    if (open_fixture("mixtral", &f))
        return;
    moeq_eval_result r;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_evaluate(&f.model, &f.model, f.tokens, (size_t)f.S * f.T, f.T, 0, NULL,
                               NULL, &r, &err),
                 MOEQ_OK);
    CHECK_NEAR(r.kl, 0.0, 1e-9, 0);
    CHECK_NEAR(r.top1_agreement, 1.0, 0, 0);
    CHECK_NEAR(r.perplexity, r.ref_perplexity, 0, 0);
    close_fixture(&f);
}

static void test_windows_drop_the_tail_and_respect_max_windows(void)
{
    fixture f;
    if (open_fixture("llama", &f))
        return;
    moeq_eval_result r;
    moeq_error err = {0};
    /* 48 tokens in windows of 10: 4 windows, the last 8 tokens dropped. */
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, f.tokens, 48, 10, 0, NULL, NULL, &r, &err),
                 MOEQ_OK);
    CHECK_INT_EQ(r.windows, 4);
    CHECK_INT_EQ(r.predicted, 4 * 9);
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, f.tokens, 48, 10, 2, NULL, NULL, &r, &err),
                 MOEQ_OK);
    CHECK_INT_EQ(r.windows, 2);
    close_fixture(&f);
}

static void test_too_few_tokens_and_bad_ids_are_errors(void)
{
    fixture f;
    if (open_fixture("llama", &f))
        return;
    moeq_eval_result r;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, f.tokens, 5, 10, 0, NULL, NULL, &r, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "do not fill one window");
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, f.tokens, 48, 1, 0, NULL, NULL, &r, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "--seqlen");
    int32_t bad[4] = {1, 2, 160, 3};
    CHECK_INT_EQ(moeq_evaluate(&f.model, NULL, bad, 4, 4, 0, NULL, NULL, &r, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "token id 160");
    close_fixture(&f);
}

int main(void)
{
    RUN(test_perplexity_equals_exp_mean_nll_of_transformers_logits);
    RUN(test_kl_and_top1_against_a_reference_match_a_direct_computation);
    RUN(test_a_model_against_itself_has_zero_kl_and_full_agreement);
    RUN(test_windows_drop_the_tail_and_respect_max_windows);
    RUN(test_too_few_tokens_and_bad_ids_are_errors);
    return test_summary();
}
