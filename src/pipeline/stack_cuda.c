/* stack_cuda.c: the building blocks of the CUDA layer loop's stages:
 * uploads, GEMMs, Hessians prepared for GPTQ, and the quantization of a
 * stack of linears (GPTQ or AWQ's clipping search on the device, or RTN
 * on the host) whose dequantized weights then run the forward. */
#include "pipeline/layer_cuda.h"

#include "backend/cuda/cuda_hessian.h"
#include "common/clock.h"
#include "common/dtype.h"
#include "kernels.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t gpu_memory_limit(const gpu_run *g)
{
    return g->opt->vram_budget ? g->opt->vram_budget : g->cu.free_at_init / 16 * 15;
}

/* MOEQ_TRACE=1 in the environment: the time of every synchronised step,
 * summed by the source line that closed it, printed after each layer
 * (gpu_trace_flush) to stderr. For finding where a stage's time goes; the
 * report's stage seconds are the same with or without it. */
enum { TRACE_SITES = 256 };
typedef struct {
    const char *file;
    int line;
    long count;
    double seconds;
} trace_site;
static trace_site trace_sites[TRACE_SITES];
static int trace_n;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;

static int trace_on;
static pthread_once_t trace_once = PTHREAD_ONCE_INIT;

static void trace_read_env(void)
{
    const char *v = getenv("MOEQ_TRACE");
    trace_on = v && *v && strcmp(v, "0") != 0;
}

/* MOEQ_TRACE, read once for the whole process (the GPUs' threads ask). */
static int trace_enabled(void)
{
    pthread_once(&trace_once, trace_read_env);
    return trace_on;
}

static void trace_add(const char *file, int line, double seconds)
{
    pthread_mutex_lock(&trace_lock);
    int i = 0;
    while (i < trace_n && !(trace_sites[i].line == line && !strcmp(trace_sites[i].file, file)))
        i++;
    if (i == trace_n && trace_n < TRACE_SITES)
        trace_sites[trace_n++] = (trace_site){file, line, 0, 0.0};
    if (i < trace_n) {
        trace_sites[i].count++;
        trace_sites[i].seconds += seconds;
    }
    pthread_mutex_unlock(&trace_lock);
}

