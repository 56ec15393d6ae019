/* cli_run.h: the moeq binary run as a user runs it, for the tests that
 * drive the command line (test_cli.c, test_hybrid.c). Needs MOEQ_SOURCE_DIR
 * and MOEQ_BINARY (CMakeLists.txt defines both for these tests). Include
 * after test.h. */
#ifndef MOEQ_TESTS_CLI_RUN_H
#define MOEQ_TESTS_CLI_RUN_H

#include <stdio.h>
#include <sys/wait.h>

/* Runs `moeq ARGS` from the source directory with stderr merged into the
 * captured output (out, bytes long, NUL-terminated); returns the exit
 * status, -1 when it did not exit normally or could not start. */
static inline int run_moeq(const char *args, char *out, size_t bytes)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>&1", MOEQ_SOURCE_DIR, MOEQ_BINARY, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, bytes - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#endif
