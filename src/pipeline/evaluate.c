/* evaluate.c: perplexity, KL divergence and top-1 agreement by a
 * layer-streamed forward (protocol in evaluate.h). */
#include "pipeline/evaluate.h"

#include "model/forward.h"
#include "model/weights.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

moeq_code moeq_forward_hidden(const moeq_model *model, const int32_t *tokens, size_t n_windows,
                              int seqlen, FILE *progress, float **hidden, moeq_error *err)
{
    const moeq_config *cfg = &model->cfg;
    size_t n = n_windows * (size_t)seqlen;
    float *x = malloc(sizeof(float) * n * (size_t)cfg->hidden_size);
    float *y = malloc(sizeof(float) * n * (size_t)cfg->hidden_size);
    moeq_rope_cache rope = {0};
    moeq_code rc = MOEQ_OK;
    const int tty = progress && isatty(fileno(progress));
    *hidden = NULL;
    if (!x || !y) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the activations of %zu tokens", n);
        goto done;
    }
    if ((rc = moeq_model_embed(model, tokens, n, x, err)) ||
        (rc = moeq_rope_cache_init(cfg, &rope, err)))
        goto done;
    for (int l = 0; l < cfg->num_layers; l++) {
        moeq_layer_weights lw;
        if ((rc = moeq_layer_weights_load(model, l, &lw, err)))
            goto done;
        rc = moeq_layer_forward(cfg, &lw, &rope, x, (int)n_windows, seqlen, y, NULL, err);
        moeq_layer_weights_free(&lw);
        if (rc)
            goto done;
        float *t = x;
        x = y;
        y = t;
        /* Redrawn in place on a terminal, one line per layer when piped. */
        if (progress)
            fprintf(progress, "%s  forward %s: layer %d/%d%s", tty ? "\r" : "", model->dir, l + 1,
                    cfg->num_layers, tty ? "" : "\n");
    }
    if (progress && tty)
        fprintf(progress, "\n");
    *hidden = x;
    x = NULL;
done:
    free(x);
    free(y);
    moeq_rope_cache_free(&rope);
    return rc;
}

/* log-softmax of one row in place; returns nothing, row holds log-probs. */
static void log_softmax(float *row, int v)
{
    float mx = row[0];
    for (int i = 1; i < v; i++)
        mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < v; i++)
        sum += exp((double)row[i] - mx);
    float lse = mx + (float)log(sum);
    for (int i = 0; i < v; i++)
        row[i] -= lse;
}

static int argmax(const float *row, int v)
{
    int best = 0;
    for (int i = 1; i < v; i++)
        if (row[i] > row[best])
            best = i;
    return best;
}

/* The final hidden states of model on the CPU or the CUDA devices. */
static moeq_code forward_hidden(const moeq_model *model, const int32_t *tokens, size_t windows,
                                int seqlen, const int *devices, int n_devices, FILE *progress,
                                float **hidden, moeq_error *err)
{
#ifdef MOEQ_HAVE_CUDA
    if (n_devices > 0)
        return moeq_forward_hidden_cuda(model, tokens, windows, seqlen, devices, n_devices,
                                        progress, hidden, err);
#else
    (void)devices;
    if (n_devices > 0)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "this moeq was built without the CUDA backend");
#endif
    return moeq_forward_hidden(model, tokens, windows, seqlen, progress, hidden, err);
}

moeq_code moeq_evaluate(const moeq_model *model, const moeq_model *reference,
                        const int32_t *tokens, size_t n_tokens, int seqlen, size_t max_windows,
                        const char *logits_out, FILE *progress, moeq_eval_result *result,
                        moeq_error *err)
{
    return moeq_evaluate_on(model, reference, tokens, n_tokens, seqlen, max_windows, logits_out,
                            NULL, 0, progress, result, err);
}

