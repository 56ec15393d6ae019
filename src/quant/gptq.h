/* gptq.h: GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization
 * for Generative Pre-trained Transformers", 2022, Algorithm 1) on the CPU.
 *
 * The work is split in two so that every weight sharing a Hessian shares
 * its factorisation: moeq_gptq_prepare() takes H = (2/n) sum x x^T once
 * (dead columns, act-order permutation, damping, Cholesky of the inverse)
 * and moeq_gptq_sweep() quantizes any number of weight rows against it. Rows
 * are independent in GPTQ, so the gate_proj and up_proj rows of every expert
 * of a layer (router bypassed: one shared Hessian) go through one sweep. */
#ifndef MOEQ_QUANT_GPTQ_H
#define MOEQ_QUANT_GPTQ_H

#include "moeq/moeq.h"

#include <stdint.h>

typedef struct moeq_gptq_config {
    int bits;               /* 2, 3, 4 or 8 */
    int group_size;         /* -1 (one group per row) or a divisor of the input dim */
    int sym;                /* symmetric grid (zero fixed at 2^(bits-1)) */
    int desc_act;           /* act-order: columns by decreasing Hessian diagonal */
    int static_groups;      /* with desc_act: groups fitted on the original
                             * weights in natural column order, before the sweep */
    double mse;             /* > 0: clipping search with this norm (grid.h), 0: min/max grids */
    int scale_bf16;         /* scales exact in bf16 as well as fp16 (grid.h); set
                             * from the output format and the model's dtype */
    double damp_percent;    /* damping, a fraction of the mean diagonal */
    double damp_increment;  /* added to damp_percent while Cholesky fails */
    double damp_max;        /* give up (MOEQ_ERR_NUMERIC) past this fraction */
    int block_size;         /* columns per lazy-update block (128) */
} moeq_gptq_config;

/* 4 bits, group 128, symmetric, act-order off, block 128, clipping search
 * with norm 2.4 (bench/RESULTS.md: on the demo model it lowers GPTQ's
 * perplexity increase from 75% to 60% of RTN's at 4 bits, 71% to 44% at 3);
 * damping 0.01 of
 * the mean diagonal (the GPTQ paper's and AutoGPTQ's default), raised by
 * 0.0025 (GPTQModel's auto-increment step) while Cholesky fails, up to 1. */
moeq_gptq_config moeq_gptq_default_config(void);

/* Checks bits, group size (against cols), damping and block size. */
moeq_code moeq_gptq_check_config(const moeq_gptq_config *cfg, int cols, moeq_error *err);

typedef struct moeq_gptq_prepared {
    int cols;
    int32_t *perm;      /* [cols] processing order -> original column */
    float *hinv;        /* [cols, cols] upper Cholesky factor of H^-1, permuted */
    unsigned char *dead;/* [cols] 1 where H's diagonal was zero */
    int dead_columns;
    double damp_used;   /* the damp_percent that succeeded */
} moeq_gptq_prepared;

/* Marks dead columns (zero diagonal) in dead[cols] and fills perm[cols] with
 * the processing order: decreasing diagonal with ties by column when
 * desc_act (dead columns count as diagonal 1), else natural order. Returns
 * the number of dead columns, or -1 when out of memory. Shared by the CPU
 * and CUDA preparations so that both pick the same order. */
int moeq_gptq_column_order(const float *diag, int cols, int desc_act, unsigned char *dead,
                           int32_t *perm);

/* H is [cols, cols], symmetric, and is not modified. NaN/Inf in H, or an H
 * that stays not positive definite up to damp_max, is MOEQ_ERR_NUMERIC. */
moeq_code moeq_gptq_prepare(const float *H, int cols, const moeq_gptq_config *cfg,
                            moeq_gptq_prepared *prep, moeq_error *err);
void moeq_gptq_prepared_free(moeq_gptq_prepared *prep);

/* One quantized weight [rows, cols]; codes in the original column order. */
typedef struct moeq_quantized {
    int rows, cols, bits, group_size, n_groups;
    uint8_t *codes;  /* [rows, cols], each in [0, 2^bits) */
    float *scales;   /* [n_groups, rows], fp16-representable */
    int32_t *zeros;  /* [n_groups, rows] */
    int32_t *g_idx;  /* [cols]: group of each input column */
    int codes_borrowed; /* codes belong to someone else: moeq_quantized_free leaves them */
} moeq_quantized;

moeq_code moeq_quantized_alloc(moeq_quantized *q, int rows, int cols, int bits, int group_size,
                               moeq_error *err);
/* The same with codes (NULL: allocated) in the caller's memory, which must
 * outlive q: the CUDA loop keeps them in a pinned buffer per layer. */
moeq_code moeq_quantized_alloc_codes_in(moeq_quantized *q, int rows, int cols, int bits,
                                        int group_size, uint8_t *codes, moeq_error *err);
void moeq_quantized_free(moeq_quantized *q);
/* W^ [rows, cols] = scales[g_idx[c], r] * (codes[r, c] - zeros[g_idx[c], r]) */
void moeq_quantized_dequantize(const moeq_quantized *q, float *w);

/* Quantizes W [rows, cols] against prep. loss (optional) receives GPTQ's
 * objective sum_r sum_c (w - q)^2 / [H^-1]_cc / 2, the paper's error. */
moeq_code moeq_gptq_sweep(const moeq_gptq_prepared *prep, const moeq_gptq_config *cfg,
                          const float *W, int rows, moeq_quantized *out, double *loss,
                          moeq_error *err);

/* Round-to-nearest on the same grid and groups (the baseline). */
moeq_code moeq_rtn_quantize(const float *W, int rows, int cols, const moeq_gptq_config *cfg,
                            moeq_quantized *out, moeq_error *err);

#endif
