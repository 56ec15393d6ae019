/* fuzz.h: shared by the libFuzzer targets in tests/fuzz (see
 * scripts/fuzz.sh). The readers under test take paths, so each input is
 * written to a file of this process first. */
#ifndef MOEQ_TESTS_FUZZ_H
#define MOEQ_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes data to $TMPDIR/moeq-fuzz-<pid><suffix> (the same file on every
 * call) and returns its path, or NULL if it cannot be written. */
static inline const char *fuzz_write_input(const uint8_t *data, size_t size, const char *suffix)
{
    static char path[512];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/moeq-fuzz-%ld%s", dir && *dir ? dir : "/tmp", (long)getpid(),
             suffix);
    FILE *f = fopen(path, "wb");
    if (!f)
        return NULL;
    size_t n = size ? fwrite(data, 1, size, f) : 0;
    int ok = fclose(f) == 0 && n == size;
    return ok ? path : NULL;
}

/* data as a NUL-terminated string (malloc'ed). */
static inline char *fuzz_string(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s) {
        if (size)
            memcpy(s, data, size);
        s[size] = '\0';
    }
    return s;
}

#endif
