/* calib_set.c: seeded sampling of calibration windows. */
#include "calib/calib_set.h"

#include <stdlib.h>
#include <string.h>

/* splitmix64: a small, well-mixed PRNG whose sequence is fixed forever, so
 * a seed names the same calibration set on every machine. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

moeq_code moeq_calib_set_sample(const int32_t *stream, size_t n_tokens, int nsamples, int seqlen,
                                uint64_t seed, moeq_calib_set *set, moeq_error *err)
{
    memset(set, 0, sizeof *set);
    if (nsamples < 1 || seqlen < 2)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--nsamples (%d) must be at least 1 and --seqlen (%d) at least 2",
                         nsamples, seqlen);
    size_t windows = n_tokens / (size_t)seqlen;
    if (windows < (size_t)nsamples)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "the calibration data has %zu tokens, %zu whole windows of --seqlen "
                         "%d, fewer than --nsamples %d: give more text or lower --nsamples or "
                         "--seqlen",
                         n_tokens, windows, seqlen, nsamples);
    size_t *order = malloc(sizeof(size_t) * windows);
    set->tokens = malloc(sizeof(int32_t) * (size_t)nsamples * seqlen);
    if (!order || !set->tokens) {
        free(order);
        free(set->tokens);
        set->tokens = NULL;
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for %d calibration windows", nsamples);
    }
    for (size_t i = 0; i < windows; i++)
        order[i] = i;
    uint64_t state = seed;
    for (size_t i = windows - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(splitmix64(&state) % (i + 1));
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int s = 0; s < nsamples; s++)
        memcpy(set->tokens + (size_t)s * seqlen, stream + order[s] * (size_t)seqlen,
               sizeof(int32_t) * (size_t)seqlen);
    free(order);
    set->nsamples = nsamples;
    set->seqlen = seqlen;
    set->stream_tokens = n_tokens;
    set->stream_windows = windows;
    return MOEQ_OK;
}

void moeq_calib_set_free(moeq_calib_set *set)
{
    free(set->tokens);
    memset(set, 0, sizeof *set);
}
