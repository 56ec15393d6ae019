/* evaluate.h: perplexity of a checkpoint on a token stream, and the mean
 * token KL divergence and top-1 agreement of a candidate against a
 * reference checkpoint.
 *
 * Protocol: the stream is cut into non-overlapping windows of seqlen tokens
 * (a shorter tail is dropped); each window is scored on its own from its
 * first token (positions 0..seqlen-1, no carried context). Position t
 * predicts token t+1, so each window has seqlen-1 predicted positions.
 * Perplexity = exp(mean negative log-likelihood over all predicted
 * positions). KL(reference || candidate) and top-1 agreement (argmax equal)
 * are averaged over the same positions. The forward streams the model one
 * decoder layer at a time, so eval of a large model needs one layer of
 * weights plus the windows' activations. */
#ifndef MOEQ_PIPELINE_EVALUATE_H
#define MOEQ_PIPELINE_EVALUATE_H

#include "model/model.h"

#include <stdint.h>
#include <stdio.h>

typedef struct moeq_eval_result {
    size_t windows;
    size_t predicted; /* positions scored */
    double nll;       /* mean negative log-likelihood (nats) */
    double perplexity;
    int has_reference;
    double ref_nll;
    double ref_perplexity;
    double kl;        /* mean KL(reference || candidate), nats */
    double top1_agreement;
} moeq_eval_result;

/* Runs the full layer-streamed forward of model over windows of tokens
 * (n_windows x seqlen) and returns the final hidden states [n_windows *
 * seqlen, H] (before the final norm) in a new buffer. progress may be NULL. */
moeq_code moeq_forward_hidden(const moeq_model *model, const int32_t *tokens, size_t n_windows,
                              int seqlen, FILE *progress, float **hidden, moeq_error *err);

/* The same forward on CUDA devices devices[0..n_devices) (the CUDA layer
 * loop of quantize_cuda.c with nothing quantized: bf16 activations and
 * weights with fp32 accumulation, as that loop computes). CUDA builds
 * only; MOEQ_ERR_UNSUPPORTED, naming the component, for a model the CUDA
 * loop does not run. */
moeq_code moeq_forward_hidden_cuda(const moeq_model *model, const int32_t *tokens,
                                   size_t n_windows, int seqlen, const int *devices,
                                   int n_devices, FILE *progress, float **hidden, moeq_error *err);

/* Scores model (and reference, when not NULL) on tokens. logits_out, when
 * not NULL, receives model's logits as little-endian float32, windows x
 * seqlen x vocab. */
moeq_code moeq_evaluate(const moeq_model *model, const moeq_model *reference,
                        const int32_t *tokens, size_t n_tokens, int seqlen, size_t max_windows,
                        const char *logits_out, FILE *progress, moeq_eval_result *result,
                        moeq_error *err);
/* moeq_evaluate with the decoder layers on CUDA devices (n_devices > 0:
 * moeq_forward_hidden_cuda; the final norm, lm_head and the scores stay
 * on the CPU) or on the CPU (n_devices 0). */
moeq_code moeq_evaluate_on(const moeq_model *model, const moeq_model *reference,
                           const int32_t *tokens, size_t n_tokens, int seqlen,
                           size_t max_windows, const char *logits_out, const int *devices,
                           int n_devices, FILE *progress, moeq_eval_result *result,
                           moeq_error *err);

#endif
