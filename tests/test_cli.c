/* test_cli.c: the moeq command line as a user runs it: exit codes, the
 * help text, and errors that name what is wrong. */
#include "test.h"
#include "cli_run.h"

static char out[1 << 16];

static void test_version_and_help_exit_zero(void)
{
    CHECK_INT_EQ(run_moeq("--version", out, sizeof out), 0);
    CHECK_CONTAINS(out, "moeq 0.");
#ifdef MOEQ_HAVE_CUDA
    CHECK_CONTAINS(out, "(backends: cpu, cuda)");
#else
    CHECK_CONTAINS(out, "(backends: cpu)");
#endif
    CHECK_INT_EQ(run_moeq("--help", out, sizeof out), 0);
    CHECK_CONTAINS(out, "inspect");
    CHECK_CONTAINS(out, "eval");
}

static void test_unknown_command_is_a_usage_error(void)
{
    CHECK_INT_EQ(run_moeq("frobnicate", out, sizeof out), 2);
    CHECK_CONTAINS(out, "unknown command 'frobnicate'");
}

static void test_inspect_reports_experts_and_quantized_share(void)
{
    CHECK_INT_EQ(run_moeq("inspect tests/fixtures/golden/qwen3_moe", out, sizeof out), 0);
    CHECK_CONTAINS(out, "qwen3_moe");
    CHECK_CONTAINS(out, "3 (2 MoE, 1 dense)");
    CHECK_CONTAINS(out, "8 per MoE layer, top-2");
    CHECK_CONTAINS(out, "4 heads, 2 kv heads, head_dim 32");
    CHECK_CONTAINS(out, "in 4 file(s)");
    CHECK_CONTAINS(out, "BF16");
    CHECK_CONTAINS(out, "212608 parameters");
    /* 3 layers x 4 attention linears + 2 MoE layers x 8 experts x 3 + 3 dense */
    CHECK_CONTAINS(out, "63 linear weights");
}

static void test_inspect_of_a_non_model_directory_fails_naming_config(void)
{
    CHECK_INT_EQ(run_moeq("inspect tests", out, sizeof out), 1);
    CHECK_CONTAINS(out, "tests/config.json");
}

static void test_unknown_option_is_a_usage_error(void)
{
    CHECK_INT_EQ(run_moeq("inspect tests/fixtures/golden/llama --bogus", out, sizeof out), 2);
    CHECK_CONTAINS(out, "unknown option \"--bogus\"");
}

static void test_eval_help_states_the_protocol(void)
{
    CHECK_INT_EQ(run_moeq("eval --help", out, sizeof out), 0);
    CHECK_CONTAINS(out, "non-overlapping windows");
    CHECK_CONTAINS(out, "--logits-out");
    CHECK_CONTAINS(out, "--tokens");
}

static void test_eval_scores_a_token_file(void)
{
    const char *dir = test_tmpdir("cli_eval");
    int32_t ids[48];
    for (int i = 0; i < 48; i++)
        ids[i] = (i * 37) % 160;
    char abs[4096];
    char *cwd = getcwd(NULL, 0);
    snprintf(abs, sizeof abs, "%s/%s/tokens.bin", cwd, dir);
    test_write_file(abs, ids, sizeof ids);
    char args[8192];
    snprintf(args, sizeof args,
             "eval tests/fixtures/golden/llama --tokens '%s' --seqlen 16 --quiet "
             "--reference tests/fixtures/golden/llama",
             abs);
    CHECK_INT_EQ(run_moeq(args, out, sizeof out), 0);
    CHECK_CONTAINS(out, "3 x 16 tokens (45 predicted positions)");
    CHECK_CONTAINS(out, "kl          0.000000");
    CHECK_CONTAINS(out, "top1_agree  1.000000");
    free(cwd);
}

static void test_eval_needs_exactly_one_input(void)
{
    CHECK_INT_EQ(run_moeq("eval tests/fixtures/golden/llama", out, sizeof out), 2);
    CHECK_CONTAINS(out, "exactly one of --text and --tokens");
    CHECK_INT_EQ(run_moeq("eval tests/fixtures/golden/llama --seqlen x --tokens a", out,
                          sizeof out),
                 2);
    CHECK_CONTAINS(out, "--seqlen: \"x\" is not an integer");
    /* Where it runs: a bad --device, a GPU that is not there. */
    CHECK_INT_EQ(run_moeq("eval tests/fixtures/golden/llama --tokens a --device tpu", out,
                          sizeof out),
                 2);
    CHECK_CONTAINS(out, "--device must be auto, cpu, cuda or cuda:N");
    CHECK_INT_EQ(run_moeq("eval tests/fixtures/golden/llama --tokens a --devices 0,97", out,
                     sizeof out),
                 2);
    CHECK_CONTAINS(out, "--devices 0,97: ");
}

/* The bundled demo model: a real Qwen3-MoE checkpoint with a tokenizer. */
#define DEMO "demo/qwen3-moe-demo"

