/* test_cuda_support.c: which models and settings the CUDA layer loop takes
 * (moeq_cuda_pipeline_supports). The check reads the configuration only, so
 * this runs in every CUDA build, with or without a GPU: a model the loop
 * has must pass, and one it lacks must be refused naming the component
 * (--device auto then runs it on the CPU). */
#include "model/model.h"
#include "pipeline/quantize.h"
#include "../test.h"

#include <stdio.h>
#include <string.h>

/* The golden fixture arch opened into m (err says why where it does not). */
static void open_golden(const char *arch, moeq_model *m, moeq_error *err)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, arch);
    CHECK_INT_EQ(moeq_model_open(dir, NULL, m, err), MOEQ_OK);
}

static moeq_quantize_options default_options(void)
{
    return (moeq_quantize_options){.method = MOEQ_METHOD_GPTQ,
                                   .gptq = moeq_gptq_default_config(),
                                   .expert_calib = MOEQ_EXPERT_CALIB_ALL,
                                   .min_expert_tokens = 16,
                                   .true_sequential = 1};
}

/* Each golden fixture in archs passes the CUDA loop's support check with
 * opt (the error names the fixture when one does not). */
static void check_supported(const char *const *archs, size_t n, const moeq_quantize_options *opt)
{
    for (size_t i = 0; i < n; i++) {
        moeq_error err = {0};
        moeq_model m;
        open_golden(archs[i], &m, &err);
        moeq_code rc = moeq_cuda_pipeline_supports(&m, opt, &err);
        if (rc)
            fprintf(stderr, "  %s: %s\n", archs[i], err.msg);
        CHECK_INT_EQ(rc, MOEQ_OK);
        moeq_model_close(&m);
    }
}

/* The architectures the CUDA loop implements pass, whatever keys their
 * config.json carries (transformers 5 writes layer_types for every model);
 * gpt_oss has sinks, sliding-window layers, the clamped SwiGLU and MLP and
 * router biases, its MXFP4 fixture the same dequantized on load; Llama-4
 * (text and multimodal) its router on the expert input, layers without
 * RoPE with temperature tuning, chunked attention, interleaved RoPE and
 * the q/k L2 norm; the hybrid models (qwen3_next, qwen3_5_moe,
 * qwen3_5) Gated DeltaNet layers and output-gated attention; the deepseek
 * fixtures multi-head latent attention (with q_lora_rank or a plain
 * q_proj). */
static void test_supported_architectures_pass(void)
{
    const char *archs[] = {"qwen3_moe",     "qwen2_moe",     "mixtral",     "llama",
                           "qwen2",         "qwen3",         "qwen3_moe_fp8", "glm4_moe",
                           "minimax_m2",    "gpt_oss",       "gpt_oss_mxfp4", "llama4_text",
                           "llama4",        "qwen3_next",    "qwen3_5_moe", "qwen3_5",
                           "deepseek_v3",   "deepseek_v3_q_proj", "deepseek_v2"};
    moeq_quantize_options opt = default_options();
    check_supported(archs, sizeof archs / sizeof *archs, &opt);
}

/* Scales exact in bf16 as well as fp16 (--format awq or compressed-tensors on
 * a bf16 model) are the CUDA sweep's as well: GPTQ and RTN pass. */
static void test_bf16_exact_scales_pass(void)
{
    moeq_error err = {0};
    moeq_model m;
    open_golden("qwen3_moe", &m, &err);
    moeq_quantize_options opt = default_options();
    opt.gptq.scale_bf16 = 1;
    for (int f = 0; f < 2; f++) {
        opt.format = f ? MOEQ_FORMAT_AWQ : MOEQ_FORMAT_COMPRESSED_TENSORS;
        opt.method = MOEQ_METHOD_GPTQ;
        moeq_code rc = moeq_cuda_pipeline_supports(&m, &opt, &err);
        if (rc)
            fprintf(stderr, "  %s\n", err.msg);
        CHECK_INT_EQ(rc, MOEQ_OK);
        opt.method = MOEQ_METHOD_RTN;
        CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_OK);
    }
    moeq_model_close(&m);
}

/* A setting the loop lacks is refused the same way. */
static void test_true_sequential_false_is_refused(void)
{
    moeq_error err = {0};
    moeq_model m;
    open_golden("qwen3_moe", &m, &err);
    moeq_quantize_options opt = default_options();
    opt.true_sequential = 0;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "true-sequentially only");
    moeq_model_close(&m);
}

/* Gated DeltaNet heads wider than the CUDA delta rule holds (key heads or
 * value heads over 128) are refused naming both widths. */
