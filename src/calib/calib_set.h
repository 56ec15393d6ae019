/* calib_set.h: the calibration windows a quantization run feeds through
 * the model: nsamples windows of seqlen tokens, chosen deterministically
 * from the documents' token stream with a seed. */
#ifndef MOEQ_CALIB_CALIB_SET_H
#define MOEQ_CALIB_CALIB_SET_H

#include "moeq/moeq.h"

#include <stdint.h>
#include <stddef.h>

typedef struct moeq_calib_set {
    int nsamples;
    int seqlen;
    int32_t *tokens;       /* [nsamples, seqlen] */
    size_t stream_tokens;  /* tokens available before sampling */
    size_t stream_windows; /* whole windows available */
} moeq_calib_set;

/* Cuts stream into non-overlapping windows of seqlen tokens and picks
 * nsamples of them with a seeded shuffle (the same seed picks the same
 * windows). Fewer whole windows than nsamples is MOEQ_ERR_INVALID_ARG,
 * saying how many there are. */
moeq_code moeq_calib_set_sample(const int32_t *stream, size_t n_tokens, int nsamples, int seqlen,
                                uint64_t seed, moeq_calib_set *set, moeq_error *err);
void moeq_calib_set_free(moeq_calib_set *set);

#endif
