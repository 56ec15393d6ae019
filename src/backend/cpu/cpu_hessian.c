/* cpu_hessian.c: GPTQ Hessian accumulation H += alpha * X^T X, plain and
 * row-weighted (the "weighted" expert mode of DESIGN.md: every token counts
 * for an expert in proportion to its router probability). ssyrk updates the
 * upper triangle; the lower one is then copied from it, so H stays exactly
 * symmetric for the Cholesky that follows. */
#include "backend/cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

/* Rows scaled per block in the weighted update: bounds the scratch to
 * HESSIAN_BLOCK_ROWS * n floats. */
enum { HESSIAN_BLOCK_ROWS = 256 };

static void mirror_upper(float *H, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            H[(size_t)i * n + j] = H[(size_t)j * n + i];
}

void cpu_hessian_accumulate(float *H, const float *x, int rows, int n, float alpha)
{
    if (rows > 0 && n > 0)
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, rows, alpha, x, n, 1.0f, H, n);
    mirror_upper(H, n);
}

moeq_code cpu_hessian_accumulate_weighted(float *H, const float *x, const float *w, int rows,
                                          int n, float alpha, moeq_error *err)
{
    for (int r = 0; r < rows; r++)
        if (!(w[r] >= 0.0f) || !isfinite(w[r]))
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "hessian: row weight %d is %g; weights must be finite and >= 0", r,
                             (double)w[r]);
    if (rows <= 0 || n <= 0)
        return MOEQ_OK;
    int block = rows < HESSIAN_BLOCK_ROWS ? rows : HESSIAN_BLOCK_ROWS;
    float *scaled = malloc((size_t)block * n * sizeof *scaled);
    if (!scaled)
        return moeq_fail(err, MOEQ_ERR_OOM, "hessian: out of memory for %d x %d scratch", block, n);
    /* x^T diag(w) x = (diag(sqrt w) x)^T (diag(sqrt w) x), so ssyrk applies. */
    for (int r0 = 0; r0 < rows; r0 += block) {
        int nr = rows - r0 < block ? rows - r0 : block;
        for (int r = 0; r < nr; r++) {
            float s = sqrtf(w[r0 + r]);
            const float *xr = x + (size_t)(r0 + r) * n;
            float *sr = scaled + (size_t)r * n;
            for (int j = 0; j < n; j++)
                sr[j] = xr[j] * s;
        }
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, nr, alpha, scaled, n, 1.0f, H, n);
    }
    free(scaled);
    mirror_upper(H, n);
    return MOEQ_OK;
}