static void test_quantize_demo_end_to_end_and_eval_the_result(void)
{
    const char *dir = test_tmpdir("cli_quantize");
    char *cwd = getcwd(NULL, 0);
    char calib[4096], args[8192];
    snprintf(calib, sizeof calib, "%s/%s/calib.txt", cwd, dir);
    /* Calibration text: the docs page of this project is long enough for
     * 4 windows of 64 tokens. */
    char src[8400];
    snprintf(src, sizeof src, "cp '%s/docs/adding-a-model.md' '%s'", MOEQ_SOURCE_DIR, calib);
    CHECK(system(src) == 0);
    snprintf(args, sizeof args,
             "quantize --model " DEMO " --out '%s/%s/q' --calib '%s' --nsamples 4 --seqlen 64 "
             "--expert-calib routed --min-expert-tokens 4",
             cwd, dir, calib);
    CHECK_INT_EQ(run_moeq(args, out, sizeof out), 0);
    CHECK_CONTAINS(out, "layer 4/4");
    CHECK_CONTAINS(out, "expert tokens");
    CHECK_CONTAINS(out, "wrote ");
    snprintf(args, sizeof args,
             "eval '%s/%s/q' --reference " DEMO " --text '%s' --seqlen 64 --quiet", cwd, dir,
             calib);
    CHECK_INT_EQ(run_moeq(args, out, sizeof out), 0);
    CHECK_CONTAINS(out, "kl ");
    free(cwd);
}

static void test_quantize_bad_settings_are_clear_errors_and_write_nothing(void)
{
    const char *dir = test_tmpdir("cli_quantize_bad");
    char *cwd = getcwd(NULL, 0);
    char args[8192], empty[4096], small[4096];
    snprintf(empty, sizeof empty, "%s/%s/empty.jsonl", cwd, dir);
    snprintf(small, sizeof small, "%s/%s/small.txt", cwd, dir);
    test_write_file(empty, "", 0);
    test_write_file(small, "Just a few words.", 17);
    struct {
        const char *extra;
        int status;
        const char *message;
    } cases[] = {
        {"--bits 5", 2, "--bits 5 is not supported"},
        {"--group-size 100", 1, "--group-size 100 does not divide the input dimension 256"},
        {"--expert-calib sometimes", 2, "--expert-calib must be routed, all or weighted"},
        {"--sym maybe", 2, "--sym: \"maybe\" is not true or false"},
        {"--calib EMPTY", 1, "holds no documents"},
        {"--calib SMALL", 1, "fewer than --nsamples 128"},
        {"--device tpu", 2, "--device must be auto, cpu, cuda or cuda:N"},
        {"--device cuda:9", 2, "--device cuda:9: "},
        {"--devices 0,0", 2, "--devices must list distinct CUDA device numbers"},
        {"--devices 0,x", 2, "--devices must list distinct CUDA device numbers"},
        {"--devices 0,", 2, "--devices must list distinct CUDA device numbers"},
        {"--devices 0,1 --device cpu", 2, "--devices and --device name the GPUs twice"},
        {"--devices 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", 2,
         "--devices must list distinct CUDA device numbers"},
        {"--devices 0,97", 2, "--devices 0,97: "},
        {"--vram-budget lots", 2, "--vram-budget must be a size such as 24GiB"},
        {"--vram-budget 24XB", 2, "--vram-budget must be a size such as 24GiB"},
        {"--expert-batch -2", 2, "--expert-batch must be positive"},
        {"--device cpu --mse 0.5", 2, "--mse 0.5 must be 0 (off) or a norm in [1, 8]"},
        {"--format safetensors", 2, "--format must be gptq, awq or compressed-tensors"},
        {"--format awq --bits 3", 1, "the AWQ GEMM format holds 4-bit weights only, not 3-bit"},
        {"--format compressed-tensors --desc-act true", 1,
         "--format compressed-tensors stores no g_idx, so act-order needs --static-groups true"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char extra[4200];
        snprintf(extra, sizeof extra, "%s", cases[i].extra);
        if (strstr(extra, "EMPTY"))
            snprintf(extra, sizeof extra, "--calib '%s'", empty);
        if (strstr(extra, "SMALL"))
            snprintf(extra, sizeof extra, "--calib '%s'", small);
        snprintf(args, sizeof args, "quantize --model " DEMO " --out '%s/%s/out' %s", cwd, dir,
                 extra);
        CHECK_INT_EQ(run_moeq(args, out, sizeof out), cases[i].status);
        CHECK_CONTAINS(out, cases[i].message);
    }
    /* An existing output directory is refused. */
    snprintf(args, sizeof args, "quantize --model " DEMO " --out '%s/%s'", cwd, dir);
    CHECK_INT_EQ(run_moeq(args, out, sizeof out), 2);
    CHECK_CONTAINS(out, "already exists");
    /* Nothing but the two inputs was left behind. */
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "test \"$(ls -A '%s/%s' | tr '\\n' ' ')\" = 'empty.jsonl small.txt '",
             cwd, dir);
    CHECK(system(cmd) == 0);
    free(cwd);
}

int main(void)
{
    RUN(test_version_and_help_exit_zero);
    RUN(test_unknown_command_is_a_usage_error);
    RUN(test_inspect_reports_experts_and_quantized_share);
    RUN(test_inspect_of_a_non_model_directory_fails_naming_config);
    RUN(test_unknown_option_is_a_usage_error);
    RUN(test_eval_help_states_the_protocol);
    RUN(test_eval_scores_a_token_file);
    RUN(test_eval_needs_exactly_one_input);
    RUN(test_quantize_demo_end_to_end_and_eval_the_result);
    RUN(test_quantize_bad_settings_are_clear_errors_and_write_nothing);
    return test_summary();
}
