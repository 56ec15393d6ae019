/* gptq.c: GPTQ on the CPU (Frantar et al. 2022, Algorithm 1), with the
 * refinements the reference implementations (IST-DASLab gptq, AutoGPTQ,
 * GPTQModel) added and their users rely on:
 *  - dead inputs: a zero Hessian diagonal gets H_cc = 1 and W[:, c] = 0;
 *  - act-order: columns processed by decreasing H_cc, g_idx records each
 *    column's group; static groups fit the grids on the unmodified W first;
 *  - damping lambda = damp * mean(diag H), raised while Cholesky fails;
 *  - H^-1 through Cholesky, then its upper Cholesky factor U (H^-1 = U^T U),
 *    whose rows drive the error feedback;
 *  - lazy batch updates: inside a block of B columns the error is fed back
 *    column by column; the rest of W is updated once per block by a GEMM.
 * Rows never interact, so the sweep runs row by row inside a block. */
#include "quant/gptq.h"

#include "quant/grid.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

moeq_gptq_config moeq_gptq_default_config(void)
{
    moeq_gptq_config c = {
        .bits = 4,
        .group_size = 128,
        .sym = 1,
        .desc_act = 0,
        .static_groups = 0,
        .mse = 2.4,
        .damp_percent = 0.01,
        .damp_increment = 0.0025,
        .damp_max = 1.0,
        .block_size = 128,
    };
    return c;
}

moeq_code moeq_gptq_check_config(const moeq_gptq_config *c, int cols, moeq_error *err)
{
    if (c->bits != 2 && c->bits != 3 && c->bits != 4 && c->bits != 8)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--bits %d is not supported (2, 3, 4 or 8)",
                         c->bits);
    if (c->group_size != -1 && c->group_size <= 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--group-size %d must be -1 (per row) or positive", c->group_size);
    if (c->group_size > 0 && cols % c->group_size)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--group-size %d does not divide the input dimension %d", c->group_size,
                         cols);
    if (!(c->damp_percent > 0 && c->damp_percent < 1))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--damp-percent %g must be in (0, 1)",
                         c->damp_percent);
    if (!(c->damp_increment > 0) || !(c->damp_max >= c->damp_percent))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "damping increment %g must be positive and the maximum %g at least "
                         "--damp-percent",
                         c->damp_increment, c->damp_max);
    if (!(c->mse == 0.0 || (c->mse >= 1.0 && c->mse <= 8.0)))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "--mse %g must be 0 (off) or a norm in [1, 8] (e.g. 2.4)", c->mse);
    if (c->block_size <= 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "block size %d must be positive",
                         c->block_size);
    return MOEQ_OK;
}

/* Sort key for act-order: decreasing diagonal, ties by column index (a
 * stable descending argsort). */
typedef struct {
    float diag;
    int32_t col;
} diag_entry;

static int by_decreasing_diag(const void *a, const void *b)
{
    const diag_entry *x = a, *y = b;
    if (x->diag != y->diag)
        return x->diag > y->diag ? -1 : 1;
    return x->col - y->col;
}

int moeq_gptq_column_order(const float *diag, int cols, int desc_act, unsigned char *dead,
                           int32_t *perm)
{
    diag_entry *order = malloc(sizeof(diag_entry) * (size_t)(cols > 0 ? cols : 1));
    if (!order)
        return -1;
    int n_dead = 0;
    for (int c = 0; c < cols; c++) {
        dead[c] = diag[c] == 0.0f;
        n_dead += dead[c];
        order[c] = (diag_entry){dead[c] ? 1.0f : diag[c], c};
    }
    if (desc_act)
        qsort(order, (size_t)cols, sizeof *order, by_decreasing_diag);
    for (int i = 0; i < cols; i++)
        perm[i] = order[i].col;
    free(order);
    return n_dead;
}

/* hinv <- upper Cholesky factor of (Hp + lambda I)^-1, where Hp is the
 * permuted H in work; returns 0 on success, the LAPACK info otherwise. */
