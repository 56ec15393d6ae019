/* kernels.h: the C interface of the CUDA kernels under kernels/. Each
 * launcher queues its kernel on stream and returns the launch status
 * (cudaGetLastError); errors inside a kernel surface at the next sync. The
 * host glue in src/backend/cuda checks every status. Matrices are row-major,
 * sizes are element counts; kernels know nothing of models. */
#ifndef MOEQ_KERNELS_H
#define MOEQ_KERNELS_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- util.cu */

/* *count += number of NaN/Inf among x[0..n). */
cudaError_t moeq_k_count_nonfinite(const float *x, size_t n, int *count, cudaStream_t stream);
/* Row-major H[n, n]: H[i][j] = H[j][i] for i > j (upper triangle copied down). */
cudaError_t moeq_k_mirror_upper(float *H, int n, cudaStream_t stream);
/* Row-major A[n, n]: A[i][j] = 0 for i > j. */
cudaError_t moeq_k_zero_lower(float *A, int n, cudaStream_t stream);

/* ---- hessian.cu */

/* y[r, :] = w[r] * x[r, :] for x, y [rows, n] in bf16 (is_bf16) or fp32;
 * y[r] is computed in fp32 and rounded once. */
cudaError_t moeq_k_scale_rows(const void *x, int is_bf16, const float *w, int rows, int n, void *y,
                              cudaStream_t stream);
/* *bad += number of weights that are negative or not finite. */
cudaError_t moeq_k_count_bad_weights(const float *w, int rows, int *bad, cudaStream_t stream);

/* ---- gptq_prepare.cu */

/* diag[i] = H[i][i]. */
cudaError_t moeq_k_diag(const float *H, int n, float *diag, cudaStream_t stream);
/* work[i][j] = H[perm[i]][perm[j]], with a dead column's row and column zero
 * and its diagonal 1 (as moeq_gptq_prepare). */
cudaError_t moeq_k_gptq_permute_hessian(const float *H, int n, const int32_t *perm,
                                        const uint8_t *dead, float *work, cudaStream_t stream);
/* dst = src + lambda I, both [n, n]. */
cudaError_t moeq_k_copy_add_diag(const float *src, int n, float lambda, float *dst,
                                 cudaStream_t stream);

/* ---- gptq_sweep.cu */

/* The grid of src/quant/grid.h, and what one sweep needs to know. */
typedef struct moeq_k_gptq_args {
    int rows, cols;
    int bits, sym;
    int group_size;     /* -1: one group per row */
    int static_groups;  /* groups of perm[i] / group_size, fitted before the sweep */
    int block_size;     /* lazy-update block, at most MOEQ_K_GPTQ_MAX_BLOCK */
    const int32_t *perm;/* [cols] processing order -> original column */
    const uint8_t *dead;/* [cols] */
    const float *hinv;  /* [cols, cols] upper Cholesky factor of H^-1, permuted */
    float *w;           /* [rows, cols] weights in processing order, updated */
    float *err_block;   /* [rows, block_size] scaled errors of the current block */
    uint8_t *codes_perm;/* [rows, cols] codes in processing order */
    float *scales;      /* [n_groups, rows] */
    int32_t *zeros;     /* [n_groups, rows] */
    double *loss_rows;  /* [rows] running GPTQ loss of each row */
} moeq_k_gptq_args;

enum { MOEQ_K_GPTQ_MAX_BLOCK = 128 };

/* w[r][i] = W[r][perm[i]], 0 for dead columns; *nonfinite += NaN/Inf seen. */
cudaError_t moeq_k_gptq_gather(const float *W, const moeq_k_gptq_args *a, int *nonfinite,
                               cudaStream_t stream);
/* Static groups: every (group, row) grid fitted on W in natural order. */
cudaError_t moeq_k_gptq_fit_static(const float *W, const moeq_k_gptq_args *a,
                                   cudaStream_t stream);
/* Sweeps columns [i1, i1 + nb) of every row: group fits at group starts,
 * codes, error feedback inside the block, scaled errors to err_block. The
 * rest of w is left to the caller's GEMM. */
cudaError_t moeq_k_gptq_sweep_block(const moeq_k_gptq_args *a, int i1, int nb,
                                    cudaStream_t stream);
/* codes[r][perm[i]] = codes_perm[r][i]. */
cudaError_t moeq_k_gptq_scatter_codes(const moeq_k_gptq_args *a, uint8_t *codes,
                                      cudaStream_t stream);

/* ---- layer.cu: the elementwise and row ops of a decoder layer (fp32) */

/* As cpu_rmsnorm: y = w * (x * rsqrt(mean(x^2) + eps)) row by row. */
cudaError_t moeq_k_rmsnorm(const float *x, const float *w, int rows, int dim, float eps, float *y,
                           cudaStream_t stream);
/* As cpu_silu_mul: out = gate / (1 + exp(-gate)) * up. */
cudaError_t moeq_k_silu_mul(const float *gate, const float *up, size_t n, float *out,
                            cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
