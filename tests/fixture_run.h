/* fixture_run.h: what the pipeline tests do with a model directory:
 * quantize it through the writer on windows of a pseudo-random token
 * stream, and measure the KL of the result against the original on
 * pseudo-random tokens. Include after test.h. */
#ifndef MOEQ_TESTS_FIXTURE_RUN_H
#define MOEQ_TESTS_FIXTURE_RUN_H

#include "backend/cpu/cpu_ops.h"
#include "common/fileio.h"
#include "io/gptq_writer.h"
#include "model/model.h"
#include "model/mtp.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <cjson/cJSON.h>
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

/* The JSON file `name` of the output at out (config.json, report.json)
 * parsed (the caller deletes it); NULL when it cannot be read or parsed. */
static inline cJSON *read_output_json(const char *out, const char *name)
{
    char path[2200], *text;
    moeq_error err = {0};
    snprintf(path, sizeof path, "%s/%s", out, name);
    if (moeq_read_text_file(path, 1 << 24, &text, &err))
        return NULL;
    cJSON *json = cJSON_Parse(text);
    free(text);
    return json;
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

/* The MTP block of the checkpoint at dir run on the golden windows of the
 * fixture at fixture_dir (its golden.safetensors: tokens, and mtp.hidden_in,
 * the original model's final normed hidden states, so every checkpoint gets
 * the same inputs), for n = S (T - 1) positions. */
typedef struct mtp_golden_run {
    float *block;  /* [n, hidden]: the block's output after its norm */
    float *logits; /* [n, vocab]: the drafts through lm_head */
    size_t n;
    int hidden, vocab;
} mtp_golden_run;

static inline void mtp_golden_run_free(mtp_golden_run *r)
{
    free(r->block);
    free(r->logits);
    memset(r, 0, sizeof *r);
}

/* Fills *r (freed by mtp_golden_run_free, also after a failure); an error
 * naming what failed when anything does. */
static inline moeq_code mtp_run_on_golden(const char *fixture_dir, const char *dir,
                                          mtp_golden_run *r, moeq_error *err)
{
    char gpath[4200];
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", fixture_dir);
    memset(r, 0, sizeof *r);
    moeq_model m;
    st_file g;
    moeq_mtp mtp;
    moeq_mtp_weights w;
    moeq_head_weights head;
    moeq_rope_cache rope;
    moeq_code rc;
    if ((rc = moeq_model_open(dir, NULL, &m, err)))
        return rc;
    if ((rc = st_file_open(&g, gpath, err))) {
        moeq_model_close(&m);
        return rc;
    }
    if (!(rc = moeq_mtp_open(&m, &mtp, err))) {
        if (!(rc = moeq_mtp_weights_load(&mtp, &w, err))) {
            if (!(rc = moeq_head_weights_load(&m, &head, err))) {
                if (!(rc = moeq_rope_cache_init(&m.cfg, &rope, err))) {
                    const int H = m.cfg.hidden_size, V = m.cfg.vocab_size;
                    const st_tensor *tok = st_file_find(&g, "tokens");
                    const st_tensor *hid = st_file_find(&g, "mtp.hidden_in");
                    const int S = tok ? (int)tok->shape[0] : 0, T = tok ? (int)tok->shape[1] : 0;
                    const size_t n = (size_t)S * (T > 1 ? T - 1 : 0);
                    if (!tok || tok->dtype != ST_I32 || tok->ndim != 2 || n == 0 || !hid ||
                        hid->dtype != ST_F32 ||
                        hid->nbytes != sizeof(float) * (size_t)S * T * H) {
                        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                                       "%s: tokens or mtp.hidden_in missing or mis-shaped", gpath);
                    } else {
                        float *in = malloc(sizeof(float) * n * 2 * H);
                        r->block = malloc(sizeof(float) * n * H);
                        r->logits = malloc(sizeof(float) * n * V);
                        if (!in || !r->block || !r->logits)
                            rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
                        else if (!(rc = moeq_mtp_input(&mtp, &w, (const int32_t *)tok->data,
                                                       (const float *)hid->data, S, T, in,
                                                       err)) &&
                                 !(rc = moeq_mtp_forward(&mtp, &w, &rope, in, S, T - 1,
                                                         r->block, err))) {
                            cpu_linear(r->block, (int)n, H, head.lm_head, NULL, V, r->logits);
                            r->n = n;
                            r->hidden = H;
                            r->vocab = V;
                        }
                        free(in);
                    }
                    moeq_rope_cache_free(&rope);
                }
                moeq_head_weights_free(&head);
            }
            moeq_mtp_weights_free(&w);
        }
        moeq_mtp_close(&mtp);
    }
    st_file_close(&g);
    moeq_model_close(&m);
    return rc;
}