static int factor_inverse(const float *work, int n, double lambda, float *hinv)
{
    memcpy(hinv, work, sizeof(float) * (size_t)n * n);
    for (int i = 0; i < n; i++)
        hinv[(size_t)i * n + i] += (float)lambda;
    /* Row-major lower = column-major upper; LAPACKE handles the layout. */
    int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', n, hinv, n);
    if (info)
        return info;
    info = LAPACKE_spotri(LAPACK_ROW_MAJOR, 'L', n, hinv, n);
    if (info)
        return info;
    for (int i = 0; i < n; i++) /* mirror the lower triangle up */
        for (int j = i + 1; j < n; j++)
            hinv[(size_t)i * n + j] = hinv[(size_t)j * n + i];
    info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', n, hinv, n);
    if (info)
        return info;
    for (int i = 0; i < n; i++) /* keep only U */
        for (int j = 0; j < i; j++)
            hinv[(size_t)i * n + j] = 0.0f;
    return 0;
}

moeq_code moeq_gptq_prepare(const float *H, int cols, const moeq_gptq_config *cfg,
                            moeq_gptq_prepared *prep, moeq_error *err)
{
    memset(prep, 0, sizeof *prep);
    moeq_code rc = moeq_gptq_check_config(cfg, cols, err);
    if (rc)
        return rc;
    size_t nn = (size_t)cols * cols;
    for (size_t i = 0; i < nn; i++)
        if (!isfinite(H[i]))
            return moeq_fail(err, MOEQ_ERR_NUMERIC,
                             "Hessian holds a non-finite value at (%zu, %zu)", i / (size_t)cols,
                             i % (size_t)cols);
    prep->cols = cols;
    prep->perm = malloc(sizeof(int32_t) * (size_t)cols);
    prep->dead = calloc((size_t)cols, 1);
    prep->hinv = malloc(sizeof(float) * nn);
    float *work = malloc(sizeof(float) * nn);
    float *diag = calloc((size_t)cols, sizeof(float));
    if (!prep->perm || !prep->dead || !prep->hinv || !work || !diag) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for a %d x %d Hessian", cols, cols);
        goto done;
    }
    for (int c = 0; c < cols; c++)
        diag[c] = H[(size_t)c * cols + c];
    prep->dead_columns = moeq_gptq_column_order(diag, cols, cfg->desc_act, prep->dead, prep->perm);
    if (prep->dead_columns < 0) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for a %d x %d Hessian", cols, cols);
        goto done;
    }
    double mean_diag = 0;
    for (int i = 0; i < cols; i++) {
        int ci = prep->perm[i];
        for (int j = 0; j < cols; j++) {
            int cj = prep->perm[j];
            /* A dead column's row and column stay zero but its diagonal
             * becomes 1, so H stays invertible and W's column is zeroed. */
            float h = prep->dead[ci] || prep->dead[cj] ? 0.0f : H[(size_t)ci * cols + cj];
            work[(size_t)i * cols + j] = ci == cj && prep->dead[ci] ? 1.0f : h;
        }
        mean_diag += work[(size_t)i * cols + i];
    }
    mean_diag /= cols;
    for (double damp = cfg->damp_percent;; damp += cfg->damp_increment) {
        if (damp > cfg->damp_max + 1e-12) {
            rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                           "Hessian is not positive definite even with damping %.4g of its "
                           "mean diagonal (%.4g)",
                           cfg->damp_max, mean_diag);
            goto done;
        }
        if (factor_inverse(work, cols, damp * mean_diag, prep->hinv) == 0) {
            prep->damp_used = damp;
            break;
        }
    }
done:
    free(work);
    free(diag);
    if (rc)
        moeq_gptq_prepared_free(prep);
    return rc;
}

void moeq_gptq_prepared_free(moeq_gptq_prepared *prep)
{
    free(prep->perm);
    free(prep->hinv);
    free(prep->dead);
    memset(prep, 0, sizeof *prep);
}

moeq_code moeq_quantized_alloc(moeq_quantized *q, int rows, int cols, int bits, int group_size,
                               moeq_error *err)
{
    return moeq_quantized_alloc_codes_in(q, rows, cols, bits, group_size, NULL, err);
}

