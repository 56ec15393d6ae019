/* fixture_run.h: what the pipeline tests do with a model directory:
 * quantize it through the writer on windows of a pseudo-random token
 * stream, and measure the KL of the result against the original on
 * pseudo-random tokens. Include after test.h. */
#ifndef MOEQ_TESTS_FIXTURE_RUN_H
#define MOEQ_TESTS_FIXTURE_RUN_H

#include "io/gptq_writer.h"
#include "model/model.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A layer loop: moeq_quantize_layers, or a test's call of the CUDA one. */
typedef moeq_code (*fixture_layer_loop)(const moeq_model *model, const moeq_calib_set *calib,
                                        const moeq_quantize_options *opt,
                                        const moeq_layer_sink *sink, moeq_error *err);

/* Quantizes model_dir into out with the layer loop `layers`, calibrated on
 * `windows` windows of `seqlen` tokens sampled (seed 7) from a stream of
 * stream_tokens pseudo-random ids (stream_seed). */
static inline moeq_code quantize_dir_with(fixture_layer_loop layers, const char *model_dir,
                                          const moeq_quantize_options *opt, const char *out,
                                          int stream_tokens, uint64_t stream_seed, int windows,
                                          int seqlen, moeq_error *err)
{
    moeq_model m;
    moeq_code rc = moeq_model_open(model_dir, NULL, &m, err);
    if (rc)
        return rc;
    int32_t *stream = malloc(sizeof(int32_t) * (size_t)stream_tokens);
    if (!stream) {
        moeq_model_close(&m);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    }
    test_rng r = {stream_seed};
    for (int i = 0; i < stream_tokens; i++)
        stream[i] = (int32_t)(test_rng_next(&r) % (uint64_t)m.cfg.vocab_size);
    moeq_calib_set set;
    if (!(rc = moeq_calib_set_sample(stream, (size_t)stream_tokens, windows, seqlen, 7, &set,
                                     err))) {
        moeq_gptq_writer w;
        if (!(rc = moeq_gptq_writer_open(&w, &m, opt, out, NULL, 0, 0, err))) {
            moeq_layer_sink sink = {moeq_gptq_writer_write_layer, moeq_gptq_writer_layer_done,
                                    &w};
            rc = layers(&m, &set, opt, &sink, err);
            if (!rc)
                rc = moeq_gptq_writer_finish(&w, NULL, err);
            moeq_gptq_writer_close(&w);
        }
        moeq_calib_set_free(&set);
    }
    free(stream);
    moeq_model_close(&m);
    if (rc)
        fprintf(stderr, "  (%s: %s)\n", model_dir, err->msg);
    return rc;
}

/* quantize_dir_with the CPU layer loop. */
static inline moeq_code quantize_dir(const char *model_dir, const moeq_quantize_options *opt,
                                     const char *out, int stream_tokens, uint64_t stream_seed,
                                     int windows, int seqlen, moeq_error *err)
{
    return quantize_dir_with(moeq_quantize_layers, model_dir, opt, out, stream_tokens,
                             stream_seed, windows, seqlen, err);
}

/* KL of the checkpoint at out against model_dir over 512 pseudo-random
 * tokens (seed) in windows of seqlen; INFINITY when either does not open. */
static inline double kl_on_random_tokens(const char *model_dir, const char *out,
                                         uint64_t seed, int seqlen)
{
    moeq_model orig, q;
    moeq_error err = {0};
    moeq_eval_result r = {0};
    if (moeq_model_open(model_dir, NULL, &orig, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return INFINITY;
    }
    if (moeq_model_open(out, NULL, &q, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        moeq_model_close(&orig);
        return INFINITY;
    }
    int32_t tokens[512];
    test_rng g = {seed};
    for (int i = 0; i < 512; i++)
        tokens[i] = (int32_t)(test_rng_next(&g) % (uint64_t)orig.cfg.vocab_size);
    if (moeq_evaluate(&q, &orig, tokens, 512, seqlen, 0, NULL, NULL, &r, &err))
        fprintf(stderr, "  %s\n", err.msg);
    moeq_model_close(&q);
    moeq_model_close(&orig);
    return r.kl;
}

/* A copy of model directory src in dst (which must exist) whose bf16
 * tensor `name` has the bits `bits` as its element `at` (0x7FC0: NaN,
 * 0x7F7F: the largest finite bf16, about 3.39e38). */
static inline void copy_poisoned(const char *src, const char *dst, const char *name, size_t at,
                                 uint16_t bits)
{
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp -r '%s'/. '%s'/", src, dst);
    CHECK(system(cmd) == 0);
    DIR *d = opendir(src);
    CHECK(d != NULL);
    int found = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors"))
            continue;
        char in[4200], out[4200];
        snprintf(in, sizeof in, "%s/%s", src, e->d_name);
        snprintf(out, sizeof out, "%s/%s", dst, e->d_name);
        st_file f;
        moeq_error err = {0};
        CHECK_INT_EQ(st_file_open(&f, in, &err), MOEQ_OK);
        int here = 0;
        for (size_t i = 0; i < f.n_tensors; i++)
            here |= !strcmp(f.tensors[i].name, name);
        if (here) {
            st_writer w;
            st_writer_init(&w);
            unsigned char *copy = NULL;
            for (size_t i = 0; i < f.n_tensors; i++) {
                const st_tensor *t = &f.tensors[i];
                const void *data = t->data;
                if (!strcmp(t->name, name)) {
                    CHECK(t->dtype == ST_BF16 && 2 * at < t->nbytes);
                    copy = malloc(t->nbytes);
                    memcpy(copy, t->data, t->nbytes);
                    memcpy(copy + 2 * at, &bits, 2); /* little-endian, as the file */
                    data = copy;
                }
                CHECK_INT_EQ(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, data,
                                           t->nbytes, &err),
                             MOEQ_OK);
            }
            CHECK_INT_EQ(st_writer_write(&w, out, &err), MOEQ_OK);
            st_writer_free(&w);
            free(copy);
            found = 1;
        }
        st_file_close(&f);
    }
    if (d)
        closedir(d);
    CHECK(found);
}

#endif
