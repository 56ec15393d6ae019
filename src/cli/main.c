/* main.c: the moeq command line: dispatches to a subcommand. */
#include "cli/commands.h"
#include "moeq/moeq.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "moeq %s: layer-streaming GPTQ/AWQ quantization for MoE LLMs\n"
            "\n"
            "usage: moeq <command> [options]      (moeq <command> --help for its options)\n"
            "\n"
            "commands:\n"
            "  quantize            quantize a checkpoint to GPTQ, one layer at a time\n"
            "  inspect MODEL_DIR   architecture, layers, experts, parameters and what would\n"
            "                      be quantized\n"
            "  eval MODEL_DIR      perplexity; KL divergence and top-1 agreement against a\n"
            "                      reference checkpoint\n"
            "  --version           print the version\n",
            MOEQ_VERSION);
}

int moeq_cli_report(const char *cmd, int code, const char *msg)
{
    fprintf(stderr, "moeq %s: error: %s\n", cmd, msg);
    return code;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "quantize"))
        return moeq_cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect"))
        return moeq_cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval"))
        return moeq_cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "--version")) {
#ifdef MOEQ_HAVE_CUDA
        printf("moeq %s (backends: cpu, cuda)\n", MOEQ_VERSION);
#else
        printf("moeq %s (backends: cpu)\n", MOEQ_VERSION);
#endif
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "moeq: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
