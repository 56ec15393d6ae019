/* cuda_gptq.h: GPTQ on the GPU, the counterpart of quant/gptq.h with the
 * same split and the same results: moeq_cuda_gptq_prepare() factors one
 * Hessian (dead columns, act-order, damping raised while Cholesky fails,
 * the upper Cholesky factor of H^-1) with cuSOLVER, and
 * moeq_cuda_gptq_sweep() quantizes any number of rows against it in one
 * pass: a kernel sweeps each 128-column block for all rows (one warp per
 * row), and a cuBLAS fp32 GEMM applies the block's lazy update to the rest.
 *
 * Inside a block the arithmetic is gptq.c's, rounding for rounding; only
 * the lazy GEMM sums in another order than OpenBLAS, which can move a
 * weight across a rounding boundary now and then (the parity test states
 * the fraction of identical codes). */
#ifndef MOEQ_BACKEND_CUDA_GPTQ_H
#define MOEQ_BACKEND_CUDA_GPTQ_H

#include "backend/cuda/cuda_ctx.h"
#include "quant/gptq.h"

#include <stdint.h>

typedef struct moeq_cuda_gptq_prepared {
    int cols;
    moeq_cuda_buf hinv;       /* [cols, cols] fp32 upper Cholesky factor of H^-1, permuted */
    moeq_cuda_buf perm;       /* [cols] int32: processing order -> original column */
    moeq_cuda_buf dead;       /* [cols] uint8: 1 where H's diagonal was zero */
    int32_t *perm_host;       /* the same two, on the host */
    unsigned char *dead_host;
    int dead_columns;
    double damp_used;         /* the damp_percent that succeeded */
} moeq_cuda_gptq_prepared;

/* H [cols, cols] on the device, symmetric, not modified. As
 * moeq_gptq_prepare: NaN/Inf in H, or no positive definite H up to
 * damp_max, is MOEQ_ERR_NUMERIC. */
moeq_code moeq_cuda_gptq_prepare(moeq_cuda_ctx *ctx, const float *H, int cols,
                                 const moeq_gptq_config *cfg, moeq_cuda_gptq_prepared *prep,
                                 moeq_error *err);
/* The same for count Hessians H[i] of one size at once, with two host round
 * trips in all instead of several per matrix (damping raised for a matrix
 * that needs it costs one more each try). preps[0..count) are filled; on
 * failure none is kept and *failed (optional) names the matrix the error is
 * about (-1: none in particular). */
moeq_code moeq_cuda_gptq_prepare_many(moeq_cuda_ctx *ctx, const float *const *H, int count,
                                      int cols, const moeq_gptq_config *cfg,
                                      moeq_cuda_gptq_prepared *preps, int *failed,
                                      moeq_error *err);
/* Copies a CPU preparation to the device (a CPU solve feeding a GPU sweep). */
moeq_code moeq_cuda_gptq_prepared_upload(moeq_cuda_ctx *ctx, const moeq_gptq_prepared *host,
                                         moeq_cuda_gptq_prepared *prep, moeq_error *err);
/* A preparation on ctx's device with src's host half (column order, dead
 * columns, damping) and room for its device half (hinv, perm, dead), which
 * the caller fills: a broadcast from the GPU that prepared src. */
moeq_code moeq_cuda_gptq_prepared_mirror(moeq_cuda_ctx *ctx, const moeq_cuda_gptq_prepared *src,
                                         moeq_cuda_gptq_prepared *prep, moeq_error *err);
void moeq_cuda_gptq_prepared_free(moeq_cuda_ctx *ctx, moeq_cuda_gptq_prepared *prep);

/* A quantized weight on the device; the layout of moeq_quantized. */
typedef struct moeq_cuda_quantized {
    int rows, cols, bits, group_size, n_groups;
    moeq_cuda_buf codes;  /* [rows, cols] uint8, original column order */
    moeq_cuda_buf scales; /* [n_groups, rows] fp32, fp16-representable */
    moeq_cuda_buf zeros;  /* [n_groups, rows] int32 */
    moeq_cuda_buf g_idx;  /* [segments, cols] int32: the g_idx of each segment's rows */
    int segments, seg_rows; /* 1 and rows, unless from moeq_cuda_gptq_sweep_segments */
} moeq_cuda_quantized;

/* Quantizes W [rows, cols] fp32 on the device against prep; loss (optional)
 * receives GPTQ's objective as moeq_gptq_sweep defines it, row_loss
 * (optional, [rows]) each row's share of it. block_size must
 * be at most MOEQ_K_GPTQ_MAX_BLOCK (128) (MOEQ_ERR_UNSUPPORTED). */
moeq_code moeq_cuda_gptq_sweep(moeq_cuda_ctx *ctx, const moeq_cuda_gptq_prepared *prep,
                               const moeq_gptq_config *cfg, const float *W, int rows,
                               moeq_cuda_quantized *out, double *loss, double *row_loss,
                               moeq_error *err);
void moeq_cuda_quantized_free(moeq_cuda_ctx *ctx, moeq_cuda_quantized *q);

/* Quantizes n_seg weights of seg_rows x cols each, stacked in W, segment s
 * against preps[s] (all of cols columns), in one sweep: a block's kernel
 * launch and lazy-update GEMM (strided-batched) cover every segment. The
 * router-bypassed down_proj weights of an expert group go through here.
 * Results equal n_seg separate sweeps up to the GEMM's summation order.
 * seg_rows must be a multiple of 16. */
moeq_code moeq_cuda_gptq_sweep_segments(moeq_cuda_ctx *ctx,
                                        const moeq_cuda_gptq_prepared *const *preps, int n_seg,
                                        const moeq_gptq_config *cfg, const float *W,
                                        int seg_rows, moeq_cuda_quantized *out,
                                        double *row_loss, moeq_error *err);
/* Allocates host (moeq_quantized_alloc) and copies q into it. */
moeq_code moeq_cuda_quantized_download(moeq_cuda_ctx *ctx, const moeq_cuda_quantized *q,
                                       moeq_quantized *host, moeq_error *err);

/* The same for rows [r0, r0 + rows) only (one piece of a stacked sweep,
 * inside one segment), the codes into codes (rows x cols bytes, best
 * pinned; host borrows them) or, when NULL, into memory host owns. */
moeq_code moeq_cuda_quantized_download_rows(moeq_cuda_ctx *ctx, const moeq_cuda_quantized *q,
                                            int r0, int rows, uint8_t *codes,
                                            moeq_quantized *host, moeq_error *err);

#endif