/* What quantizing the drafter does to its drafts on the same inputs: the
 * checkpoint at out against the fixture's own, top-1 agreement (fraction)
 * and mean KL of the next-next-token distributions, over *positions
 * positions of the golden windows. 0, or -1 when either cannot be run. */
static inline int mtp_drafts_compare(const char *fixture_dir, const char *out, double *agree,
                                     double *kl, size_t *positions)
{
    moeq_error err = {0};
    mtp_golden_run ref = {0}, q = {0};
    if (mtp_run_on_golden(fixture_dir, fixture_dir, &ref, &err) ||
        mtp_run_on_golden(fixture_dir, out, &q, &err) || q.n != ref.n || q.vocab != ref.vocab) {
        fprintf(stderr, "  MTP drafts of %s: %s\n", out, err.msg);
        mtp_golden_run_free(&ref);
        mtp_golden_run_free(&q);
        return -1;
    }
    const int V = ref.vocab;
    const size_t rows = ref.n;
    size_t same = 0;
    double sum = 0;
    for (size_t r = 0; r < rows; r++) {
        float *a = ref.logits + r * V, *b = q.logits + r * V;
        int ia = 0, ib = 0;
        for (int v = 1; v < V; v++) {
            ia = a[v] > a[ia] ? v : ia;
            ib = b[v] > b[ib] ? v : ib;
        }
        same += ia == ib;
        cpu_softmax_rows(a, 1, V, a);
        cpu_softmax_rows(b, 1, V, b);
        for (int v = 0; v < V; v++)
            sum += a[v] * (log(a[v] + 1e-30) - log(b[v] + 1e-30));
    }
    *agree = (double)same / (double)rows;
    *kl = sum / (double)rows;
    *positions = rows;
    mtp_golden_run_free(&ref);
    mtp_golden_run_free(&q);
    return 0;
}

/* Exits the test program with err's message when rc says a fixture could
 * not be made (nothing a test could check would mean anything then). */
static inline void fixture_must(moeq_code rc, const moeq_error *err)
{
    if (rc) {
        fprintf(stderr, "%s\n", err->msg);
        exit(2);
    }
}

/* The checkpoint at src (its tensors and config.json) copied into dir as
 * one model.safetensors, without the tensor named `drop` and with
 * `replacement` (when not NULL) in place of the tensor of its name. */
static inline void rewrite_checkpoint(const char *src, const char *dir, const char *drop,
                                      const st_tensor *replacement)
{
    st_checkpoint c;
    moeq_error err = {0};
    fixture_must(st_checkpoint_open(&c, src, &err), &err);
    st_writer w;
    st_writer_init(&w);
    for (size_t i = 0; i < c.n_tensors; i++) {
        const st_tensor *t = c.tensors[i];
        if (!strcmp(t->name, drop))
            continue;
        if (replacement && !strcmp(t->name, replacement->name))
            t = replacement;
        fixture_must(st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes,
                                   &err),
                     &err);
    }
    char path[4200], cfg_src[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fixture_must(st_writer_write(&w, path, &err), &err);
    st_writer_free(&w);
    st_checkpoint_close(&c);
    snprintf(cfg_src, sizeof cfg_src, "%s/config.json", src);
    snprintf(path, sizeof path, "%s/config.json", dir);
    fixture_must(moeq_copy_file(cfg_src, path, &err), &err);
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
