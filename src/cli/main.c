/* main.c: the moeq command line: dispatches to a subcommand. */
#include "moeq/moeq.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "moeq %s: layer-streaming GPTQ/AWQ quantization for MoE LLMs\n"
            "\n"
            "usage: moeq <command> [options]\n"
            "\n"
            "commands:\n"
            "  --version      print the version\n",
            MOEQ_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moeq %s\n", MOEQ_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "moeq: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
