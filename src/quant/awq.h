/* awq.h: the numeric parts of AWQ (Lin et al., "AWQ: Activation-aware
 * Weight Quantization for LLM Compression and Acceleration", 2023, section
 * 3.2), as AutoAWQ implements them (awq/quantize/quantizer.py:
 * _search_best_scale, _compute_best_clip, duo_scaling):
 *  - per input channel j, the mean |x_j| of the activations and the mean of
 *    |W[:, j]| normalised by each row group's max |W|;
 *  - scales s_j = x_mean_j^a / (w_mean_j^(1-a) + 1e-4), clamped below at
 *    1e-4 and divided by sqrt(max s * min s), for a in {0, 1/20, ..., 19/20};
 *    the caller picks the a whose pseudo-quantized block output Q(W s) / s
 *    is closest to the original's;
 *  - a clipping search per row and group over ranges shrunk to
 *    p = 1, 0.99, ..., 0.21 of the group's, scored by the linear's output
 *    error e^T H e with H = X^T X / n of the (scaled) inputs: the mean
 *    squared output error AutoAWQ measures on its sampled tokens, in closed
 *    form. AutoAWQ tries p = 1, 0.95, ..., 0.55 (n_grid 20, max_shrink 0.5);
 *    moeq tries the candidates of its --mse grid search (grid.h), which on
 *    the demo model lowered AWQ's perplexity increase by 8% (bench/RESULTS.md).
 * The pipeline (src/pipeline/quantize_awq.c) chooses the scales, folds them
 * into the preceding norm or linear and quantizes with these grids. */
#ifndef MOEQ_QUANT_AWQ_H
#define MOEQ_QUANT_AWQ_H

#include "moeq/moeq.h"
#include "quant/gptq.h"

#define MOEQ_AWQ_ALPHA_GRID 20
#define MOEQ_AWQ_CLIP_GRID 100
#define MOEQ_AWQ_CLIP_STEPS 80 /* shrink down to 0.21, as the --mse search */

/* acc[j] += sum_t w_t |x[t, j]| over rows tokens (w NULL: all 1). */
void moeq_awq_act_abs_sum(const float *x, int rows, int cols, const float *w, double *acc);

/* acc[j] += sum_r |W[r, j]| / max |W[r, group of j]| (group_size -1: the
 * whole row); a zero group adds 0. */
void moeq_awq_weight_abs_sum(const float *W, int rows, int cols, int group_size, double *acc);

/* s[cols] for alpha from the means (x_mean and w_mean already divided by
 * their counts). pow2: each s_j rounded to the nearest power of two (in
 * log2) after normalising, so that folding s into a bf16 or fp16 tensor,
 * and compensating a router that reads the same activations, is exact. */
void moeq_awq_scales(const double *x_mean, const double *w_mean, int cols, double alpha,
                     int pow2, float *s);

/* out = Q(W diag(s)) diag(s)^-1: W [rows, cols] quantized on min/max grids
 * (cfg's bits, group size, sym, scale rounding) after scaling its columns
 * by s (NULL: 1), then scaled back: the weight as the block would see it. */
void moeq_awq_pseudo_quantize(const float *W, int rows, int cols, const float *s,
                              const moeq_gptq_config *cfg, float *out);

/* Quantizes W [rows, cols] (already scaled) on grids chosen by the clipping
 * search against H [cols, cols] (the second moment of the scaled inputs);
 * H NULL: plain min/max grids (AutoAWQ does not clip q_proj and k_proj).
 * loss (optional) receives sum over rows and groups of e^T H_gg e. */
moeq_code moeq_awq_quantize(const float *W, int rows, int cols, const float *H,
                            const moeq_gptq_config *cfg, moeq_quantized *out, double *loss,
                            moeq_error *err);

#endif
