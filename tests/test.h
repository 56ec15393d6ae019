/* test.h: the tiny test harness every tests/test_*.c uses.
 *
 * A test file defines `static void test_xxx(void)` functions and a main()
 * that calls RUN(test_xxx) for each, then `return test_summary();`.
 * CHECK* macros record a failure with file:line and keep going inside the
 * test; the summary prints "N passed, M failed" and the exit status is
 * non-zero when anything failed. */
#ifndef MOEQ_TEST_H
#define MOEQ_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

static int test_failures_in_current;
static int test_passed;
static int test_failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, \
                    #cond);                                                    \
            test_failures_in_current++;                                        \
        }                                                                      \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                     \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n",        \
                    __FILE__, __LINE__, #a, #b, a_, b_);                       \
            test_failures_in_current++;                                        \
        }                                                                      \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                     \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                               \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n",    \
                    __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",            \
                    b_ ? b_ : "(null)");                                       \
            test_failures_in_current++;                                        \
        }                                                                      \
    } while (0)

/* The message must contain every given fragment (file, tensor, field...). */
#define CHECK_CONTAINS(haystack, needle)                                       \
    do {                                                                       \
        const char *h_ = (haystack), *n_ = (needle);                           \
        if (!h_ || !strstr(h_, n_)) {                                          \
            fprintf(stderr, "  %s:%d: \"%s\" does not contain \"%s\"\n",       \
                    __FILE__, __LINE__, h_ ? h_ : "(null)", n_);               \
            test_failures_in_current++;                                        \
        }                                                                      \
    } while (0)

/* |a - b| <= abs_tol + rel_tol * |b| */
#define CHECK_NEAR(a, b, abs_tol, rel_tol)                                     \
    do {                                                                       \
        double a_ = (double)(a), b_ = (double)(b);                             \
        if (!(fabs(a_ - b_) <= (abs_tol) + (rel_tol)*fabs(b_))) {              \
            fprintf(stderr, "  %s:%d: %s ~= %s failed: %.9g vs %.9g\n",        \
                    __FILE__, __LINE__, #a, #b, a_, b_);                       \
            test_failures_in_current++;                                        \
        }                                                                      \
    } while (0)

static inline double test_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* MOEQ_TEST_ONLY=name runs that test alone (to look at one test on a
 * machine with little time); the others are neither run nor counted. */
static inline int test_selected(const char *name)
{
    const char *only = getenv("MOEQ_TEST_ONLY");
    return !only || !*only || !strcmp(only, name);
}

/* Runs one test and says how it went, with its wall time (the GPU tests
 * must fit a device budget); stdout is flushed so that a run killed by a
 * time limit still shows what finished. */
#define RUN(fn)                                                                \
    do {                                                                       \
        if (!test_selected(#fn))                                               \
            break;                                                             \
        test_failures_in_current = 0;                                          \
        double t0_ = test_now_seconds();                                       \
        fn();                                                                  \
        double dt_ = test_now_seconds() - t0_;                                 \
        if (test_failures_in_current) {                                        \
            test_failed++;                                                     \
            fflush(stdout);                                                    \
            fprintf(stderr, "FAIL %s (%.1f s)\n", #fn, dt_);                   \
        } else {                                                               \
            test_passed++;                                                     \
            printf("ok   %s (%.1f s)\n", #fn, dt_);                            \
        }                                                                      \
        fflush(stdout);                                                        \
    } while (0)

static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* A fresh empty directory under the build tree for one test's files. */
static inline const char *test_tmpdir(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "test-tmp/%s", name);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot create %s\n", path);
        exit(2);
    }
    return path;
}

/* Writes bytes to path; aborts the test program if it cannot. */
static inline void test_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

/* Deterministic xorshift PRNG for fresh random inputs; seed from the test. */
typedef struct { uint64_t s; } test_rng;
static inline uint64_t test_rng_next(test_rng *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}
/* Uniform in [-1, 1). */
static inline float test_rng_uniform(test_rng *r)
{
    return (float)((test_rng_next(r) >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

#endif
