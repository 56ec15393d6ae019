/* test_golden.c: moeq's fp32 CPU forward against transformers' own forward
 * on tiny random checkpoints of every shipped architecture
 * (tests/fixtures/golden, made by tests/golden/make_golden.py).
 *
 * Tolerance: each compared tensor's largest absolute difference must be at
 * most 1e-5 of its largest absolute value (fp32 on both sides; only the
 * summation order differs). Each layer is run from transformers' own input
 * to that layer, so an error is pinned to the layer and block where it
 * arises; the logits are checked end to end from the token ids. */
#include "test.h"
#include "fixture_run.h"

#include "model/forward.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/weights.h"
#include "moeq/safetensors.h"
#include "backend/cpu/cpu_ops.h"

static const double REL_TOL = 1e-5;

/* max|a - b| / max|b| */
static double rel_error(const float *a, const float *b, size_t n)
{
    double max_diff = 0, max_ref = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        max_diff = d > max_diff ? d : max_diff;
        max_ref = fabs(b[i]) > max_ref ? fabs(b[i]) : max_ref;
    }
    return max_diff / max_ref;
}

static const float *golden(st_file *g, const char *name, size_t expect_floats)
{
    const st_tensor *t = st_file_find(g, name);
    if (!t || t->dtype != ST_F32 || t->nbytes != expect_floats * sizeof(float)) {
        fprintf(stderr, "  golden tensor %s missing or mis-shaped\n", name);
        return NULL;
    }
    return (const float *)t->data;
}

static void check_close_tol(const char *model, const char *what, const float *got,
                            const float *want, size_t n, double tol)
{
    if (!want) {
        test_failures_in_current++;
        return;
    }
    double e = rel_error(got, want, n);
    if (!(e <= tol)) {
        fprintf(stderr, "  %s %s: relative error %.3g > %.0e\n", model, what, e, tol);
        test_failures_in_current++;
    }
}

static void check_close(const char *model, const char *what, const float *got,
                        const float *want, size_t n)
{
    check_close_tol(model, what, got, want, n, REL_TOL);
}

/* logits_tol: the end-to-end logits' tolerance; REL_TOL unless fp32 itself
 * drifts further over the model's depth (see the Qwen3.5-MoE test). */
