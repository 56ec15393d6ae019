/* test_cli.c: the moeq command line as a user runs it: exit codes, the
 * help text, and errors that name what is wrong. */
#include "test.h"

#include <sys/wait.h>

/* Runs `moeq ARGS` with stderr merged into the captured output; returns the
 * exit status. */
static int run(const char *args, char *out, size_t bytes)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>&1", MOEQ_SOURCE_DIR, MOEQ_BINARY, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, bytes - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char out[1 << 16];

static void test_version_and_help_exit_zero(void)
{
    CHECK_INT_EQ(run("--version", out, sizeof out), 0);
    CHECK_CONTAINS(out, "moeq 0.");
    CHECK_INT_EQ(run("--help", out, sizeof out), 0);
    CHECK_CONTAINS(out, "inspect");
    CHECK_CONTAINS(out, "eval");
}

static void test_unknown_command_is_a_usage_error(void)
{
    CHECK_INT_EQ(run("frobnicate", out, sizeof out), 2);
    CHECK_CONTAINS(out, "unknown command 'frobnicate'");
}

static void test_inspect_reports_experts_and_quantized_share(void)
{
    CHECK_INT_EQ(run("inspect tests/fixtures/golden/qwen3_moe", out, sizeof out), 0);
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
    CHECK_INT_EQ(run("inspect tests", out, sizeof out), 1);
    CHECK_CONTAINS(out, "tests/config.json");
}

static void test_unknown_option_is_a_usage_error(void)
{
    CHECK_INT_EQ(run("inspect tests/fixtures/golden/llama --bogus", out, sizeof out), 2);
    CHECK_CONTAINS(out, "unknown option \"--bogus\"");
}

static void test_eval_help_states_the_protocol(void)
{
    CHECK_INT_EQ(run("eval --help", out, sizeof out), 0);
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
    CHECK_INT_EQ(run(args, out, sizeof out), 0);
    CHECK_CONTAINS(out, "3 x 16 tokens (45 predicted positions)");
    CHECK_CONTAINS(out, "kl          0.000000");
    CHECK_CONTAINS(out, "top1_agree  1.000000");
    free(cwd);
}

static void test_eval_needs_exactly_one_input(void)
{
    CHECK_INT_EQ(run("eval tests/fixtures/golden/llama", out, sizeof out), 2);
    CHECK_CONTAINS(out, "exactly one of --text and --tokens");
    CHECK_INT_EQ(run("eval tests/fixtures/golden/llama --seqlen x --tokens a", out, sizeof out), 2);
    CHECK_CONTAINS(out, "--seqlen: \"x\" is not an integer");
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
    return test_summary();
}
