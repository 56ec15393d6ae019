/* args.h: table-driven option parsing for the subcommands. Each option is
 * --name VALUE (or --name=VALUE), or a bare --name for flags; anything not
 * starting with "--" is positional. Sizes accept K/M/G/T with optional iB. */
#ifndef MOEQ_CLI_ARGS_H
#define MOEQ_CLI_ARGS_H

#include "moeq/moeq.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum arg_type { ARG_FLAG, ARG_BOOL, ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_BYTES } arg_type;

typedef struct arg_spec {
    const char *name; /* without the leading "--" */
    arg_type type;
    void *dest; /* int* (flag, bool: true/false/1/0, int), double*, const char**, int64_t* */
    const char *metavar;
    const char *help;
} arg_spec;

/* Parses argv[0..argc) against specs (terminated by a zero entry); up to
 * max_positional positionals land in positional[]. */
moeq_code args_parse(const arg_spec *specs, int argc, char **argv, const char **positional,
                     int max_positional, int *n_positional, moeq_error *err);
void args_print_help(FILE *out, const arg_spec *specs);
/* A subcommand's help: usage (its usage line and what it does, ending in a
 * blank line), then "options:" and the option table. */
void args_print_usage(FILE *out, const char *usage, const arg_spec *specs);
/* args_parse for subcommand cmd, then --help (help: the variable of its
 * flag in specs). Returns -1 when the command goes on, else the exit status
 * to return: 2 after reporting a bad option, 0 after printing the usage. */
int args_parse_command(const char *cmd, const char *usage, const arg_spec *specs, const int *help,
                       int argc, char **argv, const char **positional, int max_positional,
                       int *n_positional);
/* "24GiB", "512M", "1000" -> bytes */
moeq_code args_parse_bytes(const char *text, int64_t *bytes, moeq_error *err);
/* Where a command runs, from --device (auto: the first GPU of a CUDA build
 * if there is one, else the CPU; cpu; cuda; cuda:N) and --devices (N,N,...,
 * NULL when absent): *cuda, and the GPUs in out[0..*n) (out holds
 * MOEQ_MAX_DEVICES). -1 with a message for an unusable choice (a bad
 * value, a device that does not exist, CUDA asked of a build without it). */
int args_pick_devices(const char *device, const char *devices, int *cuda, int *out, int *n,
                      char *msg, size_t msg_size);

#endif
