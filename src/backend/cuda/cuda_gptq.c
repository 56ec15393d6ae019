/* cuda_gptq.c: host glue of GPTQ on the GPU (see cuda_gptq.h): the
 * preparation through cuSOLVER and the sweep as block kernels alternating
 * with cuBLAS lazy-update GEMMs, all queued on the context's stream.
 *
 * Layout: the factors are kept row-major as gptq.c keeps them. A row-major
 * [n, n] buffer is the column-major transpose, so cuSOLVER's LOWER factor L
 * (A = L L^T, column-major) reads row-major as U = L^T with A = U^T U: the
 * upper factor gptq.c gets from LAPACKE's row-major 'U'. */
#include "backend/cuda/cuda_gptq.h"

#include "kernels.h"
#include "quant/grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MOEQ_K_GRID_MSE_GRID == MOEQ_GRID_MSE_GRID &&
                   MOEQ_K_GRID_MSE_STEPS == MOEQ_GRID_MSE_STEPS,
               "the CUDA clipping search must try the candidates grid.h names");

/* Queues on lane l: hinv <- upper Cholesky factor of (work + lambda I)^-1
 * (row-major), with no host round trip; info[0..2] (device) receive the
 * devInfo of the three factorisations: all zero when the matrix was
 * positive definite. */
static moeq_code factor_inverse(moeq_cuda_solver_lane *l, const float *work, int n,
                                float lambda, float *hinv, int *info, moeq_error *err)
{
    const cublasFillMode_t lower = CUBLAS_FILL_MODE_LOWER;
    float *ws = l->workspace.ptr;
    int lwork = (int)(l->workspace.bytes / sizeof(float));
    moeq_code rc;
    if ((rc = MOEQ_CU(moeq_k_copy_add_diag(work, n, lambda, hinv, l->stream))) ||
        (rc = MOEQ_CUSOLVER(cusolverDnSpotrf(l->cusolver, lower, n, hinv, n, ws, lwork,
                                             info))) ||
        (rc = MOEQ_CUSOLVER(cusolverDnSpotri(l->cusolver, lower, n, hinv, n, ws, lwork,
                                             info + 1))))
        return rc;
    /* potri leaves the inverse in the column-major lower = row-major upper
     * triangle; make it whole, then factor it again. After a failed first
     * factorisation these steps run on garbage; info[0] says so. */
    if ((rc = MOEQ_CU(moeq_k_mirror_upper(hinv, n, l->stream))) ||
        (rc = MOEQ_CUSOLVER(cusolverDnSpotrf(l->cusolver, lower, n, hinv, n, ws, lwork,
                                             info + 2))))
        return rc;
    return MOEQ_CU(moeq_k_zero_lower(hinv, n, l->stream));
}

static moeq_code alloc_prepared(moeq_cuda_ctx *ctx, int cols, moeq_cuda_gptq_prepared *prep,
                                moeq_error *err)
{
    memset(prep, 0, sizeof *prep);
    prep->cols = cols;
    prep->perm_host = malloc(sizeof(int32_t) * (size_t)cols);
    prep->dead_host = calloc((size_t)cols, 1);
    if (!prep->perm_host || !prep->dead_host)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for a %d-column GPTQ preparation",
                         cols);
    moeq_code rc;
    if ((rc = moeq_cuda_alloc(ctx, &prep->hinv, sizeof(float) * (size_t)cols * cols,
                              "GPTQ inverse Hessian factor", err)) ||
        (rc = moeq_cuda_alloc(ctx, &prep->perm, sizeof(int32_t) * (size_t)cols,
                              "GPTQ permutation", err)) ||
        (rc = moeq_cuda_alloc(ctx, &prep->dead, (size_t)cols, "GPTQ dead columns", err)))
        return rc;
    return MOEQ_OK;
}

moeq_code moeq_cuda_gptq_prepare(moeq_cuda_ctx *ctx, const float *H, int cols,
                                 const moeq_gptq_config *cfg, moeq_cuda_gptq_prepared *prep,
                                 moeq_error *err)
{
    return moeq_cuda_gptq_prepare_many(ctx, &H, 1, cols, cfg, prep, NULL, err);
}

