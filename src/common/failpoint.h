/* failpoint.h: test hooks that kill the process at a named point, so that
 * the tests can interrupt a real run where a crash or a SIGKILL could
 * (tests/test_resume.c). Set MOEQ_FAILPOINT=NAME to arm one; unset, each
 * check is one getenv. Names used: "layer-L-mid" (after layer L's attention
 * stage), "layer-L-shard" (layer L's shard half written), "layer-L-state"
 * (between layer L's hidden states and its state record). */
#ifndef MOEQ_COMMON_FAILPOINT_H
#define MOEQ_COMMON_FAILPOINT_H

/* Kills the process with SIGKILL when MOEQ_FAILPOINT equals name. When
 * truncate_path is not NULL, that file is first cut to half its size (a
 * write torn by the kill). */
void moeq_failpoint(const char *name, const char *truncate_path);

#endif