moeq_code moeq_evaluate_on(const moeq_model *model, const moeq_model *reference,
                           const int32_t *tokens, size_t n_tokens, int seqlen,
                           size_t max_windows, const char *logits_out, const int *devices,
                           int n_devices, FILE *progress, moeq_eval_result *result,
                           moeq_error *err)
{
    memset(result, 0, sizeof *result);
    if (seqlen < 2)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--seqlen must be at least 2 (got %d)",
                         seqlen);
    size_t windows = n_tokens / (size_t)seqlen;
    if (max_windows && windows > max_windows)
        windows = max_windows;
    if (windows == 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "%zu tokens do not fill one window of --seqlen %d", n_tokens, seqlen);
    const int vocab = model->cfg.vocab_size, hidden = model->cfg.hidden_size;
    if (reference &&
        (reference->cfg.vocab_size != vocab || reference->cfg.hidden_size != hidden))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "reference %s and model %s differ in vocabulary or hidden size",
                         reference->dir, model->dir);
    float *h = NULL, *h_ref = NULL, *logits = NULL, *ref_logits = NULL;
    moeq_head_weights head = {0}, ref_head = {0};
    FILE *lf = NULL;
    moeq_code rc;
    if ((rc = forward_hidden(model, tokens, windows, seqlen, devices, n_devices, progress, &h,
                             err)) ||
        (rc = moeq_head_weights_load(model, &head, err)))
        goto done;
    if (reference &&
        ((rc = forward_hidden(reference, tokens, windows, seqlen, devices, n_devices, progress,
                              &h_ref, err)) ||
         (rc = moeq_head_weights_load(reference, &ref_head, err))))
        goto done;
    logits = malloc(sizeof(float) * (size_t)seqlen * vocab);
    ref_logits = reference ? malloc(sizeof(float) * (size_t)seqlen * vocab) : NULL;
    if (!logits || (reference && !ref_logits)) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for logits");
        goto done;
    }
    if (logits_out && !(lf = fopen(logits_out, "wb"))) {
        rc = moeq_fail(err, MOEQ_ERR_IO, "--logits-out %s: cannot open for writing", logits_out);
        goto done;
    }
    double nll = 0, ref_nll = 0, kl = 0;
    size_t agree = 0, predicted = 0;
    for (size_t w = 0; w < windows; w++) {
        size_t off = w * (size_t)seqlen;
        const int32_t *tok = tokens + off;
        if ((rc = moeq_head_forward(&model->cfg, &head, h + off * hidden, (size_t)seqlen, logits,
                                    err)))
            goto done;
        if (lf && fwrite(logits, sizeof(float), (size_t)seqlen * vocab, lf) !=
                      (size_t)seqlen * vocab) {
            rc = moeq_fail(err, MOEQ_ERR_IO, "--logits-out %s: write failed", logits_out);
            goto done;
        }
        if (reference && (rc = moeq_head_forward(&reference->cfg, &ref_head,
                                                 h_ref + off * hidden, (size_t)seqlen,
                                                 ref_logits, err)))
            goto done;
        for (int t = 0; t + 1 < seqlen; t++) {
            float *row = logits + (size_t)t * vocab;
            int am = argmax(row, vocab);
            log_softmax(row, vocab);
            if (!isfinite(row[tok[t + 1]])) {
                rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                               "non-finite log-probability in window %zu position %d of %s", w,
                               t, model->dir);
                goto done;
            }
            nll -= row[tok[t + 1]];
            if (reference) {
                float *ref = ref_logits + (size_t)t * vocab;
                agree += argmax(ref, vocab) == am;
                log_softmax(ref, vocab);
                ref_nll -= ref[tok[t + 1]];
                double k = 0;
                for (int i = 0; i < vocab; i++)
                    k += exp((double)ref[i]) * ((double)ref[i] - row[i]);
                kl += k;
            }
            predicted++;
        }
    }
    result->windows = windows;
    result->predicted = predicted;
    result->nll = nll / (double)predicted;
    result->perplexity = exp(result->nll);
    if (reference) {
        result->has_reference = 1;
        result->ref_nll = ref_nll / (double)predicted;
        result->ref_perplexity = exp(result->ref_nll);
        result->kl = kl / (double)predicted;
        result->top1_agreement = (double)agree / (double)predicted;
    }
done:
    if (lf && fclose(lf) != 0 && rc == MOEQ_OK)
        rc = moeq_fail(err, MOEQ_ERR_IO, "--logits-out %s: write failed", logits_out);
    free(h);
    free(h_ref);
    free(logits);
    free(ref_logits);
    moeq_head_weights_free(&head);
    moeq_head_weights_free(&ref_head);
    return rc;
}