moeq_code moeq_quantized_alloc_codes_in(moeq_quantized *q, int rows, int cols, int bits,
                                        int group_size, uint8_t *codes, moeq_error *err)
{
    memset(q, 0, sizeof *q);
    q->rows = rows;
    q->cols = cols;
    q->bits = bits;
    q->group_size = group_size;
    q->n_groups = group_size > 0 ? cols / group_size : 1;
    q->codes_borrowed = codes != NULL;
    q->codes = codes ? codes : malloc((size_t)rows * cols);
    q->scales = malloc(sizeof(float) * (size_t)q->n_groups * rows);
    q->zeros = malloc(sizeof(int32_t) * (size_t)q->n_groups * rows);
    q->g_idx = malloc(sizeof(int32_t) * (size_t)cols);
    if (!q->codes || !q->scales || !q->zeros || !q->g_idx) {
        moeq_quantized_free(q);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for a %d x %d quantized weight", rows,
                         cols);
    }
    return MOEQ_OK;
}

void moeq_quantized_free(moeq_quantized *q)
{
    if (!q->codes_borrowed)
        free(q->codes);
    free(q->scales);
    free(q->zeros);
    free(q->g_idx);
    memset(q, 0, sizeof *q);
}

void moeq_quantized_dequantize(const moeq_quantized *q, float *w)
{
    for (int r = 0; r < q->rows; r++)
        for (int c = 0; c < q->cols; c++) {
            size_t gi = (size_t)q->g_idx[c] * q->rows + r;
            moeq_grid g = {q->scales[gi], q->zeros[gi]};
            w[(size_t)r * q->cols + c] = moeq_grid_value(g, q->codes[(size_t)r * q->cols + c]);
        }
}

/* Group of the column processed at position i: natural-order groups fitted
 * up front (static) or groups of the processing order (dynamic). */
static int group_of(const moeq_gptq_prepared *p, const moeq_gptq_config *cfg, int i)
{
    if (cfg->group_size <= 0)
        return 0;
    return cfg->static_groups ? p->perm[i] / cfg->group_size : i / cfg->group_size;
}