static int by_seconds_desc(const void *a, const void *b)
{
    double x = ((const trace_site *)a)->seconds, y = ((const trace_site *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

void gpu_trace_flush(int layer)
{
    if (!trace_enabled())
        return;
    pthread_mutex_lock(&trace_lock);
    qsort(trace_sites, (size_t)trace_n, sizeof *trace_sites, by_seconds_desc);
    for (int i = 0; i < trace_n; i++) {
        const char *base = strrchr(trace_sites[i].file, '/');
        fprintf(stderr, "trace layer %d: %8.3f s %6ld x  %s:%d\n", layer, trace_sites[i].seconds,
                trace_sites[i].count, base ? base + 1 : trace_sites[i].file, trace_sites[i].line);
    }
    trace_n = 0;
    pthread_mutex_unlock(&trace_lock);
}

moeq_code gpu_sync_time_at(gpu_layer *L, double *bucket, const char *file, int line,
                           moeq_error *err)
{
    moeq_code rc = moeq_cuda_sync(&L->g->cu, err);
    double t = moeq_now_seconds();
    *bucket += t - L->t_stage;
    if (trace_enabled())
        trace_add(file, line, t - L->t_stage);
    L->t_stage = t;
    return rc;
}

/* C[m, n] (ldc) = alpha A[m, k] (lda) B[n, k]^T (ldb) + beta C: row-major bf16
 * A and B, fp32 accumulation, C in fp32 or bf16. */
moeq_code gpu_gemm_nt(gpu_run *g, const void *A, int lda, const void *B, int ldb, void *C, int ldc,
                      int c_bf16, int m, int n, int k, float alpha, float beta, moeq_error *err)
{
    if (m <= 0 || n <= 0)
        return MOEQ_OK;
    return MOEQ_CUBLAS(cublasGemmEx(g->cu.cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, B,
                                    CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
                                    c_bf16 ? CUDA_R_16BF : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

/* Host fp32 -> device fp32 (what names the buffer). */
moeq_code gpu_upload_f32(gpu_run *g, const float *host, size_t count, const char *what,
                         moeq_cuda_buf *buf, moeq_error *err)
{
    memset(buf, 0, sizeof *buf);
    if (!host)
        return MOEQ_OK;
    moeq_code rc = moeq_cuda_alloc(&g->cu, buf, sizeof(float) * count, what, err);
    if (!rc)
        rc = moeq_cuda_upload(&g->cu, buf->ptr, host, sizeof(float) * count, err);
    return rc;
}

/* Host fp32 [count] -> device bf16 at dst, through an fp32 staging buffer;
 * returns after the copy has been read (host may be freed then). */
moeq_code gpu_upload_bf16_into(gpu_run *g, const float *host, size_t count, uint16_t *dst,
                               moeq_error *err)
{
    moeq_cuda_buf f = {0};
    moeq_code rc = gpu_upload_f32(g, host, count, "fp32 staging", &f, err);
    if (!rc)
        rc = MOEQ_CU(moeq_k_to_bf16(f.ptr, count, dst, g->cu.stream));
    if (!rc)
        rc = moeq_cuda_sync(&g->cu, err);
    moeq_cuda_free(&g->cu, &f);
    return rc;
}

/* Host fp32 -> device bf16 (an unquantized weight: router, shared gate);
 * NULL stays NULL. */
moeq_code gpu_upload_bf16(gpu_run *g, const float *host, size_t count, const char *what,
                          moeq_cuda_buf *buf, moeq_error *err)
{
    memset(buf, 0, sizeof *buf);
    if (!host)
        return MOEQ_OK;
    moeq_code rc = moeq_cuda_alloc(&g->cu, buf, 2 * count, what, err);
    if (!rc)
        rc = gpu_upload_bf16_into(g, host, count, buf->ptr, err);
    if (rc)
        moeq_cuda_free(&g->cu, buf);
    return rc;
}

/* bytes of the current layer's codes buffer for one result, or NULL (the
 * result then owns its codes) when the layer's estimate fell short. */
static uint8_t *take_codes(gpu_run *g, size_t bytes)
{
    if (!g->codes_next || (size_t)(g->codes_end - g->codes_next) < bytes)
        return NULL;
    uint8_t *p = g->codes_next;
    g->codes_next += bytes;
    return p;
}

moeq_quantized_linear *gpu_new_linear(gpu_layer *L, moeq_error *err)
{
    moeq_layer_result *res = L->res;
    if (res->n_linears == L->cap) {
        int cap = L->cap ? 2 * L->cap : 64;
        moeq_quantized_linear *l = realloc(res->linears, sizeof *l * (size_t)cap);
        if (!l) {
            moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory", res->layer);
            return NULL;
        }
        res->linears = l;
        L->cap = cap;
    }
    moeq_quantized_linear *ql = &res->linears[res->n_linears++];
    memset(ql, 0, sizeof *ql);
    return ql;
}

/* Piece p widened to fp32 at dst (device): copied as it is, or, stored in
 * bf16, uploaded into *stage (grown to fit; the caller frees it) and
 * widened there. Both exact, so either source gives the same bits. */
static moeq_code upload_piece_f32(gpu_run *g, const piece *p, int cols, float *dst,
                                  moeq_cuda_buf *stage, moeq_error *err)
{
    const size_t c = (size_t)p->rows * cols;
    if (p->w)
        return moeq_cuda_upload(&g->cu, dst, p->w, sizeof(float) * c, err);
    moeq_code rc = MOEQ_OK;
    if (stage->bytes < 2 * c) {
        moeq_cuda_free(&g->cu, stage);
        rc = moeq_cuda_alloc(&g->cu, stage, 2 * c, "bf16 weights", err);
    }
    if (!rc)
        rc = moeq_cuda_upload(&g->cu, stage->ptr, p->w16, 2 * c, err);
    if (!rc)
        rc = MOEQ_CU(moeq_k_bf16_to_f32(stage->ptr, c, dst, g->cu.stream));
    return rc;
}

/* Piece p in fp32 on the host: its own array, or *tmp (freed by the
 * caller) widened from its bf16 one. NULL when out of memory. */
static const float *piece_host_f32(const piece *p, int cols, float **tmp)
{
    if (p->w)
        return p->w;
    const size_t c = (size_t)p->rows * cols;
    if (!(*tmp = malloc(sizeof(float) * c)))
        return NULL;
    for (size_t i = 0; i < c; i++)
        (*tmp)[i] = moeq_bf16_to_f32(p->w16[i]);
    return *tmp;
}

static const char *piece_label(const piece *p, char *buf, size_t bytes)
{
    if (p->expert >= 0)
        snprintf(buf, bytes, "expert %d %s", p->expert, moeq_tensor_role_key(p->role));
    else
        snprintf(buf, bytes, "%s", moeq_tensor_role_key(p->role));
    return buf;
}

/* AWQ's half of gpu_quantize_stack: the pieces (already scaled by their
 * input scale) rounded on the grids of AWQ's clipping search, scored
 * against the second moment of their inputs in prep->hinv (or piece i's in
 * seg_preps[i]->hinv; gpu_finish_prepare leaves it there unfactored);
 * q_proj and k_proj on plain min/max grids (AutoAWQ does not clip them),
 * as moeq_awq_attention. */
static moeq_code awq_quantize_stack(gpu_layer *L, const moeq_cuda_gptq_prepared *prep,
                                    const moeq_cuda_gptq_prepared *const *seg_preps,
                                    const piece *pieces, int n_pieces, int cols,
                                    moeq_cuda_buf *wq, moeq_error *err)
{
    gpu_run *g = L->g;
    const moeq_gptq_config *gc = &g->opt->gptq;
    const moeq_k_awq_grid kq = {gc->bits, gc->sym, gc->scale_bf16, gc->group_size};
    int rows = 0;
    for (int i = 0; i < n_pieces; i++)
        rows += pieces[i].rows;
    const int gs = gc->group_size > 0 ? gc->group_size : cols, n_groups = cols / gs;
    const size_t count = (size_t)rows * cols;
    moeq_cuda_buf W = {0}, stage = {0}, row_loss = {0};
    moeq_cuda_quantized dq = {.rows = rows, .cols = cols, .bits = gc->bits,
                              .group_size = gc->group_size, .n_groups = n_groups,
                              .segments = 1, .seg_rows = rows};
    double *loss_host = malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1));
    int32_t *g_idx = malloc(sizeof(int32_t) * (size_t)cols);
    char what[96];
    memset(wq, 0, sizeof *wq);
    moeq_code rc = !loss_host || !g_idx ? moeq_fail(err, MOEQ_ERR_OOM, "out of memory") : MOEQ_OK;
    if (rc || cols % gs) {
        rc = rc ? rc : moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                                 "group size %d does not divide %d columns", gs, cols);
        goto done;
    }
    for (int c = 0; c < cols; c++)
        g_idx[c] = c / gs;
    if ((rc = moeq_cuda_alloc(&g->cu, wq, 2 * count, "dequantized weights", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &W, sizeof(float) * count, "weights for AWQ", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &dq.codes, count, "codes", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &dq.scales, sizeof(float) * (size_t)n_groups * rows,
                              "scales", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &dq.zeros, sizeof(int32_t) * (size_t)n_groups * rows,
                              "zero points", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &dq.g_idx, sizeof(int32_t) * (size_t)cols, "g_idx", err)) ||
        (rc = moeq_cuda_alloc(&g->cu, &row_loss, sizeof(double) * (size_t)rows, "row losses",
                              err)) ||
        (rc = moeq_cuda_upload(&g->cu, dq.g_idx.ptr, g_idx, sizeof(int32_t) * (size_t)cols, err)))
        goto done;
    for (int i = 0, r0 = 0; i < n_pieces && !rc; r0 += pieces[i++].rows) {
        const moeq_cuda_gptq_prepared *p = seg_preps ? seg_preps[i] : prep;
        const int clip = pieces[i].role != MOEQ_T_Q_PROJ && pieces[i].role != MOEQ_T_K_PROJ;
        float *w = (float *)W.ptr + (size_t)r0 * cols;
        if (!(rc = upload_piece_f32(g, &pieces[i], cols, w, &stage, err)))
            rc = MOEQ_CU(moeq_k_awq_clip_quantize(
                w, pieces[i].rows, cols, clip && p ? (const float *)p->hinv.ptr : NULL, &kq,
                (uint8_t *)dq.codes.ptr + (size_t)r0 * cols, (float *)dq.scales.ptr + r0,
                (int32_t *)dq.zeros.ptr + r0, rows, (double *)row_loss.ptr + r0, g->cu.stream));
        if (rc)
            moeq_wrap(err, "layer %d, %s: ", L->res->layer,
                      piece_label(&pieces[i], what, sizeof what));
    }
    if (rc || (rc = MOEQ_CU(moeq_k_dequant_bf16(dq.codes.ptr, dq.scales.ptr, dq.zeros.ptr,
                                                 dq.g_idx.ptr, 0, rows, cols, wq->ptr,
                                                 g->cu.stream))) ||
        (rc = moeq_cuda_download(&g->cu, loss_host, row_loss.ptr, row_loss.bytes, err)) ||
        (rc = moeq_cuda_sync(&g->cu, err)))
        goto done;
    for (int i = 0, r0 = 0; i < n_pieces && !rc; r0 += pieces[i++].rows) {
        moeq_quantized_linear *ql = gpu_new_linear(L, err);
        if (!ql) {
            rc = MOEQ_ERR_OOM;
            break;
        }
        ql->role = pieces[i].role;
        ql->expert = pieces[i].expert;
        ql->tokens = pieces[i].tokens;
        ql->fallback = pieces[i].fallback;
        for (int r = r0; r < r0 + pieces[i].rows; r++)
            ql->loss += loss_host[r];
        rc = moeq_cuda_quantized_download_rows(&g->cu, &dq, r0, pieces[i].rows,
                                               take_codes(g, (size_t)pieces[i].rows * cols),
                                               &ql->q, err);
    }
done:
    free(loss_host);
    free(g_idx);
    moeq_cuda_free(&g->cu, &W);
    moeq_cuda_free(&g->cu, &stage);
    moeq_cuda_free(&g->cu, &row_loss);
    moeq_cuda_quantized_free(&g->cu, &dq);
    if (rc)
        moeq_cuda_free(&g->cu, wq);
    return rc;
}

/* Quantizes the pieces stacked row-wise, [sum rows, cols], against prep
 * (GPTQ; NULL: RTN on the host), or piece i against seg_preps[i] when
 * seg_preps is given (pieces of equal rows: one segmented sweep), records
 * one result per piece, and leaves the dequantized stack in bf16 in *wq
 * (device) for the forward. */
moeq_code gpu_quantize_stack(gpu_layer *L, const moeq_cuda_gptq_prepared *prep,
                             const moeq_cuda_gptq_prepared *const *seg_preps, const piece *pieces,
                             int n_pieces, int cols, moeq_cuda_buf *wq, moeq_error *err)
{
    gpu_run *g = L->g;
    if (g->opt->method == MOEQ_METHOD_AWQ && !g->forward_only)
        return awq_quantize_stack(L, prep, seg_preps, pieces, n_pieces, cols, wq, err);
    const int gptq_on = prep || seg_preps;
    int rows = 0;
    for (int i = 0; i < n_pieces; i++)
        rows += pieces[i].rows;
    const size_t count = (size_t)rows * cols;
    if (g->forward_only) { /* the weights as they are, in bf16 */
        moeq_code rc = moeq_cuda_alloc(&g->cu, wq, 2 * count, "weights", err);
        for (int i = 0, r0 = 0; i < n_pieces && !rc; r0 += pieces[i++].rows) {
            uint16_t *dst = (uint16_t *)wq->ptr + (size_t)r0 * cols;
            const size_t c = (size_t)pieces[i].rows * cols;
            rc = pieces[i].w ? gpu_upload_bf16_into(g, pieces[i].w, c, dst, err)
                             : moeq_cuda_upload(&g->cu, dst, pieces[i].w16, 2 * c, err);
        }
        if (!rc)
            rc = moeq_cuda_sync(&g->cu, err); /* the host arrays are read */
        if (rc)
            moeq_cuda_free(&g->cu, wq);
        return rc;
    }
    moeq_cuda_buf W = {0}, stage = {0};
    moeq_cuda_quantized dq = {0};
    double *row_loss = gptq_on ? malloc(sizeof(double) * (size_t)(rows > 0 ? rows : 1)) : NULL;
    char what[96];
    memset(wq, 0, sizeof *wq);
    moeq_code rc = gptq_on && !row_loss ? moeq_fail(err, MOEQ_ERR_OOM, "out of memory")
                                     : moeq_cuda_alloc(&g->cu, wq, 2 * count,
                                                       "dequantized weights", err);
    if (rc)
        goto done;
    if (gptq_on) {
        if ((rc = moeq_cuda_alloc(&g->cu, &W, sizeof(float) * count, "weights for GPTQ", err)))
            goto done;
        size_t off = 0;
        for (int i = 0; i < n_pieces; i++) {
            if ((rc = upload_piece_f32(g, &pieces[i], cols, (float *)W.ptr + off, &stage, err)))
                goto done;
            off += (size_t)pieces[i].rows * cols;
        }
        if ((seg_preps ? (rc = moeq_cuda_gptq_sweep_segments(&g->cu, seg_preps, n_pieces,
                                                             &g->opt->gptq, W.ptr,
                                                             pieces[0].rows, &dq, row_loss, err))
                       : (rc = moeq_cuda_gptq_sweep(&g->cu, prep, &g->opt->gptq, W.ptr, rows,
                                                    &dq, NULL, row_loss, err))) ||
            (rc = MOEQ_CU(moeq_k_dequant_bf16(dq.codes.ptr, dq.scales.ptr, dq.zeros.ptr,
                                              dq.g_idx.ptr, dq.seg_rows, rows, cols, wq->ptr,
                                              g->cu.stream)))) {
            moeq_wrap(err, "layer %d, %s%s: ", L->res->layer,
                      piece_label(&pieces[0], what, sizeof what),
                      n_pieces > 1 ? " and the weights stacked with it" : "");
            goto done;
        }
    }
    int r0 = 0;
    for (int i = 0; i < n_pieces; i++) {
        moeq_quantized_linear *ql = gpu_new_linear(L, err);
        if (!ql) {
            rc = MOEQ_ERR_OOM;
            goto done;
        }
        ql->role = pieces[i].role;
        ql->expert = pieces[i].expert;
        ql->tokens = pieces[i].tokens;
        ql->fallback = pieces[i].fallback;
        if (gptq_on) {
            ql->damp = seg_preps ? seg_preps[i]->damp_used : prep->damp_used;
            ql->loss = 0; /* the sweep's objective is a sum over rows */
            for (int r = r0; r < r0 + pieces[i].rows; r++)
                ql->loss += row_loss[r];
            rc = moeq_cuda_quantized_download_rows(
                &g->cu, &dq, r0, pieces[i].rows, take_codes(g, (size_t)pieces[i].rows * cols),
                &ql->q, err);
        } else {
            float *tmp = NULL;
            const float *w = piece_host_f32(&pieces[i], cols, &tmp);
            rc = w ? moeq_rtn_quantize(w, pieces[i].rows, cols, &g->opt->gptq, &ql->q, err)
                   : moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
            free(tmp);
            if (!rc) {
                float *deq = malloc(sizeof(float) * (size_t)pieces[i].rows * cols);
                moeq_cuda_buf f = {0};
                if (!deq)
                    rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
                if (!rc) {
                    moeq_quantized_dequantize(&ql->q, deq);
                    rc = gpu_upload_f32(g, deq, (size_t)pieces[i].rows * cols, "RTN weights", &f,
                                        err);
                }
                if (!rc)
                    rc = MOEQ_CU(moeq_k_to_bf16(f.ptr, (size_t)pieces[i].rows * cols,
                                                (uint16_t *)wq->ptr + (size_t)r0 * cols,
                                                g->cu.stream));
                if (!rc)
                    rc = moeq_cuda_sync(&g->cu, err);
                moeq_cuda_free(&g->cu, &f);
                free(deq);
            }
        }
        if (rc) {
            moeq_wrap(err, "layer %d, %s: ", L->res->layer,
                      piece_label(&pieces[i], what, sizeof what));
            goto done;
        }
        r0 += pieces[i].rows;
    }
done:
    free(row_loss);
    moeq_cuda_free(&g->cu, &W);
    moeq_cuda_free(&g->cu, &stage);
    moeq_cuda_quantized_free(&g->cu, &dq);
    if (rc)
        moeq_cuda_free(&g->cu, wq);
    return rc;
}

/* After accumulating H (rc: how that went): times it, prepares it for
 * module into prep, times that, frees H, and names the module in an error. */
moeq_code gpu_finish_prepare(gpu_layer *L, moeq_cuda_buf *H, moeq_code rc, int cols,
                             const char *module, moeq_cuda_gptq_prepared *prep, moeq_error *err)
{
    gpu_run *g = L->g;
    if (!rc)
        rc = gpu_sync_time(L, &L->res->seconds_hessian, err);
    if (!rc && g->opt->method == MOEQ_METHOD_AWQ) { /* AWQ scores clipping against H itself */
        memset(prep, 0, sizeof *prep);
        prep->cols = cols;
        prep->hinv = *H;
        memset(H, 0, sizeof *H);
        return MOEQ_OK;
    }
    if (!rc)
        rc = moeq_cuda_gptq_prepare(&g->cu, H->ptr, cols, &g->opt->gptq, prep, err);
    if (!rc)
        rc = gpu_sync_time(L, &L->res->seconds_prepare, err);
    moeq_cuda_free(&g->cu, H);
    if (rc)
        return moeq_wrap(err, "layer %d, %s: ", L->res->layer, module);
    return MOEQ_OK;
}

/* H = alpha x^T diag(w) x over rows of bf16 x [rows, cols] (w NULL: plain),
 * then prepared for module. H is allocated here and freed. */
moeq_code gpu_hessian_prepare(gpu_layer *L, const void *x, int rows, int cols, const float *w,
                              float alpha, const char *module, moeq_cuda_gptq_prepared *prep,
                              moeq_error *err)
{
    gpu_run *g = L->g;
    moeq_cuda_buf H = {0};
    memset(prep, 0, sizeof *prep);
    moeq_code rc = moeq_cuda_alloc(&g->cu, &H, sizeof(float) * (size_t)cols * cols, "Hessian", err);
    if (!rc)
        rc = MOEQ_CU(cudaMemsetAsync(H.ptr, 0, H.bytes, g->cu.stream));
    if (!rc)
        rc = w ? moeq_cuda_hessian_accumulate_weighted(&g->cu, H.ptr, x, MOEQ_CUDA_BF16, w, rows,
                                                       cols, alpha, err)
               : moeq_cuda_hessian_accumulate(&g->cu, H.ptr, x, MOEQ_CUDA_BF16, rows, cols,
                                              alpha, err);
    return gpu_finish_prepare(L, &H, rc, cols, module, prep, err);
}

int gpu_uses_hessians(const gpu_layer *L)
{
    return L->g->opt->method == MOEQ_METHOD_GPTQ || L->g->opt->method == MOEQ_METHOD_AWQ;
}

moeq_code gpu_prepare_many(gpu_layer *L, moeq_cuda_buf *H, const float *const *H_ptrs, int count,
                           int cols, moeq_cuda_gptq_prepared *preps, int *failed, moeq_error *err)
{
    gpu_run *g = L->g;
    if (g->opt->method != MOEQ_METHOD_AWQ)
        return moeq_cuda_gptq_prepare_many(&g->cu, H_ptrs, count, cols, &g->opt->gptq, preps,
                                           failed, err);
    for (int i = 0; i < count; i++) { /* AWQ scores clipping against each H itself */
        memset(&preps[i], 0, sizeof preps[i]);
        preps[i].cols = cols;
        preps[i].hinv = H[i];
        memset(&H[i], 0, sizeof H[i]);
    }
    return MOEQ_OK;
}