static void check_model_tol(const char *name, double logits_tol)
{
    char dir[4096], gpath[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    moeq_error err = {0};
    moeq_model m;
    st_file g;
    if (moeq_model_open(dir, NULL, &m, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        return;
    }
    if (st_file_open(&g, gpath, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        moeq_model_close(&m);
        return;
    }
    const moeq_config *c = &m.cfg;
    const st_tensor *tok = st_file_find(&g, "tokens");
    CHECK(tok && tok->ndim == 2);
    int S = (int)tok->shape[0], T = (int)tok->shape[1], H = c->hidden_size;
    size_t n = (size_t)S * T, nh = n * (size_t)H;
    float *x = malloc(sizeof(float) * nh), *y = malloc(sizeof(float) * nh);
    float *attn = malloc(sizeof(float) * nh), *mlp = malloc(sizeof(float) * nh);
    float *chain = malloc(sizeof(float) * nh);
    float *logits = malloc(sizeof(float) * n * (size_t)c->vocab_size);
    moeq_rope_cache rope;
    CHECK(moeq_rope_cache_init(c, &rope, &err) == MOEQ_OK);
    CHECK(moeq_model_embed(&m, (const int32_t *)tok->data, n, x, &err) == MOEQ_OK);
    check_close(name, "embed", x, golden(&g, "embed", nh), nh);
    memcpy(chain, x, sizeof(float) * nh);
    for (int l = 0; l < c->num_layers; l++) {
        char key[64], what[64];
        moeq_layer_weights lw;
        if (moeq_layer_weights_load(&m, l, &lw, &err)) {
            fprintf(stderr, "  %s\n", err.msg);
            test_failures_in_current++;
            break;
        }
        /* From transformers' input to this layer. */
        const float *in = x;
        if (l > 0) {
            snprintf(key, sizeof key, "layer.%d.out", l - 1);
            in = golden(&g, key, nh);
        }
        moeq_layer_trace trace = {.attn_out = attn, .mlp_out = mlp};
        CHECK(in && moeq_layer_forward(c, &lw, &rope, in, S, T, y, &trace, &err) == MOEQ_OK);
        snprintf(key, sizeof key, "layer.%d.attn", l);
        snprintf(what, sizeof what, "layer %d attention", l);
        check_close(name, what, attn, golden(&g, key, nh), nh);
        snprintf(key, sizeof key, "layer.%d.mlp", l);
        snprintf(what, sizeof what, "layer %d %s", l, lw.is_moe ? "MoE" : "MLP");
        check_close(name, what, mlp, golden(&g, key, nh), nh);
        snprintf(key, sizeof key, "layer.%d.out", l);
        snprintf(what, sizeof what, "layer %d output", l);
        check_close(name, what, y, golden(&g, key, nh), nh);
        /* End to end, from our own previous layer. */
        CHECK(moeq_layer_forward(c, &lw, &rope, chain, S, T, y, NULL, &err) == MOEQ_OK);
        memcpy(chain, y, sizeof(float) * nh);
        moeq_layer_weights_free(&lw);
    }
    moeq_head_weights head;
    CHECK(moeq_head_weights_load(&m, &head, &err) == MOEQ_OK);
    CHECK(moeq_head_forward(c, &head, chain, n, logits, &err) == MOEQ_OK);
    size_t nl = n * (size_t)c->vocab_size;
    check_close_tol(name, "logits (end to end)", logits, golden(&g, "logits", nl), nl,
                    logits_tol);
    moeq_head_weights_free(&head);
    moeq_rope_cache_free(&rope);
    free(x);
    free(y);
    free(attn);
    free(mlp);
    free(chain);
    free(logits);
    st_file_close(&g);
    moeq_model_close(&m);
}

static void check_model(const char *name) { check_model_tol(name, REL_TOL); }

/* The MTP block from transformers' final normed hidden states and the
 * tokens: its output after mtp.norm and the logits through lm_head, against
 * the reference make_golden.py builds with transformers' decoder layer. */
static void check_mtp(const char *name)
{
    char dir[4096], gpath[4200];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    moeq_error err = {0};
    mtp_golden_run r;
    st_file g;
    moeq_code rc = mtp_run_on_golden(dir, dir, &r, &err);
    if (rc || st_file_open(&g, gpath, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        test_failures_in_current++;
        mtp_golden_run_free(&r);
        return;
    }
    const size_t n = r.n, H = (size_t)r.hidden, V = (size_t)r.vocab;
    check_close(name, "MTP block", r.block, golden(&g, "mtp.out", n * H), n * H);
    check_close(name, "MTP logits", r.logits, golden(&g, "mtp.logits", n * V), n * V);
    mtp_golden_run_free(&r);
    st_file_close(&g);
}

static void test_qwen3_moe_matches_transformers(void) { check_model("qwen3_moe"); }
static void test_qwen2_moe_matches_transformers(void) { check_model("qwen2_moe"); }
static void test_mixtral_matches_transformers(void) { check_model("mixtral"); }
static void test_llama_matches_transformers(void) { check_model("llama"); }
static void test_qwen2_matches_transformers(void) { check_model("qwen2"); }
static void test_qwen3_matches_transformers(void) { check_model("qwen3"); }
/* Sinks, alternating sliding window, fused experts with biases, clamped
 * SwiGLU, router bias. */
static void test_gpt_oss_matches_transformers(void) { check_model("gpt_oss"); }
/* Sigmoid router on the expert input, shared expert, fused experts, dense
 * layer, chunked attention, a layer without RoPE, q/k L2 norm. */
static void test_llama4_text_matches_transformers(void) { check_model("llama4_text"); }
/* The released multimodal layout: the same language model under
 * language_model.*, config in text_config, a vision model beside it. */
static void test_llama4_multimodal_checkpoint_matches_transformers(void) { check_model("llama4"); }
/* MXFP4 experts: transformers' forward on its own dequantization. */
static void test_gpt_oss_mxfp4_matches_transformers(void) { check_model("gpt_oss_mxfp4"); }
/* Block-FP8 source: transformers' forward on its own dequantization. */
static void test_qwen3_moe_fp8_matches_transformers(void) { check_model("qwen3_moe_fp8"); }
static void test_qwen3_next_matches_transformers(void) { check_model("qwen3_next"); }
/* Multimodal checkpoints, the language model nested in them, run on text. */
/* Its layers are held to REL_TOL; its logits after 80 tokens through four
 * layers are not that stable in fp32 even in transformers, whose own fp32
 * logits differ from its float64 forward by 2.5e-5 (measured; moeq's from
 * transformers' fp32 by 2.5e-5 too). */
static void test_qwen3_5_moe_matches_transformers(void) { check_model_tol("qwen3_5_moe", 1e-4); }
static void test_qwen3_5_matches_transformers(void) { check_model("qwen3_5"); }
static void test_qwen3_next_mtp_block_matches_reference(void) { check_mtp("qwen3_next"); }
static void test_qwen3_5_moe_mtp_block_matches_reference(void) { check_mtp("qwen3_5_moe"); }
static void test_qwen3_5_mtp_block_matches_reference(void) { check_mtp("qwen3_5"); }
/* DeepSeek-V3's and GLM-4.5's next-n layer (model.layers.{N}.*, MLA and GQA
 * inside) against vLLM's drafter as make_golden.py writes it: the zeroed
 * embedding at position 0, enorm / hnorm / eh_proj, shared_head.norm; the
 * fixture's shared_head.head is lm_head's copy, as DeepSeek-V3 ships it. */
static void test_deepseek_v3_nextn_layer_matches_reference(void) { check_mtp("deepseek_v3"); }
static void test_glm4_moe_nextn_layer_matches_reference(void) { check_mtp("glm4_moe"); }
static void test_glm4_moe_matches_transformers(void) { check_model("glm4_moe"); }
static void test_minimax_m2_matches_transformers(void) { check_model("minimax_m2"); }
static void test_deepseek_v3_mla_with_q_lora_matches_transformers(void)
{
    check_model("deepseek_v3");
}
static void test_deepseek_v3_mla_with_q_proj_matches_transformers(void)
{
    check_model("deepseek_v3_q_proj");
}
static void test_deepseek_v2_matches_transformers(void) { check_model("deepseek_v2"); }

int main(void)
{
    RUN(test_qwen3_moe_matches_transformers);
    RUN(test_qwen2_moe_matches_transformers);
    RUN(test_mixtral_matches_transformers);
    RUN(test_llama_matches_transformers);
    RUN(test_qwen2_matches_transformers);
    RUN(test_qwen3_matches_transformers);
    RUN(test_gpt_oss_matches_transformers);
    RUN(test_gpt_oss_mxfp4_matches_transformers);
    RUN(test_llama4_text_matches_transformers);
    RUN(test_llama4_multimodal_checkpoint_matches_transformers);
    RUN(test_qwen3_moe_fp8_matches_transformers);
    RUN(test_qwen3_next_matches_transformers);
    RUN(test_qwen3_5_moe_matches_transformers);
    RUN(test_qwen3_5_matches_transformers);
    RUN(test_qwen3_next_mtp_block_matches_reference);
    RUN(test_qwen3_5_moe_mtp_block_matches_reference);
    RUN(test_qwen3_5_mtp_block_matches_reference);
    RUN(test_deepseek_v3_nextn_layer_matches_reference);
    RUN(test_glm4_moe_nextn_layer_matches_reference);
    RUN(test_glm4_moe_matches_transformers);
    RUN(test_minimax_m2_matches_transformers);
    RUN(test_deepseek_v3_mla_with_q_lora_matches_transformers);
    RUN(test_deepseek_v3_mla_with_q_proj_matches_transformers);
    RUN(test_deepseek_v2_matches_transformers);
    return test_summary();
}