moeq_code moeq_gptq_sweep(const moeq_gptq_prepared *p, const moeq_gptq_config *cfg,
                          const float *W, int rows, moeq_quantized *out, double *loss,
                          moeq_error *err)
{
    const int cols = p->cols, gs = cfg->group_size, B = cfg->block_size;
    const int32_t maxq = (1 << cfg->bits) - 1;
    moeq_code rc = moeq_quantized_alloc(out, rows, cols, cfg->bits, gs, err);
    if (rc)
        return rc;
    float *w = malloc(sizeof(float) * (size_t)rows * cols);  /* permuted, updated */
    float *e = malloc(sizeof(float) * (size_t)rows * B);     /* scaled errors of a block */
    float *w_block0 = malloc(sizeof(float) * (size_t)rows * B); /* a block before its sweep */
    uint8_t *codes = malloc((size_t)rows * cols);            /* permuted order */
    float *block_start = malloc(sizeof(float) * (size_t)(gs > 0 ? gs : 1));
    if (!w || !e || !w_block0 || !codes || !block_start) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for GPTQ on %d x %d", rows, cols);
        goto done;
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++) {
            float v = W[(size_t)r * cols + p->perm[i]];
            if (!isfinite(v)) {
                rc = moeq_fail(err, MOEQ_ERR_NUMERIC, "weight holds a non-finite value at (%d, %d)",
                               r, p->perm[i]);
                goto done;
            }
            w[(size_t)r * cols + i] = p->dead[p->perm[i]] ? 0.0f : v;
        }
    /* Static groups: every grid fitted on the original (dead-zeroed) W. */
    if (gs > 0 && cfg->static_groups) {
        float *slice = malloc(sizeof(float) * (size_t)gs);
        if (!slice) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
            goto done;
        }
        for (int g = 0; g < out->n_groups; g++)
            for (int r = 0; r < rows; r++) {
                for (int c = 0; c < gs; c++) {
                    int col = g * gs + c;
                    slice[c] = p->dead[col] ? 0.0f : W[(size_t)r * cols + col];
                }
                moeq_grid gr = moeq_grid_fit_mse(slice, gs, cfg->bits, cfg->sym, cfg->scale_bf16, (float)cfg->mse);
                out->scales[(size_t)g * rows + r] = gr.scale;
                out->zeros[(size_t)g * rows + r] = gr.zero;
            }
        free(slice);
    }
    double total_loss = 0;
    for (int i1 = 0; i1 < cols; i1 += B) {
        int i2 = i1 + B < cols ? i1 + B : cols, nb = i2 - i1;
        for (int r = 0; r < rows; r++)
            memcpy(w_block0 + (size_t)r * B, w + (size_t)r * cols + i1, sizeof(float) * (size_t)nb);
        for (int r = 0; r < rows; r++) {
            float *wr = w + (size_t)r * cols;
            moeq_grid gr = {0, 0};
            if (gs <= 0 && i1 == 0) {
                gr = moeq_grid_fit_mse(wr, cols, cfg->bits, cfg->sym, cfg->scale_bf16, (float)cfg->mse);
                out->scales[r] = gr.scale;
                out->zeros[r] = gr.zero;
            }
            for (int i = i1; i < i2; i++) {
                int g = group_of(p, cfg, i);
                if (gs > 0 && !cfg->static_groups && i % gs == 0) {
                    /* Dynamic groups are fitted on the weights as the
                     * previous blocks left them, without this block's
                     * in-block updates, as the reference implementations
                     * do (they fit on W while updating a copy of the
                     * block); with group_size == block_size the two agree. */
                    for (int c = 0; c < gs; c++)
                        block_start[c] = i + c < i2 ? w_block0[(size_t)r * B + (i - i1) + c]
                                                    : wr[i + c];
                    gr = moeq_grid_fit_mse(block_start, gs, cfg->bits, cfg->sym, cfg->scale_bf16, (float)cfg->mse);
                    out->scales[(size_t)g * rows + r] = gr.scale;
                    out->zeros[(size_t)g * rows + r] = gr.zero;
                } else {
                    gr.scale = out->scales[(size_t)g * rows + r];
                    gr.zero = out->zeros[(size_t)g * rows + r];
                }
                float d = p->hinv[(size_t)i * cols + i];
                int32_t q = moeq_grid_code(gr, wr[i], maxq);
                float err_i = (wr[i] - moeq_grid_value(gr, q)) / d;
                codes[(size_t)r * cols + i] = (uint8_t)q;
                total_loss += 0.5 * (double)err_i * err_i;
                const float *u = p->hinv + (size_t)i * cols;
                for (int j = i + 1; j < i2; j++)
                    wr[j] -= err_i * u[j];
                e[(size_t)r * B + (i - i1)] = err_i;
            }
        }
        /* W[:, i2:] -= E[:, :nb] U[i1:i2, i2:] */
        if (i2 < cols)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, nb, -1.0f, e,
                        B, p->hinv + (size_t)i1 * cols + i2, cols, 1.0f, w + i2, cols);
    }
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++)
            out->codes[(size_t)r * cols + p->perm[i]] = codes[(size_t)r * cols + i];
    for (int i = 0; i < cols; i++)
        out->g_idx[p->perm[i]] = group_of(p, cfg, i);
    if (loss)
        *loss = total_loss;
done:
    free(w);
    free(e);
    free(w_block0);
    free(codes);
    free(block_start);
    if (rc)
        moeq_quantized_free(out);
    return rc;
}

moeq_code moeq_rtn_quantize(const float *W, int rows, int cols, const moeq_gptq_config *cfg,
                            moeq_quantized *out, moeq_error *err)
{
    moeq_code rc = moeq_gptq_check_config(cfg, cols, err);
    if (rc || (rc = moeq_quantized_alloc(out, rows, cols, cfg->bits, cfg->group_size, err)))
        return rc;
    const int gs = cfg->group_size > 0 ? cfg->group_size : cols;
    const int32_t maxq = (1 << cfg->bits) - 1;
    for (int c = 0; c < cols; c++)
        out->g_idx[c] = c / gs;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < out->n_groups; g++) {
            const float *x = W + (size_t)r * cols + (size_t)g * gs;
            moeq_grid gr = moeq_grid_fit_mse(x, gs, cfg->bits, cfg->sym, cfg->scale_bf16, (float)cfg->mse);
            out->scales[(size_t)g * rows + r] = gr.scale;
            out->zeros[(size_t)g * rows + r] = gr.zero;
            for (int c = 0; c < gs; c++)
                out->codes[(size_t)r * cols + (size_t)g * gs + c] =
                    (uint8_t)moeq_grid_code(gr, x[c], maxq);
        }
    return MOEQ_OK;
}