static void test_hybrid_components_are_refused_by_name(void)
{
    moeq_model m;
    moeq_error err = {0};
    open_golden("qwen3_5_moe", &m, &err);
    moeq_quantize_options opt = default_options();
    m.cfg.la_k_head_dim = 256;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "linear_key_head_dim 256");
    m.cfg.la_k_head_dim = 128;
    m.cfg.la_v_head_dim = 256;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "linear_value_head_dim 256");
    m.cfg.la_v_head_dim = 128;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_OK);
    moeq_model_close(&m);
}

/* --quantize-mtp runs the MTP layer through the stages of a numbered
 * layer, so the loop takes it exactly where it takes the model: the same
 * answer, word for word, with and without it (all four pass); a model
 * without an MTP layer is refused naming that. */
static void test_quantize_mtp_follows_the_loop_s_own_support(void)
{
    const char *archs[] = {"glm4_moe", "deepseek_v3", "qwen3_5_moe", "qwen3_next"};
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++) {
        moeq_error plain = {0}, mtp = {0};
        moeq_model m;
        open_golden(archs[i], &m, &plain);
        moeq_quantize_options opt = default_options();
        moeq_code rc_plain = moeq_cuda_pipeline_supports(&m, &opt, &plain);
        opt.quantize_mtp = 1;
        moeq_code rc_mtp = moeq_cuda_pipeline_supports(&m, &opt, &mtp);
        printf("  %s --quantize-mtp: %s\n", archs[i], rc_mtp ? mtp.msg : "runs on the GPU");
        CHECK_INT_EQ(rc_mtp, rc_plain);
        CHECK_STR_EQ(mtp.msg, plain.msg);
        CHECK_INT_EQ(rc_mtp, MOEQ_OK);
        moeq_model_close(&m);
    }
    moeq_error err = {0};
    moeq_model m;
    open_golden("qwen3_moe", &m, &err);
    moeq_quantize_options opt = default_options();
    opt.quantize_mtp = 1;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "no MTP block");
    moeq_model_close(&m);
}

/* The CUDA router holds at most 64 expert groups: more are refused naming
 * n_group (no real model comes near; DeepSeek-V3 has 8). */
static void test_more_than_64_expert_groups_are_refused(void)
{
    moeq_error err = {0};
    moeq_model m;
    open_golden("glm4_moe", &m, &err);
    moeq_quantize_options opt = default_options();
    m.cfg.n_group = 128;
    CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "n_group = 128");
    moeq_model_close(&m);
}

/* AWQ runs in the CUDA loop where the CPU loop runs it: the dense and MoE
 * models of softmax top-k routers and SiLU MLPs. */
static void test_awq_passes_where_the_cpu_runs_it(void)
{
    const char *archs[] = {"qwen3_moe", "qwen2_moe", "mixtral", "llama", "qwen2", "qwen3"};
    moeq_quantize_options opt = default_options();
    opt.method = MOEQ_METHOD_AWQ;
    check_supported(archs, sizeof archs / sizeof *archs, &opt);
}

/* What the CPU's AWQ refuses, the CUDA loop refuses with the same words
 * (models the CUDA loop takes with GPTQ); and AWQ on several GPUs. */
static void test_awq_refusals_match_the_cpu(void)
{
    const struct {
        const char *arch, *component;
        int devices;
    } cases[] = {
        {"glm4_moe", "--method awq is not implemented for routers other than softmax top-k", 1},
        {"minimax_m2", "--method awq is not implemented for q/k norms over the whole projection",
         1},
        {"gpt_oss", "--method awq is not implemented for MLP biases", 1},
        {"qwen3_moe", "AWQ (--method awq) on several GPUs (--devices)", 2}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        moeq_error err = {0};
        moeq_model m;
        open_golden(cases[i].arch, &m, &err);
        moeq_quantize_options opt = default_options();
        CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_OK);
        opt.method = MOEQ_METHOD_AWQ;
        opt.n_devices = cases[i].devices;
        opt.devices[1] = 1;
        CHECK_INT_EQ(moeq_cuda_pipeline_supports(&m, &opt, &err), MOEQ_ERR_UNSUPPORTED);
        CHECK_CONTAINS(err.msg, cases[i].component);
        moeq_model_close(&m);
    }
}

int main(void)
{
    RUN(test_supported_architectures_pass);
    RUN(test_bf16_exact_scales_pass);
    RUN(test_true_sequential_false_is_refused);
    RUN(test_hybrid_components_are_refused_by_name);
    RUN(test_more_than_64_expert_groups_are_refused);
    RUN(test_awq_passes_where_the_cpu_runs_it);
    RUN(test_awq_refusals_match_the_cpu);
    RUN(test_quantize_mtp_follows_the_loop_s_own_support);
    return test_summary();
}