moeq_code moeq_cuda_gptq_prepare_many(moeq_cuda_ctx *ctx, const float *const *H, int count,
                                      int cols, const moeq_gptq_config *cfg,
                                      moeq_cuda_gptq_prepared *preps, int *failed,
                                      moeq_error *err)
{
    for (int i = 0; i < count; i++)
        memset(&preps[i], 0, sizeof preps[i]);
    if (failed)
        *failed = -1;
    moeq_code rc = moeq_gptq_check_config(cfg, cols, err);
    if (rc || count < 1)
        return rc;
    const size_t nn = (size_t)cols * cols;
    int bad = -1; /* the matrix an error is about */
    moeq_cuda_buf counts = {0}, diag = {0}, work = {0}, info = {0};
    float *diag_host = malloc(sizeof(float) * (size_t)cols * count);
    int *counts_host = malloc(sizeof(int) * (size_t)count);
    int *info_host = malloc(sizeof(int) * 3 * (size_t)count);
    double *mean_diag = malloc(sizeof(double) * (size_t)count);
    if (!diag_host || !counts_host || !info_host || !mean_diag) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for %d Hessians of %d x %d", count,
                       cols, cols);
        goto done;
    }
    for (int i = 0; i < count && !rc; i++)
        rc = alloc_prepared(ctx, cols, &preps[i], err);
    if (rc ||
        (rc = moeq_cuda_alloc(ctx, &counts, sizeof(int) * (size_t)count, "non-finite counts",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &diag, sizeof(float) * (size_t)cols * count,
                              "Hessian diagonals", err)) ||
        (rc = moeq_cuda_alloc(ctx, &work, sizeof(float) * nn * count, "permuted Hessians",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &info, sizeof(int) * 3 * (size_t)count, "cuSOLVER infos",
                              err)) ||
        (rc = MOEQ_CU(cudaMemsetAsync(counts.ptr, 0, counts.bytes, ctx->stream))))
        goto done;
    /* One round trip for every matrix's checks and diagonal. */
    for (int i = 0; i < count && !rc; i++)
        if (!(rc = MOEQ_CU(moeq_k_count_nonfinite(H[i], nn, (int *)counts.ptr + i,
                                                  ctx->stream))))
            rc = MOEQ_CU(moeq_k_diag(H[i], cols, (float *)diag.ptr + (size_t)i * cols,
                                     ctx->stream));
    if (rc || (rc = moeq_cuda_download(ctx, counts_host, counts.ptr, counts.bytes, err)) ||
        (rc = moeq_cuda_download(ctx, diag_host, diag.ptr, diag.bytes, err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        goto done;
    for (int i = 0; i < count; i++)
        if (counts_host[i]) {
            bad = i;
            rc = moeq_fail(err, MOEQ_ERR_NUMERIC, "Hessian %d x %d holds %d non-finite values",
                           cols, cols, counts_host[i]);
            goto done;
        }
    int lwork_potrf = 0, lwork_potri = 0;
    if ((rc = MOEQ_CUSOLVER(cusolverDnSpotrf_bufferSize(ctx->lanes[0].cusolver,
                                                        CUBLAS_FILL_MODE_LOWER, cols,
                                                        preps[0].hinv.ptr, cols,
                                                        &lwork_potrf))) ||
        (rc = MOEQ_CUSOLVER(cusolverDnSpotri_bufferSize(ctx->lanes[0].cusolver,
                                                        CUBLAS_FILL_MODE_LOWER,
                                                        cols, preps[0].hinv.ptr, cols,
                                                        &lwork_potri))) ||
        (rc = moeq_cuda_solver_workspace(
             ctx, sizeof(float) * (size_t)(lwork_potrf > lwork_potri ? lwork_potrf : lwork_potri),
             err)))
        goto done;
    /* Column order and the permuted copies on the stream, then every first
     * attempt spread over the lanes. */
    for (int i = 0; i < count; i++) {
        moeq_cuda_gptq_prepared *p = &preps[i];
        const float *d = diag_host + (size_t)i * cols;
        p->dead_columns = moeq_gptq_column_order(d, cols, cfg->desc_act, p->dead_host,
                                                 p->perm_host);
        if (p->dead_columns < 0) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for a %d x %d Hessian", cols, cols);
            goto done;
        }
        double m = 0; /* summed in processing order, as gptq.c does */
        for (int c = 0; c < cols; c++)
            m += p->dead_host[p->perm_host[c]] ? 1.0f : d[p->perm_host[c]];
        mean_diag[i] = m / cols;
        float *work_i = (float *)work.ptr + nn * i;
        if ((rc = moeq_cuda_upload(ctx, p->perm.ptr, p->perm_host, sizeof(int32_t) * (size_t)cols,
                                   err)) ||
            (rc = moeq_cuda_upload(ctx, p->dead.ptr, p->dead_host, (size_t)cols, err)) ||
            (rc = MOEQ_CU(moeq_k_gptq_permute_hessian(H[i], cols, p->perm.ptr, p->dead.ptr,
                                                      work_i, ctx->stream))))
            goto done;
        p->damp_used = cfg->damp_percent;
    }
    if ((rc = moeq_cuda_lanes_begin(ctx, err)))
        goto done;
    for (int i = 0; i < count && !rc; i++)
        rc = factor_inverse(&ctx->lanes[i % MOEQ_CUDA_SOLVER_LANES], (float *)work.ptr + nn * i,
                            cols, (float)(cfg->damp_percent * mean_diag[i]), preps[i].hinv.ptr,
                            (int *)info.ptr + 3 * i, err);
    /* The stream waits for the lanes even after a failed launch: nothing
     * may be freed under work still queued there. */
    moeq_code lanes_rc = moeq_cuda_lanes_end(ctx, err);
    if (rc || (rc = lanes_rc))
        goto done;
    if ((rc = moeq_cuda_download(ctx, info_host, info.ptr, info.bytes, err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        goto done;
    /* A matrix that was not positive definite: more damping, one try at a
     * time, as gptq.c does. */
    for (int i = 0; i < count; i++) {
        int *in = info_host + 3 * i;
        for (double damp = cfg->damp_percent; in[0] || in[1] || in[2];) {
            damp += cfg->damp_increment;
            if (damp > cfg->damp_max + 1e-12) {
                bad = i;
                rc = moeq_fail(err, MOEQ_ERR_NUMERIC,
                               "Hessian is not positive definite even with damping %.4g of its "
                               "mean diagonal (%.4g)",
                               cfg->damp_max, mean_diag[i]);
                goto done;
            }
            if ((rc = moeq_cuda_lanes_begin(ctx, err)))
                goto done;
            rc = factor_inverse(&ctx->lanes[0], (float *)work.ptr + nn * i, cols,
                                (float)(damp * mean_diag[i]), preps[i].hinv.ptr,
                                (int *)info.ptr + 3 * i, err);
            lanes_rc = moeq_cuda_lanes_end(ctx, err);
            if (rc || (rc = lanes_rc) ||
                (rc = moeq_cuda_download(ctx, in, (int *)info.ptr + 3 * i, 3 * sizeof(int),
                                         err)) ||
                (rc = moeq_cuda_sync(ctx, err)))
                goto done;
            preps[i].damp_used = damp;
        }
    }
done:
    moeq_cuda_free(ctx, &work);
    moeq_cuda_free(ctx, &diag);
    moeq_cuda_free(ctx, &counts);
    moeq_cuda_free(ctx, &info);
    free(diag_host);
    free(counts_host);
    free(info_host);
    free(mean_diag);
    if (rc) {
        for (int i = 0; i < count; i++)
            moeq_cuda_gptq_prepared_free(ctx, &preps[i]);
        if (failed)
            *failed = bad;
    }
    return rc;
}

moeq_code moeq_cuda_gptq_prepared_upload(moeq_cuda_ctx *ctx, const moeq_gptq_prepared *host,
                                         moeq_cuda_gptq_prepared *prep, moeq_error *err)
{
    const int cols = host->cols;
    moeq_code rc = alloc_prepared(ctx, cols, prep, err);
    if (!rc) {
        memcpy(prep->perm_host, host->perm, sizeof(int32_t) * (size_t)cols);
        memcpy(prep->dead_host, host->dead, (size_t)cols);
        prep->dead_columns = host->dead_columns;
        prep->damp_used = host->damp_used;
        if (!(rc = moeq_cuda_upload(ctx, prep->hinv.ptr, host->hinv,
                                    sizeof(float) * (size_t)cols * cols, err)) &&
            !(rc = moeq_cuda_upload(ctx, prep->perm.ptr, host->perm,
                                    sizeof(int32_t) * (size_t)cols, err)) &&
            !(rc = moeq_cuda_upload(ctx, prep->dead.ptr, host->dead, (size_t)cols, err)))
            rc = moeq_cuda_sync(ctx, err);
    }
    if (rc)
        moeq_cuda_gptq_prepared_free(ctx, prep);
    return rc;
}

moeq_code moeq_cuda_gptq_prepared_mirror(moeq_cuda_ctx *ctx, const moeq_cuda_gptq_prepared *src,
                                         moeq_cuda_gptq_prepared *prep, moeq_error *err)
{
    moeq_code rc = alloc_prepared(ctx, src->cols, prep, err);
    if (rc) {
        moeq_cuda_gptq_prepared_free(ctx, prep);
        return rc;
    }
    memcpy(prep->perm_host, src->perm_host, sizeof(int32_t) * (size_t)src->cols);
    memcpy(prep->dead_host, src->dead_host, (size_t)src->cols);
    prep->dead_columns = src->dead_columns;
    prep->damp_used = src->damp_used;
    return MOEQ_OK;
}

void moeq_cuda_gptq_prepared_free(moeq_cuda_ctx *ctx, moeq_cuda_gptq_prepared *prep)
{
    moeq_cuda_free(ctx, &prep->hinv);
    moeq_cuda_free(ctx, &prep->perm);
    moeq_cuda_free(ctx, &prep->dead);
    free(prep->perm_host);
    free(prep->dead_host);
    memset(prep, 0, sizeof *prep);
}

void moeq_cuda_quantized_free(moeq_cuda_ctx *ctx, moeq_cuda_quantized *q)
{
    moeq_cuda_free(ctx, &q->codes);
    moeq_cuda_free(ctx, &q->scales);
    moeq_cuda_free(ctx, &q->zeros);
    moeq_cuda_free(ctx, &q->g_idx);
    memset(q, 0, sizeof *q);
}

static moeq_code alloc_quantized(moeq_cuda_ctx *ctx, moeq_cuda_quantized *q, int rows, int cols,
                                 int segments, const moeq_gptq_config *cfg, moeq_error *err)
{
    memset(q, 0, sizeof *q);
    q->segments = segments;
    q->seg_rows = rows / segments;
    q->rows = rows;
    q->cols = cols;
    q->bits = cfg->bits;
    q->group_size = cfg->group_size;
    q->n_groups = cfg->group_size > 0 ? cols / cfg->group_size : 1;
    size_t grid_entries = (size_t)q->n_groups * rows;
    moeq_code rc;
    if ((rc = moeq_cuda_alloc(ctx, &q->codes, (size_t)rows * cols, "GPTQ codes", err)) ||
        (rc = moeq_cuda_alloc(ctx, &q->scales, sizeof(float) * grid_entries, "GPTQ scales",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &q->zeros, sizeof(int32_t) * grid_entries, "GPTQ zeros",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &q->g_idx, sizeof(int32_t) * (size_t)cols * segments,
                              "GPTQ g_idx",
                              err)))
        moeq_cuda_quantized_free(ctx, q);
    return rc;
}

/* The sweep over n_seg segments of seg_rows rows (n_seg == 1: seg_rows is
 * rows), segment s against hinv + s cols^2, perm + s cols, dead + s cols on
 * the device, and perm_host[s] on the host. */
static moeq_code sweep_segments(moeq_cuda_ctx *ctx, const float *hinv, const int32_t *perm,
                                const uint8_t *dead, const int32_t *const *perm_host, int n_seg,
                                int seg_rows, int cols, const moeq_gptq_config *cfg,
                                const float *W, moeq_cuda_quantized *out, double *loss,
                                double *row_loss, moeq_error *err)
{
    const int rows = n_seg * seg_rows, B = cfg->block_size, gs = cfg->group_size;
    memset(out, 0, sizeof *out);
    moeq_code rc = moeq_gptq_check_config(cfg, cols, err);
    if (rc)
        return rc;
    if (B > MOEQ_K_GPTQ_MAX_BLOCK)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "GPTQ block size %d: the CUDA sweep takes at most %d columns a block", B,
                         MOEQ_K_GPTQ_MAX_BLOCK);
    moeq_cuda_buf w = {0}, err_block = {0}, codes_perm = {0}, loss_rows = {0}, count = {0};
    int32_t *g_idx = malloc(sizeof(int32_t) * (size_t)cols * n_seg);
    const int want_loss = loss || row_loss;
    double *loss_host =
        want_loss ? malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1)) : NULL;
    int nonfinite = 0;
    if (!g_idx || (want_loss && !loss_host)) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory for GPTQ on %d x %d", rows, cols);
        goto done;
    }
    if ((rc = alloc_quantized(ctx, out, rows, cols, n_seg, cfg, err)) ||
        (rc = moeq_cuda_alloc(ctx, &w, sizeof(float) * (size_t)rows * cols, "GPTQ weights",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &err_block, sizeof(float) * (size_t)rows * B,
                              "GPTQ block errors", err)) ||
        (rc = moeq_cuda_alloc(ctx, &codes_perm, (size_t)rows * cols, "GPTQ permuted codes",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &loss_rows, sizeof(double) * (size_t)rows, "GPTQ row losses",
                              err)) ||
        (rc = moeq_cuda_alloc(ctx, &count, sizeof(int), "non-finite count", err)))
        goto done;
    moeq_k_gptq_args a = {
        .rows = rows,
        .cols = cols,
        .bits = cfg->bits,
        .sym = cfg->sym,
        .group_size = gs,
        .static_groups = gs > 0 && cfg->static_groups,
        .mse = (float)cfg->mse,
        .scale_bf16 = cfg->scale_bf16,
        .block_size = B,
        .perm = perm,
        .dead = dead,
        .hinv = hinv,
        .seg_rows = n_seg > 1 ? seg_rows : 0,
        .w = w.ptr,
        .err_block = err_block.ptr,
        .codes_perm = codes_perm.ptr,
        .scales = out->scales.ptr,
        .zeros = out->zeros.ptr,
        .loss_rows = loss_rows.ptr,
    };
    if ((rc = MOEQ_CU(cudaMemsetAsync(count.ptr, 0, sizeof(int), ctx->stream))) ||
        (rc = MOEQ_CU(cudaMemsetAsync(loss_rows.ptr, 0, loss_rows.bytes, ctx->stream))) ||
        (rc = MOEQ_CU(moeq_k_gptq_gather(W, &a, count.ptr, ctx->stream))) ||
        (rc = moeq_cuda_download(ctx, &nonfinite, count.ptr, sizeof(int), err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        goto done;
    if (nonfinite) {
        rc = moeq_fail(err, MOEQ_ERR_NUMERIC, "weight %d x %d holds %d non-finite values", rows,
                       cols, nonfinite);
        goto done;
    }
    if (a.static_groups && (rc = MOEQ_CU(moeq_k_gptq_fit_static(W, &a, ctx->stream))))
        goto done;
    const float minus_one = -1.0f, one = 1.0f;
    for (int i1 = 0; i1 < cols; i1 += B) {
        int i2 = i1 + B < cols ? i1 + B : cols, nb = i2 - i1;
        if ((rc = MOEQ_CU(moeq_k_gptq_sweep_block(&a, i1, nb, ctx->stream))))
            goto done;
        /* W[:, i2:] -= E[:, :nb] U[i1:i2, i2:] (row-major), i.e. the
         * column-major W^T[i2:, :] -= U[i1:i2, i2:]^T E^T. */
        if (i2 < cols && rows > 0 &&
            (rc = MOEQ_CUBLAS(cublasSgemmStridedBatched(
                 ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, cols - i2, seg_rows, nb, &minus_one,
                 hinv + (size_t)i1 * cols + i2, cols, (long long)cols * cols, err_block.ptr, B,
                 (long long)seg_rows * B, &one, (float *)w.ptr + i2, cols,
                 (long long)seg_rows * cols, n_seg))))
            goto done;
    }
    for (int sgm = 0; sgm < n_seg; sgm++)
        for (int i = 0; i < cols; i++)
            g_idx[(size_t)sgm * cols + perm_host[sgm][i]] =
                gs <= 0 ? 0 : a.static_groups ? perm_host[sgm][i] / gs : i / gs;
    if ((rc = MOEQ_CU(moeq_k_gptq_scatter_codes(&a, out->codes.ptr, ctx->stream))) ||
        (rc = moeq_cuda_upload(ctx, out->g_idx.ptr, g_idx, out->g_idx.bytes, err)) ||
        (want_loss &&
         (rc = moeq_cuda_download(ctx, loss_host, loss_rows.ptr, loss_rows.bytes, err))) ||
        (rc = moeq_cuda_sync(ctx, err)))
        goto done;
    if (loss) {
        double total = 0;
        for (int r = 0; r < rows; r++)
            total += loss_host[r];
        *loss = total;
    }
    if (row_loss)
        memcpy(row_loss, loss_host, sizeof(double) * (size_t)rows);
done:
    moeq_cuda_free(ctx, &w);
    moeq_cuda_free(ctx, &err_block);
    moeq_cuda_free(ctx, &codes_perm);
    moeq_cuda_free(ctx, &loss_rows);
    moeq_cuda_free(ctx, &count);
    free(g_idx);
    free(loss_host);
    if (rc)
        moeq_cuda_quantized_free(ctx, out);
    return rc;
}

moeq_code moeq_cuda_gptq_sweep(moeq_cuda_ctx *ctx, const moeq_cuda_gptq_prepared *p,
                               const moeq_gptq_config *cfg, const float *W, int rows,
                               moeq_cuda_quantized *out, double *loss, double *row_loss,
                               moeq_error *err)
{
    const int32_t *perm_host = p->perm_host;
    return sweep_segments(ctx, p->hinv.ptr, p->perm.ptr, p->dead.ptr, &perm_host, 1, rows,
                          p->cols, cfg, W, out, loss, row_loss, err);
}

moeq_code moeq_cuda_gptq_sweep_segments(moeq_cuda_ctx *ctx,
                                        const moeq_cuda_gptq_prepared *const *preps, int n_seg,
                                        const moeq_gptq_config *cfg, const float *W,
                                        int seg_rows, moeq_cuda_quantized *out,
                                        double *row_loss, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    if (n_seg < 1 || seg_rows % MOEQ_K_GPTQ_SEG_ROWS_MULTIPLE)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "segmented GPTQ sweep: %d segments of %d rows (a multiple of %d)", n_seg,
                         seg_rows, MOEQ_K_GPTQ_SEG_ROWS_MULTIPLE);
    const int cols = preps[0]->cols;
    for (int s = 1; s < n_seg; s++)
        if (preps[s]->cols != cols)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "segmented GPTQ sweep: Hessians of %d and %d columns", cols,
                             preps[s]->cols);
    /* The segments' factors side by side, as the kernels index them. */
    moeq_cuda_buf hinv = {0}, perm = {0}, dead = {0};
    const int32_t **perm_host = malloc(sizeof *perm_host * (size_t)n_seg);
    const size_t nn = (size_t)cols * cols;
    moeq_code rc = perm_host ? MOEQ_OK : moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    if (!rc &&
        ((rc = moeq_cuda_alloc(ctx, &hinv, sizeof(float) * nn * n_seg, "GPTQ factors", err)) ||
         (rc = moeq_cuda_alloc(ctx, &perm, sizeof(int32_t) * (size_t)cols * n_seg,
                               "GPTQ permutations", err)) ||
         (rc = moeq_cuda_alloc(ctx, &dead, (size_t)cols * n_seg, "GPTQ dead columns", err))))
        goto done;
    for (int s = 0; !rc && s < n_seg; s++) {
        perm_host[s] = preps[s]->perm_host;
        if ((rc = MOEQ_CU(cudaMemcpyAsync((float *)hinv.ptr + nn * s, preps[s]->hinv.ptr,
                                          sizeof(float) * nn, cudaMemcpyDeviceToDevice,
                                          ctx->stream))) ||
            (rc = MOEQ_CU(cudaMemcpyAsync((int32_t *)perm.ptr + (size_t)cols * s,
                                          preps[s]->perm.ptr, sizeof(int32_t) * (size_t)cols,
                                          cudaMemcpyDeviceToDevice, ctx->stream))))
            break;
        rc = MOEQ_CU(cudaMemcpyAsync((uint8_t *)dead.ptr + (size_t)cols * s, preps[s]->dead.ptr,
                                     (size_t)cols, cudaMemcpyDeviceToDevice, ctx->stream));
    }
    if (!rc)
        rc = sweep_segments(ctx, hinv.ptr, perm.ptr, dead.ptr, perm_host, n_seg, seg_rows, cols,
                            cfg, W, out, NULL, row_loss, err);
done:
    moeq_cuda_free(ctx, &hinv);
    moeq_cuda_free(ctx, &perm);
    moeq_cuda_free(ctx, &dead);
    free(perm_host);
    return rc;
}

moeq_code moeq_cuda_quantized_download_rows(moeq_cuda_ctx *ctx, const moeq_cuda_quantized *q,
                                            int r0, int rows, uint8_t *codes,
                                            moeq_quantized *host, moeq_error *err)
{
    if (r0 < 0 || rows < 0 || r0 + rows > q->rows)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "rows [%d, %d) of a %d-row weight", r0,
                         r0 + rows, q->rows);
    moeq_code rc = moeq_quantized_alloc_codes_in(host, rows, q->cols, q->bits, q->group_size,
                                                 codes, err);
    if (rc)
        return rc;
    /* codes rows are contiguous; grids are [n_groups, rows]: one strided
     * copy each. */
    if ((rc = moeq_cuda_download(ctx, host->codes, (const uint8_t *)q->codes.ptr +
                                                       (size_t)r0 * q->cols,
                                 (size_t)rows * q->cols, err)) ||
        (rc = MOEQ_CU(cudaMemcpy2DAsync(host->scales, sizeof(float) * (size_t)rows,
                                        (const float *)q->scales.ptr + r0,
                                        sizeof(float) * (size_t)q->rows,
                                        sizeof(float) * (size_t)rows, (size_t)q->n_groups,
                                        cudaMemcpyDeviceToHost, ctx->stream))) ||
        (rc = MOEQ_CU(cudaMemcpy2DAsync(host->zeros, sizeof(int32_t) * (size_t)rows,
                                        (const int32_t *)q->zeros.ptr + r0,
                                        sizeof(int32_t) * (size_t)q->rows,
                                        sizeof(int32_t) * (size_t)rows, (size_t)q->n_groups,
                                        cudaMemcpyDeviceToHost, ctx->stream))) ||
        (rc = moeq_cuda_download(ctx, host->g_idx,
                                 (const int32_t *)q->g_idx.ptr + (size_t)q->cols * (r0 / q->seg_rows),
                                 sizeof(int32_t) * (size_t)q->cols, err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        moeq_quantized_free(host);
    return rc;
}

moeq_code moeq_cuda_quantized_download(moeq_cuda_ctx *ctx, const moeq_cuda_quantized *q,
                                       moeq_quantized *host, moeq_error *err)
{
    if (q->segments > 1)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "a segmented GPTQ result is downloaded segment by segment");
    moeq_code rc =
        moeq_quantized_alloc(host, q->rows, q->cols, q->bits, q->group_size, err);
    if (rc)
        return rc;
    if ((rc = moeq_cuda_download(ctx, host->codes, q->codes.ptr, q->codes.bytes, err)) ||
        (rc = moeq_cuda_download(ctx, host->scales, q->scales.ptr, q->scales.bytes, err)) ||
        (rc = moeq_cuda_download(ctx, host->zeros, q->zeros.ptr, q->zeros.bytes, err)) ||
        (rc = moeq_cuda_download(ctx, host->g_idx, q->g_idx.ptr, q->g_idx.bytes, err)) ||
        (rc = moeq_cuda_sync(ctx, err)))
        moeq_quantized_free(host);
    return rc;
}
