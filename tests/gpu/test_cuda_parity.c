/* test_cuda_parity.c: every CUDA op against its CPU reference, on fresh
 * random inputs, with stated tolerances; then timings at real model shapes.
 * Needs a GPU: tests/gpu/run.sh runs it; it is not a ctest test.
 *
 * Tolerances: the Hessian GEMMs sum in another order than OpenBLAS, so they
 * are held to a bound relative to the largest entry; GPTQ's in-block sweep
 * is bit-exact by construction, so the first block's codes must be
 * identical, and the fraction of identical codes overall is printed and held
 * to a floor (a lazy-GEMM rounding difference can flip a code, and the
 * error feedback then carries the difference along the rest of the row).
 * AWQ's fake quantization is bit-exact by construction (the same float
 * operations); its clipping search sums H e in fp32 (the CPU in double), so
 * a candidate within about 1e-6 of the best could win on one side only:
 * the fraction of identical grids is held to a floor of 0.999 and the loss
 * to 1e-5 relative. */
#include "../test.h"

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ctx.h"
#include "backend/cuda/cuda_gptq.h"
#include "backend/cuda/cuda_hessian.h"
#include "backend/cuda/cuda_layer.h"
#include "common/dtype.h"
#include "kernels.h"
#include "model/forward.h"
#include "model/deltanet.h"
#include "model/rope.h"
#include "quant/awq.h"
#include "quant/gptq.h"

#include <time.h>

static moeq_cuda_ctx ctx;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

/* Aborts the program on a CUDA failure: parity tests cannot go on without
 * the device. */
static void must(moeq_code rc, const moeq_error *err)
{
    if (rc) {
        fprintf(stderr, "CUDA failure: %s\n", err->msg);
        exit(2);
    }
}

static moeq_cuda_buf to_device(const void *host, size_t bytes)
{
    moeq_error err = {0};
    moeq_cuda_buf b;
    must(moeq_cuda_alloc(&ctx, &b, bytes, "test input", &err), &err);
    must(moeq_cuda_upload(&ctx, b.ptr, host, bytes, &err), &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
    return b;
}

static void to_host(void *host, const moeq_cuda_buf *b)
{
    moeq_error err = {0};
    must(moeq_cuda_download(&ctx, host, b->ptr, b->bytes, &err), &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
}

static float *random_floats(test_rng *rng, size_t n, float scale)
{
    float *x = xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * test_rng_uniform(rng);
    return x;
}

/* x rounded to bf16 in place; bits[] gets the bf16 encodings. */
static void round_to_bf16(float *x, size_t n, uint16_t *bits)
{
    for (size_t i = 0; i < n; i++) {
        bits[i] = moeq_f32_to_bf16(x[i]);
        x[i] = moeq_bf16_to_f32(bits[i]);
    }
}

/* max |a - b| / max |b| */
static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double diff = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        diff = d > diff ? d : diff;
        ref = fabs(b[i]) > ref ? fabs(b[i]) : ref;
    }
    return ref > 0 ? diff / ref : diff;
}

static int is_symmetric(const float *H, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (H[(size_t)i * n + j] != H[(size_t)j * n + i])
                return 0;
    return 1;
}

/* A random symmetric starting H, so the "+=" is tested too. */
static float *random_symmetric(test_rng *rng, int n)
{
    float *H = random_floats(rng, (size_t)n * n, 1.0f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            H[(size_t)i * n + j] = H[(size_t)j * n + i];
    return H;
}

/* ---- Hessian */

/* H += alpha x^T [diag(w)] x on both backends from the same start; returns
 * the max relative difference and checks exact symmetry of the GPU's H. */
static double hessian_case(moeq_cuda_dtype dtype, int weighted, int rows, int n, uint64_t seed)
{
    test_rng rng = {seed};
    moeq_error err = {0};
    float *x = random_floats(&rng, (size_t)rows * n, 1.0f);
    uint16_t *xb = xmalloc(sizeof(uint16_t) * (size_t)rows * n);
    if (dtype == MOEQ_CUDA_BF16)
        round_to_bf16(x, (size_t)rows * n, xb);
    float *w = xmalloc(sizeof(float) * (size_t)rows);
    for (int r = 0; r < rows; r++)
        w[r] = 0.5f * (test_rng_uniform(&rng) + 1.0f);
    float *H_cpu = random_symmetric(&rng, n);
    float *H_gpu = xmalloc(sizeof(float) * (size_t)n * n);
    moeq_cuda_buf dH = to_device(H_cpu, sizeof(float) * (size_t)n * n);
    moeq_cuda_buf dx = dtype == MOEQ_CUDA_BF16 ? to_device(xb, sizeof(uint16_t) * (size_t)rows * n)
                                                : to_device(x, sizeof(float) * (size_t)rows * n);
    moeq_cuda_buf dw = to_device(w, sizeof(float) * (size_t)rows);
    float alpha = 2.0f / (float)rows;
    if (weighted) {
        CHECK_INT_EQ(cpu_hessian_accumulate_weighted(H_cpu, x, w, rows, n, alpha, &err), MOEQ_OK);
        must(moeq_cuda_hessian_accumulate_weighted(&ctx, dH.ptr, dx.ptr, dtype, dw.ptr, rows, n,
                                                   alpha, &err),
             &err);
    } else {
        cpu_hessian_accumulate(H_cpu, x, rows, n, alpha);
        must(moeq_cuda_hessian_accumulate(&ctx, dH.ptr, dx.ptr, dtype, rows, n, alpha, &err),
             &err);
    }
    to_host(H_gpu, &dH);
    CHECK(is_symmetric(H_gpu, n));
    double rel = max_rel_diff(H_gpu, H_cpu, (size_t)n * n);
    printf("     hessian %s%s %d x %d: max |gpu - cpu| / max |cpu| = %.3g\n",
           dtype == MOEQ_CUDA_BF16 ? "bf16" : "fp32", weighted ? " weighted" : "", rows, n, rel);
    moeq_cuda_free(&ctx, &dH);
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &dw);
    free(x);
    free(xb);
    free(w);
    free(H_cpu);
    free(H_gpu);
    return rel;
}

/* fp32 products, fp32 sums in another order: 1e-5 of the largest entry. */
static void test_hessian_fp32_matches_cpu(void)
{
    CHECK(hessian_case(MOEQ_CUDA_F32, 0, 1000, 300, 11) <= 1e-5);
}

/* bf16 inputs multiply exactly into fp32: the same bound. */
static void test_hessian_bf16_matches_cpu(void)
{
    CHECK(hessian_case(MOEQ_CUDA_BF16, 0, 1000, 300, 12) <= 1e-5);
}

static void test_hessian_weighted_fp32_matches_cpu(void)
{
    CHECK(hessian_case(MOEQ_CUDA_F32, 1, 1000, 300, 13) <= 1e-5);
}

/* w x is rounded once to bf16 (relative 2^-9 per element, unbiased): 1e-3. */
static void test_hessian_weighted_bf16_matches_cpu(void)
{
    CHECK(hessian_case(MOEQ_CUDA_BF16, 1, 1000, 300, 14) <= 1e-3);
}

static void test_hessian_weighted_rejects_negative_weight_and_keeps_h(void)
{
    const int rows = 64, n = 32;
    test_rng rng = {15};
    moeq_error err = {0};
    float *x = random_floats(&rng, (size_t)rows * n, 1.0f);
    float w[64], H0[32 * 32], H1[32 * 32];
    for (int r = 0; r < rows; r++)
        w[r] = 1.0f;
    w[17] = -0.5f;
    for (int i = 0; i < n * n; i++)
        H0[i] = 0.0f;
    moeq_cuda_buf dH = to_device(H0, sizeof H0), dx = to_device(x, sizeof(float) * rows * n),
                  dw = to_device(w, sizeof w);
    CHECK_INT_EQ(moeq_cuda_hessian_accumulate_weighted(&ctx, dH.ptr, dx.ptr, MOEQ_CUDA_F32,
                                                       dw.ptr, rows, n, 1.0f, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "1 of 64 row weights");
    to_host(H1, &dH);
    CHECK(memcmp(H0, H1, sizeof H0) == 0);
    moeq_cuda_free(&ctx, &dH);
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &dw);
    free(x);
}

/* ---- GPTQ prepare */

/* H = 2/rows x^T x of a random x [rows, n], with column `dead` of x zero. */
static float *random_hessian(test_rng *rng, int rows, int n, int dead)
{
    float *x = random_floats(rng, (size_t)rows * n, 1.0f);
    for (int r = 0; r < rows && dead >= 0; r++)
        x[(size_t)r * n + dead] = 0.0f;
    for (int c = 0; c < n; c++) /* uneven column scales give act-order work */
        for (int r = 0; r < rows; r++)
            x[(size_t)r * n + c] *= 0.25f + (float)((c * 37) % 101) / 50.0f;
    float *H = xmalloc(sizeof(float) * (size_t)n * n);
    memset(H, 0, sizeof(float) * (size_t)n * n);
    cpu_hessian_accumulate(H, x, rows, n, 2.0f / (float)rows);
    free(x);
    return H;
}

/* The GPU preparation, copied to a host moeq_gptq_prepared. */
static void download_prepared(const moeq_cuda_gptq_prepared *d, moeq_gptq_prepared *h)
{
    int n = d->cols;
    h->cols = n;
    h->perm = xmalloc(sizeof(int32_t) * (size_t)n);
    h->dead = xmalloc((size_t)n);
    h->hinv = xmalloc(sizeof(float) * (size_t)n * n);
    memcpy(h->perm, d->perm_host, sizeof(int32_t) * (size_t)n);
    memcpy(h->dead, d->dead_host, (size_t)n);
    h->dead_columns = d->dead_columns;
    h->damp_used = d->damp_used;
    to_host(h->hinv, &d->hinv);
}

static void test_gptq_prepare_matches_cpu(void)
{
    const int n = 256;
    test_rng rng = {21};
    moeq_error err = {0};
    float *H = random_hessian(&rng, 4 * n, n, 77);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.desc_act = 1;
    moeq_gptq_prepared cpu = {0}, gpu_h = {0};
    moeq_cuda_gptq_prepared gpu = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(H, n, &cfg, &cpu, &err), MOEQ_OK);
    moeq_cuda_buf dH = to_device(H, sizeof(float) * (size_t)n * n);
    must(moeq_cuda_gptq_prepare(&ctx, dH.ptr, n, &cfg, &gpu, &err), &err);
    download_prepared(&gpu, &gpu_h);
    CHECK_INT_EQ(gpu.dead_columns, 1);
    CHECK_INT_EQ(gpu_h.dead[77], 1);
    CHECK(memcmp(cpu.perm, gpu_h.perm, sizeof(int32_t) * n) == 0);
    CHECK(gpu.damp_used == cpu.damp_used);
    double rel = max_rel_diff(gpu_h.hinv, cpu.hinv, (size_t)n * n);
    int lower_zero = 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            lower_zero &= gpu_h.hinv[(size_t)i * n + j] == 0.0f;
    CHECK(lower_zero);
    printf("     prepare %d: hinv max |gpu - cpu| / max |cpu| = %.3g\n", n, rel);
    CHECK(rel <= 1e-4);
    moeq_gptq_prepared_free(&cpu);
    moeq_gptq_prepared_free(&gpu_h);
    moeq_cuda_gptq_prepared_free(&ctx, &gpu);
    moeq_cuda_free(&ctx, &dH);
    free(H);
}

/* A pair of columns correlated past 1 makes H indefinite (eigenvalue
 * -0.0137 of a mean diagonal of 1): damping 0.01 and 0.0125 fail, 0.015
 * passes, on both backends. */
static void test_gptq_prepare_raises_damping_as_cpu(void)
{
    const int n = 64;
    float *H = xmalloc(sizeof(float) * n * n);
    memset(H, 0, sizeof(float) * n * n);
    for (int i = 0; i < n; i++)
        H[i * n + i] = 1.0f;
    H[3 * n + 9] = H[9 * n + 3] = 1.0137f;
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    moeq_gptq_prepared cpu = {0};
    moeq_cuda_gptq_prepared gpu = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(H, n, &cfg, &cpu, &err), MOEQ_OK);
    moeq_cuda_buf dH = to_device(H, sizeof(float) * n * n);
    must(moeq_cuda_gptq_prepare(&ctx, dH.ptr, n, &cfg, &gpu, &err), &err);
    CHECK_NEAR(cpu.damp_used, 0.015, 1e-12, 0);
    CHECK(gpu.damp_used == cpu.damp_used);
    moeq_gptq_prepared_free(&cpu);
    moeq_cuda_gptq_prepared_free(&ctx, &gpu);
    moeq_cuda_free(&ctx, &dH);
    free(H);
}

static void test_gptq_prepare_rejects_nonfinite_hessian(void)
{
    const int n = 32;
    float H[32 * 32] = {0};
    for (int i = 0; i < n; i++)
        H[i * n + i] = 1.0f;
    H[5 * n + 6] = NAN;
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    moeq_cuda_gptq_prepared gpu = {0};
    moeq_cuda_buf dH = to_device(H, sizeof H);
    CHECK_INT_EQ(moeq_cuda_gptq_prepare(&ctx, dH.ptr, n, &cfg, &gpu, &err), MOEQ_ERR_NUMERIC);
    CHECK_CONTAINS(err.msg, "1 non-finite");
    CHECK(gpu.hinv.ptr == NULL);
    moeq_cuda_free(&ctx, &dH);
}

/* Several Hessians prepared together give each one's single preparation:
 * a well-conditioned one, one that needs damping 0.015 (the case above)
 * and one with a dead column, with the same factors bit for bit; a NaN in
 * the third of three names that matrix and keeps nothing. */
static void test_gptq_prepare_many_matches_single(void)
{
    const int n = 64, count = 3;
    test_rng rng = {29};
    float *H[3];
    H[0] = random_hessian(&rng, 4 * n, n, -1);
    H[1] = xmalloc(sizeof(float) * n * n);
    memset(H[1], 0, sizeof(float) * n * n);
    for (int i = 0; i < n; i++)
        H[1][i * n + i] = 1.0f;
    H[1][3 * n + 9] = H[1][9 * n + 3] = 1.0137f;
    H[2] = random_hessian(&rng, 4 * n, n, 17);
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.group_size = 32;
    cfg.desc_act = 1;
    moeq_cuda_buf dH[3];
    const float *ptrs[3];
    for (int i = 0; i < count; i++) {
        dH[i] = to_device(H[i], sizeof(float) * n * n);
        ptrs[i] = dH[i].ptr;
    }
    moeq_cuda_gptq_prepared many[3], one = {0};
    int failed = 7;
    must(moeq_cuda_gptq_prepare_many(&ctx, ptrs, count, n, &cfg, many, &failed, &err), &err);
    CHECK_INT_EQ(failed, -1);
    CHECK_NEAR(many[1].damp_used, 0.015, 1e-12, 0);
    CHECK_INT_EQ(many[2].dead_columns, 1);
    float *a = xmalloc(sizeof(float) * n * n), *b = xmalloc(sizeof(float) * n * n);
    for (int i = 0; i < count; i++) {
        must(moeq_cuda_gptq_prepare(&ctx, ptrs[i], n, &cfg, &one, &err), &err);
        must(moeq_cuda_download(&ctx, a, many[i].hinv.ptr, sizeof(float) * n * n, &err), &err);
        must(moeq_cuda_download(&ctx, b, one.hinv.ptr, sizeof(float) * n * n, &err), &err);
        must(moeq_cuda_sync(&ctx, &err), &err);
        CHECK(memcmp(a, b, sizeof(float) * n * n) == 0);
        CHECK(memcmp(many[i].perm_host, one.perm_host, sizeof(int32_t) * n) == 0);
        CHECK(many[i].damp_used == one.damp_used);
        moeq_cuda_gptq_prepared_free(&ctx, &one);
        moeq_cuda_gptq_prepared_free(&ctx, &many[i]);
    }
    float nan = NAN;
    must(moeq_cuda_upload(&ctx, (float *)dH[2].ptr + 5 * n + 6, &nan, sizeof nan, &err), &err);
    CHECK_INT_EQ(moeq_cuda_gptq_prepare_many(&ctx, ptrs, count, n, &cfg, many, &failed, &err),
                 MOEQ_ERR_NUMERIC);
    CHECK_INT_EQ(failed, 2);
    CHECK_CONTAINS(err.msg, "1 non-finite");
    for (int i = 0; i < count; i++) {
        CHECK(many[i].hinv.ptr == NULL);
        moeq_cuda_free(&ctx, &dH[i]);
        free(H[i]);
    }
    free(a);
    free(b);
}

/* ---- GPTQ sweep */

typedef struct sweep_stats {
    size_t codes, same_codes, grids, same_grids, first_block_diff;
    double loss_cpu, loss_gpu;
} sweep_stats;

/* Compares a GPU result with the CPU's; first_block_diff counts codes of
 * the first block_size processed columns that differ (must be none). */
static void compare_quantized(const moeq_quantized *g, const moeq_quantized *c,
                              const int32_t *perm, int block_size, int rows, sweep_stats *s)
{
    int cols = c->cols;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < cols; i++) {
            size_t k = (size_t)r * cols + perm[i];
            int same = g->codes[k] == c->codes[k];
            s->codes++;
            s->same_codes += same;
            if (i < block_size && !same)
                s->first_block_diff++;
        }
    for (int gi = 0; gi < c->n_groups; gi++)
        for (int r = 0; r < rows; r++) {
            size_t kg = (size_t)gi * g->rows + r, kc = (size_t)gi * c->rows + r;
            s->grids++;
            s->same_grids += g->scales[kg] == c->scales[kc] && g->zeros[kg] == c->zeros[kc];
        }
}

/* Where a first block differs, says where: the first rows with a differing
 * code, the processing position, and both grids of that column's group. */
static void explain_first_difference(const moeq_quantized *g, const moeq_quantized *c,
                                     const int32_t *perm, int rows)
{
    int shown = 0;
    for (int r = 0; r < rows && shown < 4; r++)
        for (int i = 0; i < c->cols; i++) {
            size_t k = (size_t)r * c->cols + perm[i];
            if (g->codes[k] == c->codes[k])
                continue;
            size_t gk = (size_t)c->g_idx[perm[i]] * rows + r;
            printf("     row %d position %d (column %d, group %d): code gpu %d cpu %d, grid gpu "
                   "%.9g/%d cpu %.9g/%d\n",
                   r, i, perm[i], c->g_idx[perm[i]], g->codes[k], c->codes[k], g->scales[gk],
                   g->zeros[gk], c->scales[gk], c->zeros[gk]);
            shown++;
            break;
        }
    size_t per_group[64] = {0};
    for (int gi = 0; gi < c->n_groups && gi < 64; gi++)
        for (int r = 0; r < rows; r++) {
            size_t k = (size_t)gi * rows + r;
            per_group[gi] += g->scales[k] != c->scales[k] || g->zeros[k] != c->zeros[k];
        }
    printf("     differing grids by group:");
    for (int gi = 0; gi < c->n_groups && gi < 64; gi++)
        printf(" %zu", per_group[gi]);
    printf("\n");
}

/* The grid of one sweep case: GPTQ's default config (4 bits, groups of
 * 128, symmetric, blocks of 128, no act-order) but for the fields given.
 * mse 0 keeps min/max grids, bit-exact with the CPU; above 0 the clipping
 * search runs with that norm. */
typedef struct sweep_grid {
    int bits, group_size, block_size; /* 0: the default's */
    int asym, act_order, static_groups, bf16_scales;
    double mse;
} sweep_grid;

/* Sweeps W on both backends against the CPU's preparation (uploaded, so
 * only the sweeps differ) and compares. */
static sweep_stats sweep_case(const char *name, sweep_grid grid, int rows, int cols,
                              uint64_t seed)
{
    moeq_gptq_config cfg = moeq_gptq_default_config();
    if (grid.bits)
        cfg.bits = grid.bits;
    if (grid.group_size)
        cfg.group_size = grid.group_size;
    if (grid.block_size)
        cfg.block_size = grid.block_size;
    cfg.sym = !grid.asym;
    cfg.desc_act = grid.act_order;
    cfg.static_groups = grid.static_groups;
    cfg.scale_bf16 = grid.bf16_scales;
    cfg.mse = grid.mse;
    test_rng rng = {seed};
    moeq_error err = {0};
    sweep_stats s = {0};
    float *H = random_hessian(&rng, 2 * cols, cols, cols / 3);
    float *W = random_floats(&rng, (size_t)rows * cols, 0.05f);
    for (int k = 0; k < rows; k++) /* an outlier per row stretches some groups */
        W[(size_t)k * cols + (k * 7) % cols] *= 8.0f;
    moeq_gptq_prepared prep = {0};
    moeq_quantized qc = {0}, qg = {0};
    moeq_cuda_gptq_prepared dprep = {0};
    moeq_cuda_quantized dq = {0};
    CHECK_INT_EQ(moeq_gptq_prepare(H, cols, &cfg, &prep, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_sweep(&prep, &cfg, W, rows, &qc, &s.loss_cpu, &err), MOEQ_OK);
    moeq_cuda_buf dW = to_device(W, sizeof(float) * (size_t)rows * cols);
    must(moeq_cuda_gptq_prepared_upload(&ctx, &prep, &dprep, &err), &err);
    must(moeq_cuda_gptq_sweep(&ctx, &dprep, &cfg, dW.ptr, rows, &dq, &s.loss_gpu, NULL, &err), &err);
    must(moeq_cuda_quantized_download(&ctx, &dq, &qg, &err), &err);
    compare_quantized(&qg, &qc, prep.perm, cfg.block_size, rows, &s);
    CHECK(memcmp(qg.g_idx, qc.g_idx, sizeof(int32_t) * (size_t)cols) == 0);
    printf("     sweep %-34s %5d x %4d: identical codes %.5f, grids %.5f, "
           "first-block diffs %zu, loss gpu/cpu - 1 = %.2g\n",
           name, rows, cols, (double)s.same_codes / (double)s.codes,
           (double)s.same_grids / (double)s.grids, s.first_block_diff,
           s.loss_gpu / s.loss_cpu - 1.0);
    if (s.first_block_diff)
        explain_first_difference(&qg, &qc, prep.perm, rows);
    /* With the clipping search the warp sums each candidate's error in
     * another order than grid.c, so a candidate within rounding of the best
     * may win on one side only: a few first-block grids may differ. */
    CHECK(s.first_block_diff <= (cfg.mse > 0 ? (size_t)rows * cfg.block_size / 1000 : 0));
    CHECK((double)s.same_codes / (double)s.codes >= 0.98);
    CHECK_NEAR(s.loss_gpu, s.loss_cpu, 0, 1e-2);
    if (cfg.scale_bf16) { /* every GPU scale survives bf16 and fp16 unchanged */
        size_t inexact = 0;
        for (size_t k = 0; k < (size_t)qg.n_groups * rows; k++) {
            float v = qg.scales[k];
            inexact += moeq_bf16_to_f32(moeq_f32_to_bf16(v)) != v ||
                       moeq_f16_to_f32(moeq_f32_to_f16(v)) != v;
        }
        CHECK_INT_EQ((long long)inexact, 0);
    }
    moeq_quantized_free(&qc);
    moeq_quantized_free(&qg);
    moeq_cuda_quantized_free(&ctx, &dq);
    moeq_cuda_gptq_prepared_free(&ctx, &dprep);
    moeq_gptq_prepared_free(&prep);
    moeq_cuda_free(&ctx, &dW);
    free(H);
    free(W);
    return s;
}

static void test_gptq_sweep_matches_cpu_4bit_g128_sym(void)
{
    sweep_case("4-bit g128 sym", (sweep_grid){.mse = 0}, 512, 640, 31);
}

static void test_gptq_sweep_matches_cpu_4bit_g128_asym_act_order(void)
{
    sweep_case("4-bit g128 asym act-order", (sweep_grid){.asym = 1, .act_order = 1}, 512, 640,
               32);
}

static void test_gptq_sweep_matches_cpu_3bit_g32_static_groups(void)
{
    sweep_case("3-bit g32 asym act-order static",
               (sweep_grid){.bits = 3, .group_size = 32, .asym = 1, .act_order = 1,
                            .static_groups = 1},
               300, 512, 33);
}

static void test_gptq_sweep_matches_cpu_8bit_per_row(void)
{
    sweep_case("8-bit per-row sym", (sweep_grid){.bits = 8, .group_size = -1}, 256, 512, 34);
}

/* A group of 256 spans two blocks: its grid is fitted on the second block's
 * columns as the first block's lazy update left them. */
static void test_gptq_sweep_matches_cpu_2bit_g256_spanning_blocks(void)
{
    sweep_case("2-bit g256 asym act-order",
               (sweep_grid){.bits = 2, .group_size = 256, .asym = 1, .act_order = 1}, 256, 768,
               35);
}

/* Blocks of 96 leave a 32-column tail and start groups mid-block. */
static void test_gptq_sweep_matches_cpu_block_96_g64(void)
{
    sweep_case("4-bit g64 block 96", (sweep_grid){.group_size = 64, .block_size = 96}, 200, 512,
               36);
}

static void test_gptq_sweep_matches_cpu_4bit_g128_sym_clipping_search(void)
{
    sweep_case("4-bit g128 sym mse 2.4", (sweep_grid){.mse = 2.4}, 512, 640, 37);
}

static void test_gptq_sweep_matches_cpu_3bit_asym_static_clipping_search(void)
{
    sweep_case("3-bit g128 asym act-order static mse 2.4",
               (sweep_grid){.bits = 3, .asym = 1, .act_order = 1, .static_groups = 1,
                            .mse = 2.4},
               300, 512, 38);
}

static void test_gptq_sweep_matches_cpu_per_row_clipping_search_norm_2(void)
{
    sweep_case("4-bit per-row mse 2", (sweep_grid){.group_size = -1, .mse = 2.0}, 256, 512, 39);
}

/* Scales exact in bf16 as well as fp16 (--format awq / compressed-tensors on
 * a bf16 model): the same rounding as grid.c, so the first blocks agree
 * exactly; a sweep that rounded to fp16 only would move codes there. */
static void test_gptq_sweep_matches_cpu_4bit_g128_asym_act_order_bf16_scales(void)
{
    sweep_case("4-bit g128 asym act-order bf16 scales",
               (sweep_grid){.asym = 1, .act_order = 1, .bf16_scales = 1}, 512, 640, 40);
}

static void test_gptq_sweep_matches_cpu_4bit_g32_sym_static_clipping_search_bf16_scales(void)
{
    sweep_case("4-bit g32 sym static mse 2.4 bf16 scales",
               (sweep_grid){.group_size = 32, .act_order = 1, .static_groups = 1, .mse = 2.4,
                            .bf16_scales = 1},
               256, 512, 41);
}

/* Three weights with three Hessians (act-order: three permutations) in one
 * segmented sweep, each against its own CPU sweep: first blocks identical,
 * nearly all codes, each segment's g_idx. */
static void test_gptq_segmented_sweep_matches_separate_cpu_sweeps(void)
{
    const int seg = 3, rows = 64, cols = 384;
    test_rng rng = {42};
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.desc_act = 1;
    cfg.sym = 0;
    float *W = random_floats(&rng, (size_t)seg * rows * cols, 0.05f);
    moeq_gptq_prepared prep[3];
    moeq_cuda_gptq_prepared dprep[3];
    const moeq_cuda_gptq_prepared *ptrs[3];
    for (int s = 0; s < seg; s++) {
        float *H = random_hessian(&rng, 2 * cols, cols, 7 + s);
        CHECK_INT_EQ(moeq_gptq_prepare(H, cols, &cfg, &prep[s], &err), MOEQ_OK);
        must(moeq_cuda_gptq_prepared_upload(&ctx, &prep[s], &dprep[s], &err), &err);
        ptrs[s] = &dprep[s];
        free(H);
    }
    moeq_cuda_buf dW = to_device(W, sizeof(float) * (size_t)seg * rows * cols);
    moeq_cuda_quantized dq = {0};
    double row_loss[3 * 64];
    must(moeq_cuda_gptq_sweep_segments(&ctx, ptrs, seg, &cfg, dW.ptr, rows, &dq, row_loss, &err),
         &err);
    size_t same = 0, total = 0;
    /* Segment 1's codes go to pinned memory the result borrows (as the CUDA
     * loop's per-layer buffer), the others to memory the result owns. */
    uint8_t *pinned = NULL;
    must(moeq_cuda_host_alloc((void **)&pinned, (size_t)rows * cols, "codes", &err), &err);
    for (int s = 0; s < seg; s++) {
        moeq_quantized qc = {0}, qg = {0};
        double loss_cpu = 0, loss_gpu = 0;
        CHECK_INT_EQ(moeq_gptq_sweep(&prep[s], &cfg, W + (size_t)s * rows * cols, rows, &qc,
                                     &loss_cpu, &err),
                     MOEQ_OK);
        must(moeq_cuda_quantized_download_rows(&ctx, &dq, s * rows, rows, s == 1 ? pinned : NULL,
                                               &qg, &err),
             &err);
        CHECK(qg.codes_borrowed == (s == 1) && (s != 1 || qg.codes == pinned));
        CHECK(memcmp(qg.g_idx, qc.g_idx, sizeof(int32_t) * (size_t)cols) == 0);
        for (size_t k = 0; k < (size_t)rows * cols; k++)
            same += qg.codes[k] == qc.codes[k];
        total += (size_t)rows * cols;
        for (int r = 0; r < rows; r++) {
            loss_gpu += row_loss[s * rows + r];
            for (int i = 0; i < cfg.block_size; i++) { /* the first block, exactly */
                size_t k = (size_t)r * cols + prep[s].perm[i];
                CHECK(qg.codes[k] == qc.codes[k]);
            }
        }
        CHECK_NEAR(loss_gpu, loss_cpu, 0, 1e-2);
        moeq_quantized_free(&qc);
        moeq_quantized_free(&qg);
    }
    moeq_cuda_host_free(pinned); /* after the result that borrowed it was freed */
    printf("     segmented sweep %d x (%d x %d), act-order: identical codes %.5f\n", seg, rows,
           cols, (double)same / (double)total);
    CHECK((double)same / (double)total >= 0.98);
    /* A whole download of a segmented result is refused. */
    moeq_quantized whole = {0};
    CHECK_INT_EQ(moeq_cuda_quantized_download(&ctx, &dq, &whole, &err), MOEQ_ERR_INVALID_ARG);
    moeq_cuda_quantized_free(&ctx, &dq);
    for (int s = 0; s < seg; s++) {
        moeq_cuda_gptq_prepared_free(&ctx, &dprep[s]);
        moeq_gptq_prepared_free(&prep[s]);
    }
    moeq_cuda_free(&ctx, &dW);
    free(W);
}

static void test_gptq_sweep_rejects_blocks_over_128(void)
{
    moeq_error err = {0};
    moeq_cuda_gptq_prepared p = {.cols = 256};
    moeq_cuda_quantized q;
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.block_size = 256;
    CHECK_INT_EQ(moeq_cuda_gptq_sweep(&ctx, &p, &cfg, NULL, 8, &q, NULL, NULL, &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "at most 128");
}

/* GPU prepare + GPU sweep against CPU prepare + CPU sweep. */
static void test_gptq_gpu_pipeline_matches_cpu(void)
{
    const int rows = 512, cols = 1024;
    test_rng rng = {41};
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.desc_act = 1;
    float *H = random_hessian(&rng, 2 * cols, cols, 5);
    float *W = random_floats(&rng, (size_t)rows * cols, 0.05f);
    moeq_gptq_prepared prep = {0};
    moeq_quantized qc = {0}, qg = {0};
    moeq_cuda_gptq_prepared dprep = {0};
    moeq_cuda_quantized dq = {0};
    double loss_cpu = 0, loss_gpu = 0;
    CHECK_INT_EQ(moeq_gptq_prepare(H, cols, &cfg, &prep, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_gptq_sweep(&prep, &cfg, W, rows, &qc, &loss_cpu, &err), MOEQ_OK);
    moeq_cuda_buf dH = to_device(H, sizeof(float) * (size_t)cols * cols);
    moeq_cuda_buf dW = to_device(W, sizeof(float) * (size_t)rows * cols);
    must(moeq_cuda_gptq_prepare(&ctx, dH.ptr, cols, &cfg, &dprep, &err), &err);
    must(moeq_cuda_gptq_sweep(&ctx, &dprep, &cfg, dW.ptr, rows, &dq, &loss_gpu, NULL, &err), &err);
    must(moeq_cuda_quantized_download(&ctx, &dq, &qg, &err), &err);
    size_t same = 0, n = (size_t)rows * cols;
    for (size_t k = 0; k < n; k++)
        same += qg.codes[k] == qc.codes[k];
    printf("     gpu prepare + sweep %d x %d: identical codes %.5f, loss gpu/cpu - 1 = %.2g\n",
           rows, cols, (double)same / (double)n, loss_gpu / loss_cpu - 1.0);
    CHECK((double)same / (double)n >= 0.95);
    CHECK_NEAR(loss_gpu, loss_cpu, 0, 1e-2);
    moeq_quantized_free(&qc);
    moeq_quantized_free(&qg);
    moeq_cuda_quantized_free(&ctx, &dq);
    moeq_cuda_gptq_prepared_free(&ctx, &dprep);
    moeq_gptq_prepared_free(&prep);
    moeq_cuda_free(&ctx, &dH);
    moeq_cuda_free(&ctx, &dW);
    free(H);
    free(W);
}

/* ---- layer ops */

/* rmsnorm in place over rows of dim: the sum of squares in double, then
 * the same fp32 roundings as cpu_rmsnorm, so 1e-6 relative. weighted 0:
 * no weight on the GPU (NULL), ones on the CPU (Llama-4's L2 norm). */
static void rmsnorm_case(const char *name, int rows, int dim, int weighted, uint64_t seed)
{
    test_rng rng = {seed};
    moeq_error err = {0};
    float *x = random_floats(&rng, (size_t)rows * dim, 3.0f);
    float *w = random_floats(&rng, (size_t)dim, 1.0f);
    float *y_cpu = xmalloc(sizeof(float) * (size_t)rows * dim);
    float *y_gpu = xmalloc(sizeof(float) * (size_t)rows * dim);
    if (!weighted)
        for (int i = 0; i < dim; i++)
            w[i] = 1.0f;
    cpu_rmsnorm(x, w, rows, dim, 1e-6f, y_cpu);
    moeq_cuda_buf dx = to_device(x, sizeof(float) * (size_t)rows * dim),
                  dw = weighted ? to_device(w, sizeof(float) * (size_t)dim) : (moeq_cuda_buf){0};
    must(moeq_cuda_rmsnorm(&ctx, dx.ptr, dw.ptr, rows, dim, 1e-6f, dx.ptr, &err), &err);
    to_host(y_gpu, &dx);
    double rel = max_rel_diff(y_gpu, y_cpu, (size_t)rows * dim);
    printf("     rmsnorm %s %d x %d (in place): max rel diff %.3g\n", name, rows, dim, rel);
    CHECK(rel <= 1e-6);
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &dw);
    free(x);
    free(w);
    free(y_cpu);
    free(y_gpu);
}

static void test_rmsnorm_matches_cpu(void)
{
    rmsnorm_case("rows", 37, 2050, 1, 51);
}

/* Llama-4's q/k L2 norm (Llama4TextL2Norm): RMSNorm of each head of 128
 * without a weight, over 300 tokens of 40 query heads. */
static void test_l2_norm_without_weight_matches_cpu(void)
{
    rmsnorm_case("without weight", 300 * 40, 128, 0, 55);
}

/* MiniMax-M2's q/k norm over a token's whole projection: rows of Hq D =
 * 48 x 128 for q, Hkv D = 8 x 128 for k (MiniMax-M2's shapes), one weight
 * of that width. */
static void test_rmsnorm_over_whole_projection_matches_cpu(void)
{
    rmsnorm_case("q over 48 heads", 300, 48 * 128, 1, 53);
    rmsnorm_case("k over 8 heads", 300, 8 * 128, 1, 54);
}

/* CUDA's expf is within 2 ulp, then a division and a product round: 2e-6
 * relative. */
static void test_silu_mul_matches_cpu(void)
{
    const size_t n = 100003;
    test_rng rng = {52};
    moeq_error err = {0};
    float *g = random_floats(&rng, n, 12.0f), *u = random_floats(&rng, n, 2.0f);
    float *y_cpu = xmalloc(sizeof(float) * n), *y_gpu = xmalloc(sizeof(float) * n);
    cpu_silu_mul(g, u, n, y_cpu);
    moeq_cuda_buf dg = to_device(g, sizeof(float) * n), du = to_device(u, sizeof(float) * n);
    must(moeq_cuda_silu_mul(&ctx, dg.ptr, du.ptr, n, dg.ptr, &err), &err);
    to_host(y_gpu, &dg);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)y_gpu[i] - y_cpu[i]) / (fabs(y_cpu[i]) + 1e-30);
        worst = d > worst ? d : worst;
    }
    printf("     silu_mul %zu: max rel diff %.3g\n", n, worst);
    CHECK(worst <= 2e-6);
    moeq_cuda_free(&ctx, &dg);
    moeq_cuda_free(&ctx, &du);
    free(g);
    free(u);
    free(y_cpu);
    free(y_gpu);
}


/* RoPE: the same products and sums; CUDA's cosf/sinf are within 2 ulp of
 * glibc's, so 1e-5 of the largest value over positions up to 4095. */
static void test_rope_matches_cpu(void)
{
    const int T = 4096, heads = 3, D = 64, rot = 48;
    test_rng rng = {61};
    moeq_error err = {0};
    float *x = random_floats(&rng, (size_t)T * heads * D, 2.0f);
    float *y_gpu = xmalloc(sizeof(float) * (size_t)T * heads * D);
    float inv_freq[24];
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int i = 0; i < rot / 2; i++)
        inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)rot);
    for (int t = 0; t < T; t++)
        pos[t] = t % 1024; /* four windows of 1024 */
    moeq_cuda_buf dx = to_device(x, sizeof(float) * (size_t)T * heads * D);
    moeq_cuda_buf df = to_device(inv_freq, sizeof inv_freq);
    for (int interleaved = 0; interleaved <= 1; interleaved++) {
        float *y_cpu = xmalloc(sizeof(float) * (size_t)T * heads * D);
        memcpy(y_cpu, x, sizeof(float) * (size_t)T * heads * D);
        cpu_rope_apply(y_cpu, T, heads, D, rot, pos, inv_freq, 1.25f, interleaved);
        must(moeq_cuda_upload(&ctx, dx.ptr, x, dx.bytes, &err), &err);
        must(moeq_cuda_check(moeq_k_rope(dx.ptr, T, heads, D, rot, 1024, df.ptr, 1.25f,
                                         interleaved, ctx.stream),
                             "moeq_k_rope", __FILE__, __LINE__, &err),
             &err);
        to_host(y_gpu, &dx);
        double rel = max_rel_diff(y_gpu, y_cpu, (size_t)T * heads * D);
        printf("     rope %s %d x %d x %d (rotary %d): max rel diff %.3g\n",
               interleaved ? "interleaved" : "half", T, heads, D, rot, rel);
        CHECK(rel <= 1e-5);
        /* The dims past rotary_dim are untouched. */
        CHECK(y_gpu[D - 1] == x[D - 1]);
        free(y_cpu);
    }
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &df);
    free(x);
    free(y_gpu);
    free(pos);
}

/* Attention with bf16 inputs against the fp32 CPU attention on the same
 * (bf16-rounded) q, k [D per head], v [Dv per head], within window (0:
 * none), with sink logits random in [-sink_scale, sink_scale] (0: none),
 * and in chunks of chunk tokens (0: one chunk; the CPU runs
 * cpu_attention_causal on each chunk, as gqa_attention does): the
 * probabilities and the output are rounded to bf16 once each, so 1e-2 of
 * the largest output value. Returns the GPU output (caller frees) and v
 * for exact checks. */
static float *attention_case(const char *name, int T, int chunk, int Hq, int Hkv, int D, int Dv,
                             int window, float sink_scale, uint64_t seed, float **v_out)
{
    const size_t nq = (size_t)T * Hq * D, nk = (size_t)T * Hkv * D, nv = (size_t)T * Hkv * Dv;
    const size_t no = (size_t)T * Hq * Dv;
    test_rng rng = {seed};
    moeq_error err = {0};
    float *q = random_floats(&rng, nq, 2.0f), *k = random_floats(&rng, nk, 2.0f);
    float *v = random_floats(&rng, nv, 1.0f);
    float *sinks = sink_scale > 0 ? random_floats(&rng, (size_t)Hq, sink_scale) : NULL;
    uint16_t *qb = xmalloc(2 * nq), *kb = xmalloc(2 * nk), *vb = xmalloc(2 * nv);
    uint16_t *ob = xmalloc(2 * no);
    round_to_bf16(q, nq, qb);
    round_to_bf16(k, nk, kb);
    round_to_bf16(v, nv, vb);
    float *o_cpu = xmalloc(sizeof(float) * no), *o_gpu = xmalloc(sizeof(float) * no);
    const float scale = 0.125f;
    const int step = chunk > 0 ? chunk : T;
    for (int c0 = 0; c0 < T; c0 += step) {
        const size_t q0 = (size_t)c0 * Hq * D, k0 = (size_t)c0 * Hkv * D;
        const size_t v0 = (size_t)c0 * Hkv * Dv, o0 = (size_t)c0 * Hq * Dv;
        CHECK_INT_EQ(cpu_attention_causal(q + q0, k + k0, v + v0, T - c0 < step ? T - c0 : step,
                                          Hq, Hkv, D, Dv, scale, window, sinks, o_cpu + o0,
                                          &err),
                     MOEQ_OK);
    }
    moeq_cuda_buf dq = to_device(qb, 2 * nq), dk = to_device(kb, 2 * nk),
                  dv = to_device(vb, 2 * nv), dout, dsc, dp, ds = {0};
    if (sinks)
        ds = to_device(sinks, sizeof(float) * (size_t)Hq);
    must(moeq_cuda_alloc(&ctx, &dout, 2 * no, "out", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dsc, sizeof(float) * (size_t)Hq * T * T, "scores", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dp, 2 * (size_t)Hq * T * T, "probs", &err), &err);
    must(moeq_cuda_attention_chunked_bf16(&ctx, dq.ptr, dk.ptr, dv.ptr, T, chunk, Hq, Hkv, D, Dv,
                                          scale, window, ds.ptr, dsc.ptr, dp.ptr, dout.ptr, &err),
         &err);
    to_host(ob, &dout);
    for (size_t i = 0; i < no; i++)
        o_gpu[i] = moeq_bf16_to_f32(ob[i]);
    double rel = max_rel_diff(o_gpu, o_cpu, no);
    printf("     attention bf16 %-18s T %d, %d/%d heads of %d (v %d): max rel diff %.3g\n", name,
           T, Hq, Hkv, D, Dv, rel);
    CHECK(rel <= 1e-2);
    moeq_cuda_buf *bufs[] = {&dq, &dk, &dv, &dout, &dsc, &dp, &ds};
    for (int i = 0; i < 7; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    free(q);
    free(k);
    free(sinks);
    free(qb);
    free(kb);
    free(vb);
    free(ob);
    free(o_cpu);
    *v_out = v;
    return o_gpu;
}

/* How many output values of the tokens 0, step, 2 step, ... differ from
 * the token's own v (of its query head's k/v head): none where each of
 * those tokens sees only itself. */
static size_t outputs_not_own_v(const float *o, const float *v, int T, int step, int Hq, int Hkv,
                                int D)
{
    size_t differ = 0;
    for (int t = 0; t < T; t += step)
        for (int h = 0; h < Hq; h++)
            for (int d = 0; d < D; d++)
                differ += o[((size_t)t * Hq + h) * D + d] !=
                          v[((size_t)t * Hkv + h / (Hq / Hkv)) * D + d];
    return differ;
}

static void test_attention_matches_cpu(void)
{
    const int T = 300, Hq = 8, Hkv = 2, D = 64;
    float *v, *o = attention_case("causal", T, 0, Hq, Hkv, D, D, 0, 0.0f, 62, &v);
    /* The first token sees only itself: its output is its own v, exactly
     * up to the bf16 rounding of p = 1 (exact) and of the output. */
    for (int h = 0; h < Hq; h++)
        CHECK(o[(size_t)h * D] == v[(size_t)(h / (Hq / Hkv)) * D]);
    free(o);
    free(v);
}

/* gpt-oss's sliding layers: query i sees keys (i - window, i]. With a
 * window of 1 every token sees only itself, so each output is its own v
 * exactly (p = 1). */
static void test_attention_sliding_window_matches_cpu(void)
{
    const int T = 300, Hq = 8, Hkv = 2, D = 64;
    float *v, *o = attention_case("window 128", T, 0, Hq, Hkv, D, D, 128, 0.0f, 67, &v);
    free(o);
    free(v);
    o = attention_case("window 1", T, 0, Hq, Hkv, D, D, 1, 0.0f, 68, &v);
    CHECK_INT_EQ(outputs_not_own_v(o, v, T, 1, Hq, Hkv, D), 0);
    free(o);
    free(v);
}

/* gpt-oss's sinks: one logit per head in the softmax's max and sum, no
 * value; with and without its sliding window (gpt-oss-20b: 128). Sinks of
 * scale 4 take a visible share of the mass at every position. */
static void test_attention_sinks_match_cpu(void)
{
    const int T = 300, Hq = 8, Hkv = 2, D = 64;
    float *v, *o = attention_case("sinks", T, 0, Hq, Hkv, D, D, 0, 4.0f, 69, &v);
    free(o);
    free(v);
    o = attention_case("sinks, window 128", T, 0, Hq, Hkv, D, D, 128, 4.0f, 70, &v);
    free(o);
    free(v);
}

/* Llama-4's chunked attention: chunks of 64 over 300 tokens (the last one
 * of 44), work outside the chunks skipped. The first token of each chunk
 * sees only itself, so its output is its own v exactly (attending across
 * the boundary would mix in earlier tokens); with chunks of 1 every token
 * sees only itself. */
static void test_attention_chunked_matches_cpu(void)
{
    const int T = 300, Hq = 8, Hkv = 2, D = 64, chunk = 64;
    float *v, *o = attention_case("chunks of 64", T, chunk, Hq, Hkv, D, D, 0, 0.0f, 71, &v);
    CHECK_INT_EQ(outputs_not_own_v(o, v, T, chunk, Hq, Hkv, D), 0);
    free(o);
    free(v);
    o = attention_case("chunks of 1", T, 1, Hq, Hkv, D, D, 0, 0.0f, 72, &v);
    CHECK_INT_EQ(outputs_not_own_v(o, v, T, 1, Hq, Hkv, D), 0);
    free(o);
    free(v);
}

/* Llama-4's temperature tuning on layers without RoPE, as the GPU loop
 * applies it: one factor per position from moeq_attn_temperature (the
 * CPU's function, on the host), each query row times its factor by
 * moeq_k_scale_rows: one fp32 product per element, as llama4_qk, so the
 * values are identical. At Llama-4 Scout's settings (floor_scale 8192,
 * attn_scale 0.1) positions below 8191 keep q (factor 1), position 8191
 * takes 1 + 0.1 ln 2 and position 16383 1 + 0.1 ln 3. */
static void test_attention_temperature_matches_cpu(void)
{
    const int T = 17000, qdim = 4 * 128;
    moeq_config cfg = {.attn_temperature_tuning = 1, .floor_scale = 8192.0f,
                       .attn_scale = 0.1f};
    test_rng rng = {73};
    moeq_error err = {0};
    float *q = random_floats(&rng, (size_t)T * qdim, 3.0f);
    float *factors = xmalloc(sizeof(float) * (size_t)T);
    float *q_gpu = xmalloc(sizeof(float) * (size_t)T * qdim);
    for (int t = 0; t < T; t++)
        factors[t] = moeq_attn_temperature(&cfg, t);
    moeq_cuda_buf dq = to_device(q, sizeof(float) * (size_t)T * qdim),
                  df = to_device(factors, sizeof(float) * (size_t)T);
    must(moeq_cuda_check(moeq_k_scale_rows(dq.ptr, 0, df.ptr, T, qdim, dq.ptr, ctx.stream),
                         "moeq_k_scale_rows", __FILE__, __LINE__, &err),
         &err);
    to_host(q_gpu, &dq);
    size_t differ = 0;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < qdim; i++)
            differ += q_gpu[(size_t)t * qdim + i] != q[(size_t)t * qdim + i] * factors[t];
    printf("     temperature %d positions x %d: factor at 8190 %.7f, 8191 %.7f, 16383 %.7f; "
           "%zu values differ\n",
           T, qdim, factors[8190], factors[8191], factors[16383], differ);
    CHECK_INT_EQ(differ, 0);
    CHECK(factors[0] == 1.0f && factors[8190] == 1.0f);
    CHECK_NEAR(factors[8191], 1.0 + 0.1 * log(2.0), 1e-6, 0);
    CHECK_NEAR(factors[16383], 1.0 + 0.1 * log(3.0), 1e-6, 0);
    moeq_cuda_free(&ctx, &dq);
    moeq_cuda_free(&ctx, &df);
    free(q);
    free(factors);
    free(q_gpu);
}

/* MLA (DeepSeek-V3's head dims): q/k heads of qk_nope + qk_rope = 192,
 * v heads of 128, as many k/v heads as q heads. The first token sees only
 * itself: its output is its own v, exactly. A v width the GPU took as the
 * q/k width would read the wrong values or fail this bound. */
static void test_attention_with_v_head_dim_of_mla_matches_cpu(void)
{
    const int T = 300, H = 4, D = 192, Dv = 128;
    float *v, *o = attention_case("MLA head dims", T, 0, H, H, D, Dv, 0, 0.0f, 84, &v);
    for (int h = 0; h < H; h++)
        for (int d = 0; d < Dv; d++)
            CHECK(o[(size_t)h * Dv + d] == v[(size_t)h * Dv + d]);
    free(o);
    free(v);
}

/* MLA's RoPE as src/model/mla.c applies it: on the rope part after the
 * nope part of each q head (head stride nope + rot) and on the one k_rot of
 * each token, interleaved pairs (DeepSeek-V3) and halves, with YaRN's
 * frequencies and attention factor (the deepseek_v3 golden fixture's
 * factor 4, mscale 0.8, mscale_all_dim 0.9, so the factor is not 1) at
 * DeepSeek-V3's widths; the RoPE test's bound, and the nope parts untouched. */
static void test_rope_on_the_rope_part_of_mla_heads_matches_cpu(void)
{
    const int T = 2048, heads = 4, nope = 128, rot = 64, qk = nope + rot;
    const size_t nq = (size_t)T * heads * qk, nk = (size_t)T * rot;
    moeq_error err = {0};
    const moeq_rope_params p = {.type = MOEQ_ROPE_YARN, .theta = 10000.0, .rotary_dim = rot,
                                .factor = 4.0, .beta_fast = 32, .beta_slow = 1, .mscale = 0.8,
                                .mscale_all_dim = 0.9, .original_max_position_embeddings = 512,
                                .max_position_embeddings = 2048, .truncate = 1};
    float inv_freq[32], factor = 0;
    must(moeq_rope_compute(&p, 0, inv_freq, &factor, &err), &err);
    CHECK(factor != 1.0f);
    test_rng rng = {85};
    float *q = random_floats(&rng, nq, 2.0f), *k = random_floats(&rng, nk, 2.0f);
    float *q_cpu = xmalloc(sizeof(float) * nq), *k_cpu = xmalloc(sizeof(float) * nk);
    float *q_gpu = xmalloc(sizeof(float) * nq), *k_gpu = xmalloc(sizeof(float) * nk);
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++)
        pos[t] = t % 1024; /* two windows of 1024 */
    moeq_cuda_buf dq = to_device(q, sizeof(float) * nq), dk = to_device(k, sizeof(float) * nk);
    moeq_cuda_buf df = to_device(inv_freq, sizeof inv_freq);
    for (int interleaved = 0; interleaved <= 1; interleaved++) {
        memcpy(q_cpu, q, sizeof(float) * nq);
        memcpy(k_cpu, k, sizeof(float) * nk);
        cpu_rope_apply(q_cpu + nope, T, heads, qk, rot, pos, inv_freq, factor, interleaved);
        cpu_rope_apply(k_cpu, T, 1, rot, rot, pos, inv_freq, factor, interleaved);
        must(moeq_cuda_upload(&ctx, dq.ptr, q, dq.bytes, &err), &err);
        must(moeq_cuda_upload(&ctx, dk.ptr, k, dk.bytes, &err), &err);
        must(moeq_cuda_check(moeq_k_rope((float *)dq.ptr + nope, T, heads, qk, rot, 1024, df.ptr,
                                         factor, interleaved, ctx.stream),
                             "moeq_k_rope", __FILE__, __LINE__, &err),
             &err);
        must(moeq_cuda_check(moeq_k_rope(dk.ptr, T, 1, rot, rot, 1024, df.ptr, factor,
                                         interleaved, ctx.stream),
                             "moeq_k_rope", __FILE__, __LINE__, &err),
             &err);
        to_host(q_gpu, &dq);
        to_host(k_gpu, &dk);
        double rq = max_rel_diff(q_gpu, q_cpu, nq), rk = max_rel_diff(k_gpu, k_cpu, nk);
        size_t nope_changed = 0;
        for (size_t th = 0; th < (size_t)T * heads; th++)
            nope_changed += memcmp(q_gpu + th * qk, q + th * qk, sizeof(float) * nope) != 0;
        printf("     MLA rope %s, attention factor %.6f: q max rel diff %.3g, k_rot %.3g\n",
               interleaved ? "interleaved" : "halves", factor, rq, rk);
        CHECK(rq <= 1e-5);
        CHECK(rk <= 1e-5);
        CHECK_INT_EQ(nope_changed, 0);
    }
    moeq_cuda_free(&ctx, &dq);
    moeq_cuda_free(&ctx, &dk);
    moeq_cuda_free(&ctx, &df);
    free(q);
    free(k);
    free(q_cpu);
    free(k_cpu);
    free(q_gpu);
    free(k_gpu);
    free(pos);
}

/* MLA's key/value assembly: k = [k_nope | k_rot] per head, k_rot shared by
 * all heads, v after k_nope in kv_b_proj's output; copies rounded once to
 * bf16, so exact against the CPU's layout (mla.c) rounded the same way.
 * v_head_dim differs from qk_nope_head_dim so that a swapped width fails.
 * A negative size is refused. */
static void test_mla_split_kv_is_exact(void)
{
    const int T = 300, heads = 5, nope = 128, rot = 64, vd = 96, qk = nope + rot;
    const size_t nkv = (size_t)T * heads * (nope + vd), nr = (size_t)T * rot;
    const size_t nk = (size_t)T * heads * qk, nv = (size_t)T * heads * vd;
    test_rng rng = {86};
    moeq_error err = {0};
    float *kv = random_floats(&rng, nkv, 3.0f), *kr = random_floats(&rng, nr, 3.0f);
    uint16_t *k = xmalloc(2 * nk), *v = xmalloc(2 * nv);
    moeq_cuda_buf dkv = to_device(kv, sizeof(float) * nkv), dkr = to_device(kr, sizeof(float) * nr);
    moeq_cuda_buf dk, dv;
    must(moeq_cuda_alloc(&ctx, &dk, 2 * nk, "k", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dv, 2 * nv, "v", &err), &err);
    must(moeq_cuda_check(moeq_k_mla_split_kv_bf16(dkv.ptr, dkr.ptr, T, heads, nope, rot, vd,
                                                  dk.ptr, dv.ptr, ctx.stream),
                         "moeq_k_mla_split_kv_bf16", __FILE__, __LINE__, &err),
         &err);
    to_host(k, &dk);
    to_host(v, &dv);
    size_t k_differ = 0, v_differ = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < heads; h++) {
            const float *src = kv + ((size_t)t * heads + h) * (nope + vd);
            const uint16_t *kh = k + ((size_t)t * heads + h) * qk;
            const uint16_t *vh = v + ((size_t)t * heads + h) * vd;
            for (int c = 0; c < qk; c++)
                k_differ += kh[c] != moeq_f32_to_bf16(c < nope ? src[c]
                                                               : kr[(size_t)t * rot + c - nope]);
            for (int c = 0; c < vd; c++)
                v_differ += vh[c] != moeq_f32_to_bf16(src[nope + c]);
        }
    printf("     MLA k/v assembly %d tokens x %d heads: k values differing %zu, v %zu\n", T,
           heads, k_differ, v_differ);
    CHECK_INT_EQ(k_differ, 0);
    CHECK_INT_EQ(v_differ, 0);
    CHECK_INT_EQ(moeq_k_mla_split_kv_bf16(dkv.ptr, dkr.ptr, T, -1, nope, rot, vd, dk.ptr, dv.ptr,
                                          ctx.stream),
                 cudaErrorInvalidValue);
    moeq_cuda_free(&ctx, &dkv);
    moeq_cuda_free(&ctx, &dkr);
    moeq_cuda_free(&ctx, &dk);
    moeq_cuda_free(&ctx, &dv);
    free(kv);
    free(kr);
    free(k);
    free(v);
}

/* The MLP activation of the GPU loop (a gate/up product, its biases added,
 * then moeq_k_swiglu_bf16) against the CPU's (cpu_silu_mul or
 * cpu_swiglu_clamped on the same sums): CUDA's expf is within 2 ulp of
 * glibc's, so the fp32 values agree to a few fp32 ulp, and the GPU's bf16
 * is within one bf16 ulp (2^-7 of the value) of the CPU's fp32 result; it
 * is the CPU's value rounded to bf16 unless the two fp32 values straddle a
 * rounding boundary (a few in 10^4 expected: the 99% floor is unmeasured). */
static void swiglu_case(const char *name, float alpha, float limit, uint64_t seed)
{
    const int m = 517, inter = 768;
    const size_t n = (size_t)m * inter;
    test_rng rng = {seed};
    moeq_error err = {0};
    float *gu = random_floats(&rng, 2 * n, 10.0f);
    float *bias = random_floats(&rng, 2 * (size_t)inter, 1.0f);
    float *g = xmalloc(sizeof(float) * n), *u = xmalloc(sizeof(float) * n);
    float *y_cpu = xmalloc(sizeof(float) * n);
    uint16_t *a = xmalloc(2 * n);
    for (int r = 0; r < m; r++)
        for (int c = 0; c < inter; c++) {
            g[(size_t)r * inter + c] = gu[(size_t)r * 2 * inter + c] + bias[c];
            u[(size_t)r * inter + c] = gu[(size_t)r * 2 * inter + inter + c] + bias[inter + c];
        }
    if (limit > 0)
        cpu_swiglu_clamped(g, u, n, alpha, limit, y_cpu);
    else
        cpu_silu_mul(g, u, n, y_cpu);
    moeq_cuda_buf dgu = to_device(gu, sizeof(float) * 2 * n),
                  db = to_device(bias, sizeof(float) * 2 * (size_t)inter), da;
    must(moeq_cuda_alloc(&ctx, &da, 2 * n, "a", &err), &err);
    must(moeq_cuda_check(moeq_k_add_bias(dgu.ptr, m, 2 * inter, db.ptr, ctx.stream),
                         "moeq_k_add_bias", __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_check(moeq_k_swiglu_bf16(dgu.ptr, m, inter, alpha, limit, da.ptr, ctx.stream),
                         "moeq_k_swiglu_bf16", __FILE__, __LINE__, &err),
         &err);
    to_host(a, &da);
    size_t same = 0, over = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t want;
        float yc = y_cpu[i];
        round_to_bf16(&yc, 1, &want);
        same += a[i] == want;
        double d = fabs((double)moeq_bf16_to_f32(a[i]) - y_cpu[i]);
        over += d > ldexp(fabs((double)y_cpu[i]), -7);
    }
    printf("     swiglu %-28s %d x %d: same bf16 %zu / %zu, beyond one ulp %zu\n", name, m,
           inter, same, n, over);
    CHECK_INT_EQ(over, 0);
    CHECK(same >= n / 100 * 99);
    moeq_cuda_free(&ctx, &dgu);
    moeq_cuda_free(&ctx, &db);
    moeq_cuda_free(&ctx, &da);
    free(gu);
    free(bias);
    free(g);
    free(u);
    free(y_cpu);
    free(a);
}

static void test_swiglu_matches_cpu(void)
{
    swiglu_case("silu(g) * u", 0.0f, 0.0f, 71);
}

/* gpt-oss's clamp at its released limit (7; inputs to 11 cross it) and a
 * small one that binds most values. */
static void test_swiglu_clamped_matches_cpu(void)
{
    swiglu_case("clamped, alpha 1.702, limit 7", 1.702f, 7.0f, 72);
    swiglu_case("clamped, alpha 1.702, limit 0.25", 1.702f, 0.25f, 73);
}

/* Softmax top-k routing: the same experts for every token (the logits are
 * well separated, so expf's last-ulp differences cannot reorder them) and
 * weights within 1e-6; probabilities by expert as well. */
/* The router on the GPU against cpu_router_topk with the same parameters
 * (the bias, if any, random in [-bias_scale, bias_scale]): the chosen
 * experts, at most max_moved slots differing (GPU and CPU expf may differ
 * by an ulp, which reorders a near-tie), the weights of tokens with the same
 * experts within 1e-6 of the largest weight, and the scores (softmax or
 * sigmoid) within 1e-6. */
static void router_case(const char *name, cpu_router_params rp, int n, int E, float bias_scale,
                        size_t max_moved, uint64_t seed)
{
    const int k = rp.top_k;
    test_rng rng = {seed};
    moeq_error err = {0};
    float *logits = random_floats(&rng, (size_t)n * E, 4.0f);
    float *bias = bias_scale > 0 ? random_floats(&rng, (size_t)E, bias_scale) : NULL;
    float *w_cpu = xmalloc(sizeof(float) * n * k), *w_gpu = xmalloc(sizeof(float) * n * k);
    int32_t *e_cpu = xmalloc(sizeof(int32_t) * n * k), *e_gpu = xmalloc(sizeof(int32_t) * n * k);
    float *probs_t = xmalloc(sizeof(float) * (size_t)n * E), *probs = xmalloc(sizeof(float) * (size_t)n * E);
    rp.e_score_correction_bias = bias;
    CHECK_INT_EQ(cpu_router_topk(logits, n, E, &rp, w_cpu, e_cpu, &err), MOEQ_OK);
    if (rp.scoring == CPU_ROUTER_SIGMOID)
        cpu_sigmoid(logits, (size_t)n * E, probs);
    else
        cpu_softmax_rows(logits, n, E, probs);
    moeq_cuda_buf dl = to_device(logits, sizeof(float) * (size_t)n * E), dw, de, dp, db = {0};
    if (bias)
        db = to_device(bias, sizeof(float) * (size_t)E);
    must(moeq_cuda_alloc(&ctx, &dw, sizeof(float) * n * k, "w", &err), &err);
    must(moeq_cuda_alloc(&ctx, &de, sizeof(int32_t) * n * k, "e", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dp, sizeof(float) * (size_t)n * E, "p", &err), &err);
    const float scaling = rp.routed_scaling_factor != 0.0f ? rp.routed_scaling_factor : 1.0f;
    moeq_k_router_args ra = {.n = n, .E = E, .k = k, .sigmoid = rp.scoring == CPU_ROUTER_SIGMOID,
                             .norm_topk = rp.norm_topk_prob, .correction_bias = db.ptr,
                             .n_group = rp.n_group, .topk_group = rp.topk_group,
                             .scaling = scaling};
    must(moeq_cuda_check(moeq_k_router_topk(dl.ptr, &ra, dp.ptr, dw.ptr, de.ptr, ctx.stream),
                         "moeq_k_router_topk", __FILE__, __LINE__, &err),
         &err);
    to_host(w_gpu, &dw);
    to_host(e_gpu, &de);
    to_host(probs_t, &dp);
    size_t same = 0;
    double worst = 0, worst_p = 0;
    for (int t = 0; t < n; t++) {
        size_t same_t = 0;
        for (int j = 0; j < k; j++)
            same_t += e_gpu[(size_t)t * k + j] == e_cpu[(size_t)t * k + j];
        same += same_t;
        for (int j = 0; same_t == (size_t)k && j < k; j++) {
            double d = fabs((double)w_gpu[(size_t)t * k + j] - w_cpu[(size_t)t * k + j]);
            worst = d > worst ? d : worst;
        }
    }
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++) {
            double d = fabs((double)probs_t[(size_t)e * n + t] - probs[(size_t)t * E + e]);
            worst_p = d > worst_p ? d : worst_p;
        }
    printf("     router %-40s top-%d of %d, %d tokens: same experts %zu / %zu, max |dw| %.3g, "
           "max |dp| %.3g\n",
           name, k, E, n, same, (size_t)n * k, worst, worst_p);
    CHECK((size_t)n * k - same <= max_moved);
    CHECK(worst <= 1e-6 * scaling);
    CHECK(worst_p <= 1e-6);
    moeq_cuda_free(&ctx, &dl);
    moeq_cuda_free(&ctx, &db);
    moeq_cuda_free(&ctx, &dw);
    moeq_cuda_free(&ctx, &de);
    moeq_cuda_free(&ctx, &dp);
    free(logits);
    free(bias);
    free(w_cpu);
    free(w_gpu);
    free(e_cpu);
    free(e_gpu);
    free(probs_t);
    free(probs);
}

/* Mixtral, Qwen2/3-MoE: softmax, top-8, renormalised (on an H100 every
 * slot agreed). */
static void test_router_topk_matches_cpu(void)
{
    cpu_router_params rp = {.scoring = CPU_ROUTER_SOFTMAX, .top_k = 8, .norm_topk_prob = 1};
    router_case("softmax", rp, 5000, 128, 0, 0, 63);
}

/* DeepSeek-V2 (group_limited_greedy): softmax, the 3 of 8 groups of highest
 * maximum, no renormalisation, scaled. */
static void test_router_softmax_group_limited_matches_cpu(void)
{
    cpu_router_params rp = {.scoring = CPU_ROUTER_SOFTMAX, .top_k = 6, .n_group = 8,
                            .topk_group = 3, .routed_scaling_factor = 16.0f};
    router_case("softmax, 3 of 8 groups, scaling 16", rp, 5000, 64, 0, 5000 * 6 / 1000, 64);
}

/* DeepSeek-V3 (noaux_tc): sigmoid, the correction bias for the choice only,
 * 4 of 8 groups by their two best, renormalised, scaling 2.5. */
static void test_router_sigmoid_grouped_matches_cpu(void)
{
    cpu_router_params rp = {.scoring = CPU_ROUTER_SIGMOID, .top_k = 8, .norm_topk_prob = 1,
                            .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f};
    router_case("sigmoid + bias, 4 of 8 groups, scaling 2.5", rp, 5000, 256, 0.1f,
                5000 * 8 / 1000, 65);
}

/* GLM-4.5-Air and MiniMax-M2: sigmoid with the bias, no groups. */
static void test_router_sigmoid_ungrouped_matches_cpu(void)
{
    cpu_router_params rp = {.scoring = CPU_ROUTER_SIGMOID, .top_k = 8, .norm_topk_prob = 1,
                            .n_group = 1, .topk_group = 1, .routed_scaling_factor = 1.0f};
    router_case("sigmoid + bias", rp, 5000, 128, 0.1f, 5000 * 8 / 1000, 66);
}

/* Llama-4 (Llama4Router, 128 experts, top-1 as Maverick): the parameters
 * moeq_router_params gives its config (sigmoid of the chosen logit, no
 * bias, no renormalisation, no scaling): every token picks the same expert
 * on both backends. */
static void test_router_llama4_matches_cpu(void)
{
    moeq_config cfg = {.router = MOEQ_ROUTER_TOPK_SIGMOID_INPUT, .num_experts = 128,
                       .num_experts_per_tok = 1};
    cpu_router_params rp = moeq_router_params(&cfg);
    CHECK_INT_EQ(rp.scoring, CPU_ROUTER_SIGMOID);
    CHECK_INT_EQ(rp.norm_topk_prob, 0);
    router_case("Llama-4: sigmoid of the top logit", rp, 5000, 128, 0, 0, 74);
}

/* Groups the kernel cannot hold, or that do not split the experts, are
 * refused rather than routed wrongly. */
static void test_router_rejects_bad_groups(void)
{
    moeq_k_router_args too_many = {.n = 1, .E = 256, .k = 2, .sigmoid = 1, .n_group = 128,
                                   .topk_group = 2, .scaling = 1.0f};
    moeq_k_router_args uneven = {.n = 1, .E = 60, .k = 2, .sigmoid = 1, .n_group = 8,
                                 .topk_group = 2, .scaling = 1.0f};
    CHECK_INT_EQ(moeq_k_router_topk(NULL, &too_many, NULL, NULL, NULL, ctx.stream),
                 cudaErrorInvalidValue);
    CHECK_INT_EQ(moeq_k_router_topk(NULL, &uneven, NULL, NULL, NULL, ctx.stream),
                 cudaErrorInvalidValue);
}

/* Dequantization to bf16: bf16(scale * (code - zero)) exactly, for act-order
 * g_idx; and a gather then weighted scatter-add of rows equals the host
 * loop (one product and one sum per element, both rounded once). */
static void test_dequant_gather_scatter_exact(void)
{
    const int rows = 96, cols = 256, gs = 64;
    test_rng rng = {64};
    moeq_error err = {0};
    moeq_quantized q = {0};
    CHECK_INT_EQ(moeq_quantized_alloc(&q, rows, cols, 4, gs, &err), MOEQ_OK);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        q.codes[i] = (uint8_t)(test_rng_next(&rng) & 15);
    for (int i = 0; i < q.n_groups * rows; i++) {
        q.scales[i] = moeq_f16_to_f32(moeq_f32_to_f16(0.01f * (1.5f + test_rng_uniform(&rng))));
        q.zeros[i] = (int32_t)(test_rng_next(&rng) % 15) + 1;
    }
    for (int c = 0; c < cols; c++)
        q.g_idx[c] = (c * 7) % q.n_groups;
    float *w = xmalloc(sizeof(float) * (size_t)rows * cols);
    moeq_quantized_dequantize(&q, w);
    moeq_cuda_buf dc = to_device(q.codes, (size_t)rows * cols),
                  ds = to_device(q.scales, sizeof(float) * (size_t)q.n_groups * rows),
                  dz = to_device(q.zeros, sizeof(int32_t) * (size_t)q.n_groups * rows),
                  dg = to_device(q.g_idx, sizeof(int32_t) * (size_t)cols), dw;
    must(moeq_cuda_alloc(&ctx, &dw, 2 * (size_t)rows * cols, "w", &err), &err);
    must(moeq_cuda_check(moeq_k_dequant_bf16(dc.ptr, ds.ptr, dz.ptr, dg.ptr, 0, rows, cols, dw.ptr,
                                             ctx.stream),
                         "moeq_k_dequant_bf16", __FILE__, __LINE__, &err),
         &err);
    uint16_t *wb = xmalloc(2 * (size_t)rows * cols);
    to_host(wb, &dw);
    size_t same = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        same += wb[i] == moeq_f32_to_bf16(w[i]);
    CHECK_INT_EQ(same, (size_t)rows * cols);
    /* gather rows 5, 0, 77 of the bf16 matrix; scatter-add them weighted. */
    int32_t idx[3] = {5, 0, 77};
    float wts[3] = {0.5f, -2.0f, 0.25f};
    moeq_cuda_buf di = to_device(idx, sizeof idx), dwt = to_device(wts, sizeof wts), dy, dacc;
    must(moeq_cuda_alloc(&ctx, &dy, 2 * 3 * (size_t)cols, "y", &err), &err);
    must(moeq_cuda_check(moeq_k_gather_rows_bf16(dw.ptr, cols, di.ptr, 3, dy.ptr, ctx.stream),
                         "gather", __FILE__, __LINE__, &err),
         &err);
    uint16_t yb[3 * 256];
    to_host(yb, &dy);
    CHECK(memcmp(yb, wb + (size_t)5 * cols, 2 * (size_t)cols) == 0);
    CHECK(memcmp(yb + 2 * cols, wb + (size_t)77 * cols, 2 * (size_t)cols) == 0);
    /* Llama-4's expert inputs: the gathered rows scaled in place by the
     * routing weights, bf16(w x) rounded once. */
    moeq_cuda_buf dys;
    must(moeq_cuda_alloc(&ctx, &dys, dy.bytes, "scaled y", &err), &err);
    must(moeq_cuda_check(moeq_k_gather_rows_bf16(dw.ptr, cols, di.ptr, 3, dys.ptr, ctx.stream),
                         "gather", __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_check(moeq_k_scale_rows(dys.ptr, 1, dwt.ptr, 3, cols, dys.ptr, ctx.stream),
                         "scale rows", __FILE__, __LINE__, &err),
         &err);
    uint16_t ys[3 * 256];
    to_host(ys, &dys);
    size_t scaled_same = 0;
    for (int i = 0; i < 3 * cols; i++)
        scaled_same += ys[i] == moeq_f32_to_bf16(wts[i / cols] * moeq_bf16_to_f32(yb[i]));
    CHECK_INT_EQ(scaled_same, (size_t)3 * cols);
    moeq_cuda_free(&ctx, &dys);
    float yf[3 * 256], acc[100 * 256];
    for (int i = 0; i < 3 * cols; i++)
        yf[i] = moeq_bf16_to_f32(yb[i]);
    for (int i = 0; i < 100 * cols; i++)
        acc[i] = 0.125f * (float)(i % 9);
    moeq_cuda_buf dyf = to_device(yf, sizeof yf);
    dacc = to_device(acc, sizeof acc);
    must(moeq_cuda_check(moeq_k_scatter_add_rows(dyf.ptr, cols, di.ptr, dwt.ptr, 3, dacc.ptr,
                                                 ctx.stream),
                         "scatter", __FILE__, __LINE__, &err),
         &err);
    float got[100 * 256];
    to_host(got, &dacc);
    for (int i = 0; i < 3; i++)
        for (int c = 0; c < cols; c++)
            acc[(size_t)idx[i] * cols + c] += wts[i] * yf[(size_t)i * cols + c];
    CHECK(memcmp(got, acc, sizeof acc) == 0);
    moeq_cuda_buf *bufs[] = {&dc, &ds, &dz, &dg, &dw, &di, &dwt, &dy, &dyf, &dacc};
    for (int i = 0; i < 10; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    moeq_quantized_free(&q);
    free(w);
    free(wb);
}

/* ---- output-gated attention and the Gated DeltaNet token mixer */

/* The output gate of Qwen3-Next's attention: q_proj's [query | gate] per
 * head split exactly, then the bf16 attention output times sigmoid(gate)
 * (cpu_sigmoid) rounded once more to bf16: within one bf16 ulp (2^-8
 * relative) of the CPU's fp32 product of the same bf16 input. */
static void test_output_gate_matches_cpu(void)
{
    const int T = 130, heads = 6, D = 64;
    const size_t rows = (size_t)T * heads, nq = rows * D;
    test_rng rng = {90};
    moeq_error err = {0};
    float *qg = random_floats(&rng, 2 * nq, 6.0f), *o = random_floats(&rng, nq, 3.0f);
    uint16_t *ob = xmalloc(sizeof(uint16_t) * nq);
    round_to_bf16(o, nq, ob);
    float *q_gpu = xmalloc(sizeof(float) * nq), *gate_gpu = xmalloc(sizeof(float) * nq);
    float *sig = xmalloc(sizeof(float) * nq);
    moeq_cuda_buf dqg = to_device(qg, sizeof(float) * 2 * nq), dob = to_device(ob, 2 * nq), dq,
                  dgate;
    must(moeq_cuda_alloc(&ctx, &dq, sizeof(float) * nq, "q", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dgate, sizeof(float) * nq, "gate", &err), &err);
    CHECK_INT_EQ(moeq_k_split_query_gate(dqg.ptr, (long long)rows, D, dq.ptr, dgate.ptr,
                                         ctx.stream),
                 cudaSuccess);
    CHECK_INT_EQ(moeq_k_sigmoid_gate_bf16(dob.ptr, dgate.ptr, nq, ctx.stream), cudaSuccess);
    to_host(q_gpu, &dq);
    to_host(gate_gpu, &dgate);
    to_host(ob, &dob);
    size_t split_diffs = 0, outside = 0;
    for (size_t r = 0; r < rows; r++)
        for (int i = 0; i < D; i++) {
            split_diffs += q_gpu[r * D + i] != qg[r * 2 * D + i];
            split_diffs += gate_gpu[r * D + i] != qg[r * 2 * D + D + i];
            sig[r * D + i] = qg[r * 2 * D + D + i];
        }
    cpu_sigmoid(sig, nq, sig);
    for (size_t i = 0; i < nq; i++) {
        float want = o[i] * sig[i], got = moeq_bf16_to_f32(ob[i]);
        outside += fabsf(got - want) > ldexpf(fabsf(want), -8) + 1e-30f;
    }
    printf("     output gate %zu values: split diffs %zu, beyond one bf16 ulp %zu\n", nq,
           split_diffs, outside);
    CHECK_INT_EQ(split_diffs, 0);
    CHECK_INT_EQ(outside, 0);
    moeq_cuda_buf *bufs[] = {&dqg, &dob, &dq, &dgate};
    for (int i = 0; i < 4; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    free(qg);
    free(o);
    free(ob);
    free(q_gpu);
    free(gate_gpu);
    free(sig);
}

/* q, k rows L2-normed (q also scaled by 1/sqrt(Dk)), as the core feeds the
 * rule; v in [-2, 2]; g in [-1, 0]; beta in (0, 1). */
static void random_delta_inputs(test_rng *rng, int tokens, int Hk, int Hv, int Dk, int Dv,
                                float **q, float **k, float **v, float **g, float **beta)
{
    *q = random_floats(rng, (size_t)tokens * Hk * Dk, 1.0f);
    *k = random_floats(rng, (size_t)tokens * Hk * Dk, 1.0f);
    *v = random_floats(rng, (size_t)tokens * Hv * Dv, 2.0f);
    *g = random_floats(rng, (size_t)tokens * Hv, 0.5f);
    *beta = random_floats(rng, (size_t)tokens * Hv, 0.5f);
    for (size_t r = 0; r < (size_t)tokens * Hk; r++) {
        float *vecs[2] = {*q + r * Dk, *k + r * Dk};
        for (int j = 0; j < 2; j++) {
            double ss = 0;
            for (int i = 0; i < Dk; i++)
                ss += (double)vecs[j][i] * vecs[j][i];
            float s = (float)(1.0 / sqrt(ss)) * (j ? 1.0f : 1.0f / sqrtf((float)Dk));
            for (int i = 0; i < Dk; i++)
                vecs[j][i] *= s;
        }
    }
    for (size_t i = 0; i < (size_t)tokens * Hv; i++) {
        (*g)[i] -= 0.5f;
        (*beta)[i] += 0.5f;
    }
}

/* The gated delta rule on the GPU (moeq_k_delta_rule: the recurrence in
 * fp32) against both CPU forms (deltanet.c: moeq_delta_rule_recurrent and
 * moeq_delta_rule_chunked with 64-token chunks) on seqs sequences, q/k/v
 * read as the GPU stage lays them out ([q | k | v] rows of a conv output,
 * stride 2 Hk Dk + Hv Dv). Sums run in another order: max |gpu - cpu| at
 * most 1e-4 of max |cpu| against either form (the two CPU forms are held
 * to the same bound against each other). */
static void delta_rule_case(int seqs, int T, int Hk, int Hv, int Dk, int Dv, uint64_t seed)
{
    const int tokens = seqs * T, kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd;
    test_rng rng = {seed};
    moeq_error err = {0};
    float *q, *k, *v, *g, *beta;
    random_delta_inputs(&rng, tokens, Hk, Hv, Dk, Dv, &q, &k, &v, &g, &beta);
    float *rec = xmalloc(sizeof(float) * (size_t)tokens * vd);
    float *chk = xmalloc(sizeof(float) * (size_t)tokens * vd);
    float *gpu = xmalloc(sizeof(float) * (size_t)tokens * vd);
    for (int s = 0; s < seqs; s++) {
        const size_t t0 = (size_t)s * T;
        moeq_delta_inputs in = {q + t0 * kd, k + t0 * kd, v + t0 * vd, g + t0 * Hv,
                                beta + t0 * Hv, T, Hk, Hv, Dk, Dv};
        CHECK_INT_EQ(moeq_delta_rule_recurrent(&in, rec + t0 * vd, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_delta_rule_chunked(&in, MOEQ_DELTA_CHUNK, chk + t0 * vd, &err),
                     MOEQ_OK);
    }
    float *packed = xmalloc(sizeof(float) * (size_t)tokens * C);
    for (size_t t = 0; t < (size_t)tokens; t++) {
        memcpy(packed + t * C, q + t * kd, sizeof(float) * kd);
        memcpy(packed + t * C + kd, k + t * kd, sizeof(float) * kd);
        memcpy(packed + t * C + 2 * kd, v + t * vd, sizeof(float) * vd);
    }
    moeq_cuda_buf dp = to_device(packed, sizeof(float) * (size_t)tokens * C);
    moeq_cuda_buf dg = to_device(g, sizeof(float) * (size_t)tokens * Hv);
    moeq_cuda_buf db = to_device(beta, sizeof(float) * (size_t)tokens * Hv), dout;
    must(moeq_cuda_alloc(&ctx, &dout, sizeof(float) * (size_t)tokens * vd, "out", &err), &err);
    const float *base = dp.ptr;
    moeq_k_delta_args a = {.q = base, .k = base + kd, .v = base + 2 * kd, .ld_qk = C, .ld_v = C,
                           .g = dg.ptr, .beta = db.ptr, .seqs = seqs, .T = T, .Hk = Hk,
                           .Hv = Hv, .Dk = Dk, .Dv = Dv, .out = dout.ptr};
    double t0 = now_seconds();
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaSuccess);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double ms = (now_seconds() - t0) * 1e3;
    to_host(gpu, &dout);
    const size_t n = (size_t)tokens * vd;
    double d_rec = max_rel_diff(gpu, rec, n), d_chk = max_rel_diff(gpu, chk, n),
           d_cpu = max_rel_diff(chk, rec, n);
    printf("     delta rule %d x %d tokens, %d/%d heads of %d/%d: max rel diff vs recurrent "
           "%.3g, vs chunked %.3g (CPU forms %.3g); %.2f ms\n",
           seqs, T, Hk, Hv, Dk, Dv, d_rec, d_chk, d_cpu, ms);
    CHECK(d_rec <= 1e-4);
    CHECK(d_chk <= 1e-4);
    CHECK(d_cpu <= 1e-4);
    moeq_cuda_buf *bufs[] = {&dp, &dg, &db, &dout};
    for (int i = 0; i < 4; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    float *host[] = {q, k, v, g, beta, rec, chk, gpu, packed};
    for (int i = 0; i < 9; i++)
        free(host[i]);
}

/* The fixtures' heads (16), ragged chunks and a warp a column group ends
 * (Dv 20: 80 threads), Qwen3.5-35B-A3B's heads of 128 with its 2 value
 * heads per key head on one 2048-token window (4 of its 32 value heads:
 * the CPU recurrence is the slow part), and 1 key head shared by 4 value
 * heads. */
static void test_delta_rule_matches_cpu_recurrent_and_chunked(void)
{
    delta_rule_case(3, 150, 2, 4, 16, 16, 91);
    delta_rule_case(2, 97, 3, 3, 24, 20, 92);
    delta_rule_case(1, 2048, 2, 4, 128, 128, 93);
    delta_rule_case(4, 64, 1, 4, 128, 128, 94);
}

/* Key or value heads over 128 are refused, not computed. */
static void test_delta_rule_rejects_heads_it_cannot_hold(void)
{
    moeq_k_delta_args a = {.seqs = 1, .T = 4, .Hk = 1, .Hv = 1, .Dk = 256, .Dv = 128};
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaErrorInvalidValue);
    a.Dk = 128;
    a.Dv = 256;
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaErrorInvalidValue);
    a.Dv = 128;
    a.Hv = 3;
    a.Hk = 2;
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaErrorInvalidValue);
}

/* The whole core after the projections, as deltanet_cuda.c chains it
 * (unpack, conv1d + SiLU, L2 norms, gates, delta rule, gated RMSNorm to
 * bf16), against moeq_deltanet_core (fp32, chunked rule) on random weights
 * and normed inputs, fused (Qwen3-Next) and separate (Qwen3.5)
 * projections; the projections are the CPU's (cpu_linear), so only the
 * kernels differ. Each output within one bf16 ulp (2^-8 relative) of the
 * CPU's plus 1e-4 of the largest: the fp32 chain agrees to about 1e-5 and
 * the result is rounded once to bf16. */
static void deltanet_core_case(int fused, int seqs, int T, int H, int Hk, int Hv, int Dk, int Dv,
                               int K, uint64_t seed)
{
    const int n = seqs * T, kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd;
    test_rng rng = {seed};
    moeq_error err = {0};
    moeq_config cfg = {.hidden_size = H, .rms_norm_eps = 1e-6f, .la_num_k_heads = Hk,
                       .la_num_v_heads = Hv, .la_k_head_dim = Dk, .la_v_head_dim = Dv,
                       .la_conv_kernel = K};
    moeq_layer_weights lw = {.layer = 0, .is_linear = 1};
    moeq_deltanet_weights *w = &lw.la;
    const float ws = 1.0f / sqrtf((float)H);
    if (fused) {
        w->in_qkvz = random_floats(&rng, (size_t)(C + vd) * H, ws);
        w->in_ba = random_floats(&rng, (size_t)2 * Hv * H, ws);
    } else {
        w->in_qkv = random_floats(&rng, (size_t)C * H, ws);
        w->in_z = random_floats(&rng, (size_t)vd * H, ws);
        w->in_b = random_floats(&rng, (size_t)Hv * H, ws);
        w->in_a = random_floats(&rng, (size_t)Hv * H, ws);
    }
    w->conv = random_floats(&rng, (size_t)C * K, 0.5f);
    w->dt_bias = random_floats(&rng, (size_t)Hv, 1.0f);
    w->a_log = random_floats(&rng, (size_t)Hv, 1.0f);
    w->norm = random_floats(&rng, (size_t)Dv, 0.5f);
    for (int i = 0; i < Dv; i++)
        w->norm[i] += 1.0f;
    float *h = random_floats(&rng, (size_t)n * H, 1.0f);
    float *o_cpu = xmalloc(sizeof(float) * (size_t)n * vd);
    CHECK_INT_EQ(moeq_deltanet_core(&cfg, &lw, h, seqs, T, o_cpu, &err), MOEQ_OK);
    /* The projections as the GPU stage's GEMMs lay them out. */
    float *proj = xmalloc(sizeof(float) * (size_t)n * (C + vd));
    float *pba = xmalloc(sizeof(float) * (size_t)n * 2 * Hv);
    float *tmp = xmalloc(sizeof(float) * (size_t)n * (C + vd));
    if (fused) {
        cpu_linear(h, n, H, w->in_qkvz, NULL, C + vd, proj);
        cpu_linear(h, n, H, w->in_ba, NULL, 2 * Hv, pba);
    } else {
        const float *parts[4] = {w->in_qkv, w->in_z, w->in_b, w->in_a};
        const int rows[4] = {C, vd, Hv, Hv};
        for (int p = 0; p < 4; p++) {
            float *dst = p < 2 ? proj : pba;
            const int width = p < 2 ? C + vd : 2 * Hv, at = p == 1 ? C : p == 3 ? Hv : 0;
            cpu_linear(h, n, H, parts[p], NULL, rows[p], tmp);
            for (int t = 0; t < n; t++)
                memcpy(dst + (size_t)t * width + at, tmp + (size_t)t * rows[p],
                       sizeof(float) * rows[p]);
        }
    }
    moeq_cuda_buf dproj = to_device(proj, sizeof(float) * (size_t)n * (C + vd));
    moeq_cuda_buf dpba = to_device(pba, sizeof(float) * (size_t)n * 2 * Hv);
    moeq_cuda_buf dconv = to_device(w->conv, sizeof(float) * (size_t)C * K);
    moeq_cuda_buf dalog = to_device(w->a_log, sizeof(float) * Hv);
    moeq_cuda_buf ddt = to_device(w->dt_bias, sizeof(float) * Hv);
    moeq_cuda_buf dnorm = to_device(w->norm, sizeof(float) * Dv);
    moeq_cuda_buf dqkv, dz, db, da, dcv, dout;
    must(moeq_cuda_alloc(&ctx, &dqkv, sizeof(float) * (size_t)n * C, "qkv", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dz, sizeof(float) * (size_t)n * vd, "z", &err), &err);
    must(moeq_cuda_alloc(&ctx, &db, sizeof(float) * (size_t)n * Hv, "b", &err), &err);
    must(moeq_cuda_alloc(&ctx, &da, sizeof(float) * (size_t)n * Hv, "a", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dcv, sizeof(float) * (size_t)n * C, "conv", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dout, 2 * (size_t)n * vd, "out", &err), &err);
    float *cv = dcv.ptr;
    moeq_k_delta_args a = {.q = cv, .k = cv + kd, .v = cv + 2 * kd, .ld_qk = C, .ld_v = C,
                           .g = da.ptr, .beta = db.ptr, .seqs = seqs, .T = T, .Hk = Hk,
                           .Hv = Hv, .Dk = Dk, .Dv = Dv, .out = dqkv.ptr};
    CHECK_INT_EQ(moeq_k_deltanet_unpack(dproj.ptr, dpba.ptr, n, Hk, Hv, Dk, Dv, fused, dqkv.ptr,
                                        dz.ptr, db.ptr, da.ptr, ctx.stream),
                 cudaSuccess);
    CHECK_INT_EQ(moeq_k_causal_conv_silu(dqkv.ptr, dconv.ptr, T, n, C, K, cv, ctx.stream),
                 cudaSuccess);
    CHECK_INT_EQ(moeq_k_l2norm_heads(cv, n, Hk, Dk, C, 1.0f / sqrtf((float)Dk), ctx.stream),
                 cudaSuccess);
    CHECK_INT_EQ(moeq_k_l2norm_heads(cv + kd, n, Hk, Dk, C, 1.0f, ctx.stream), cudaSuccess);
    CHECK_INT_EQ(moeq_k_deltanet_gates(db.ptr, da.ptr, dalog.ptr, ddt.ptr, n, Hv, ctx.stream),
                 cudaSuccess);
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaSuccess);
    CHECK_INT_EQ(moeq_k_gated_rmsnorm_bf16(dqkv.ptr, dz.ptr, dnorm.ptr, (long long)n * Hv, Dv,
                                           cfg.rms_norm_eps, dout.ptr, ctx.stream),
                 cudaSuccess);
    uint16_t *ob = xmalloc(2 * (size_t)n * vd);
    to_host(ob, &dout);
    double ref = 0, worst = 0;
    for (size_t i = 0; i < (size_t)n * vd; i++)
        ref = fabs(o_cpu[i]) > ref ? fabs(o_cpu[i]) : ref;
    size_t outside = 0;
    for (size_t i = 0; i < (size_t)n * vd; i++) {
        double got = moeq_bf16_to_f32(ob[i]), d = fabs(got - o_cpu[i]);
        worst = d > worst ? d : worst;
        outside += d > ldexp(fabs(o_cpu[i]), -8) + 1e-4 * ref;
    }
    printf("     deltanet core %s, %d x %d tokens, %d/%d heads of %d/%d, conv %d: max |diff| "
           "%.3g of max %.3g, beyond the bound %zu\n",
           fused ? "fused" : "separate", seqs, T, Hk, Hv, Dk, Dv, K, worst, ref, outside);
    CHECK(ref > 0);
    CHECK_INT_EQ(outside, 0);
    moeq_cuda_buf *bufs[] = {&dproj, &dpba, &dconv, &dalog, &ddt, &dnorm,
                             &dqkv,  &dz,   &db,    &da,    &dcv, &dout};
    for (int i = 0; i < 12; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    float *host[] = {w->in_qkvz, w->in_ba, w->in_qkv, w->in_z, w->in_b, w->in_a, w->conv,
                     w->dt_bias, w->a_log, w->norm, h, o_cpu, proj, pba, tmp};
    for (int i = 0; i < 15; i++)
        free(host[i]);
    free(ob);
}

static void test_deltanet_core_matches_cpu(void)
{
    deltanet_core_case(1, 3, 150, 64, 2, 4, 16, 16, 4, 95);
    deltanet_core_case(0, 3, 150, 64, 2, 4, 16, 16, 4, 96);
    deltanet_core_case(1, 2, 100, 96, 2, 6, 32, 24, 3, 97);
    deltanet_core_case(0, 1, 300, 256, 2, 4, 128, 128, 4, 98);
}

/* ---- memory accounting */

static void test_memory_accounting_tracks_in_use_and_peak(void)
{
    moeq_error err = {0};
    size_t base = ctx.bytes_in_use;
    moeq_cuda_buf a, b;
    must(moeq_cuda_alloc(&ctx, &a, 1 << 20, "a", &err), &err);
    must(moeq_cuda_alloc(&ctx, &b, 3 << 20, "b", &err), &err);
    CHECK_INT_EQ(ctx.bytes_in_use, base + (4 << 20));
    CHECK(ctx.peak_bytes >= base + (4 << 20));
    moeq_cuda_free(&ctx, &a);
    moeq_cuda_free(&ctx, &b);
    CHECK_INT_EQ(ctx.bytes_in_use, base);
    CHECK(b.ptr == NULL && b.bytes == 0);
    CHECK_INT_EQ(moeq_cuda_alloc(&ctx, &a, (size_t)1 << 50, "a petabyte", &err), MOEQ_ERR_OOM);
    CHECK_CONTAINS(err.msg, "a petabyte");
    CHECK_INT_EQ(ctx.bytes_in_use, base);
}

/* ---- AWQ */

static moeq_k_awq_grid awq_grid(const moeq_gptq_config *c)
{
    return (moeq_k_awq_grid){c->bits, c->sym, c->scale_bf16, c->group_size};
}

/* Scales as AWQ makes them: positive, over three orders of magnitude. */
static float *awq_random_scales(test_rng *rng, int n)
{
    float *s = xmalloc(sizeof(float) * (size_t)n);
    for (int j = 0; j < n; j++)
        s[j] = powf(10.0f, 1.5f * test_rng_uniform(rng));
    return s;
}

/* The fake quantization of rows x cols (bf16-exact weights, given as bf16
 * or fp32) with and without a scale, against moeq_awq_pseudo_quantize: the
 * same bits in fp32, and the same bf16 rounding of them. */
static void awq_fake_quant_case(const moeq_gptq_config *c, int rows, int cols, uint64_t seed)
{
    test_rng rng = {seed};
    moeq_error err = {0};
    const size_t count = (size_t)rows * cols;
    float *w = random_floats(&rng, count, 0.05f);
    for (size_t i = 0; i < count; i += 97) /* outliers, as real weights have */
        w[i] *= 20.0f;
    uint16_t *w16 = xmalloc(2 * count);
    round_to_bf16(w, count, w16);
    float *s = awq_random_scales(&rng, cols), *ref = xmalloc(sizeof(float) * count);
    float *got = xmalloc(sizeof(float) * count);
    uint16_t *got16 = xmalloc(2 * count);
    const moeq_k_awq_grid kq = awq_grid(c);
    moeq_cuda_buf dw = to_device(w, sizeof(float) * count), dw16 = to_device(w16, 2 * count),
                  ds = to_device(s, sizeof(float) * (size_t)cols), dout, dout16;
    must(moeq_cuda_alloc(&ctx, &dout, sizeof(float) * count, "out", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dout16, 2 * count, "out bf16", &err), &err);
    for (int scaled = 0; scaled < 2; scaled++) {
        moeq_awq_pseudo_quantize(w, rows, cols, scaled ? s : NULL, c, ref);
        for (int src16 = 0; src16 < 2; src16++) {
            must(moeq_cuda_check(moeq_k_awq_fake_quant(src16 ? dw16.ptr : dw.ptr, src16, rows,
                                                       cols, scaled ? ds.ptr : NULL, &kq,
                                                       dout.ptr, 0, ctx.stream),
                                 "moeq_k_awq_fake_quant", __FILE__, __LINE__, &err),
                 &err);
            must(moeq_cuda_check(moeq_k_awq_fake_quant(src16 ? dw16.ptr : dw.ptr, src16, rows,
                                                       cols, scaled ? ds.ptr : NULL, &kq,
                                                       dout16.ptr, 1, ctx.stream),
                                 "moeq_k_awq_fake_quant", __FILE__, __LINE__, &err),
                 &err);
            to_host(got, &dout);
            to_host(got16, &dout16);
            size_t same = 0, same16 = 0;
            for (size_t i = 0; i < count; i++) {
                same += memcmp(&got[i], &ref[i], sizeof(float)) == 0;
                same16 += got16[i] == moeq_f32_to_bf16(ref[i]);
            }
            if (same != count || same16 != count)
                printf("     fake quant %d bits group %d sym %d bf16-scales %d scaled %d bf16 "
                       "source %d: %zu and %zu of %zu identical\n",
                       c->bits, c->group_size, c->sym, c->scale_bf16, scaled, src16, same,
                       same16, count);
            CHECK_INT_EQ(same, count);
            CHECK_INT_EQ(same16, count);
        }
    }
    moeq_cuda_buf *bufs[] = {&dw, &dw16, &ds, &dout, &dout16};
    for (int i = 0; i < 5; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    free(w);
    free(w16);
    free(s);
    free(ref);
    free(got);
    free(got16);
}

static void test_awq_fake_quant_bit_exact(void)
{
    moeq_gptq_config c = moeq_gptq_default_config();
    awq_fake_quant_case(&c, 96, 256, 91); /* 4 bits, group 128, asymmetric */
    c.sym = 1;
    c.group_size = 32;
    awq_fake_quant_case(&c, 64, 192, 92);
    c.sym = 0;
    c.bits = 3;
    c.group_size = -1;
    c.scale_bf16 = 1;
    awq_fake_quant_case(&c, 40, 320, 93);
    c.bits = 2;
    c.group_size = 64;
    awq_fake_quant_case(&c, 33, 128, 94);
}

/* The rounding of AWQ's final weights against moeq_awq_quantize: with a
 * second moment H, the clipping search (grids and loss within the bounds
 * stated at the top); without (q/k_proj), identical bytes. */
static void awq_clip_case(const moeq_gptq_config *c, int rows, int cols, int tokens, uint64_t seed)
{
    test_rng rng = {seed};
    moeq_error err = {0};
    const size_t count = (size_t)rows * cols;
    float *w = random_floats(&rng, count, 0.05f);
    for (size_t i = 0; i < count; i += 61)
        w[i] *= 15.0f;
    /* H = x^T x / tokens of inputs with per-column magnitudes, as the
     * scaled activations AWQ's H comes from. */
    float *x = random_floats(&rng, (size_t)tokens * cols, 1.0f), *H = xmalloc(sizeof(float) * (size_t)cols * cols);
    float *s = awq_random_scales(&rng, cols);
    for (int t = 0; t < tokens; t++)
        for (int j = 0; j < cols; j++)
            x[(size_t)t * cols + j] *= s[j];
    memset(H, 0, sizeof(float) * (size_t)cols * cols);
    cpu_hessian_accumulate(H, x, tokens, cols, 1.0f / (float)tokens);
    const moeq_k_awq_grid kq = awq_grid(c);
    const int gs = c->group_size > 0 ? c->group_size : cols, ng = cols / gs;
    moeq_cuda_buf dw = to_device(w, sizeof(float) * count),
                  dh = to_device(H, sizeof(float) * (size_t)cols * cols), dc, dsc, dz, dl;
    must(moeq_cuda_alloc(&ctx, &dc, count, "codes", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dsc, sizeof(float) * (size_t)ng * rows, "scales", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dz, sizeof(int32_t) * (size_t)ng * rows, "zeros", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dl, sizeof(double) * (size_t)rows, "loss", &err), &err);
    uint8_t *codes = xmalloc(count);
    float *scales = xmalloc(sizeof(float) * (size_t)ng * rows);
    int32_t *zeros = xmalloc(sizeof(int32_t) * (size_t)ng * rows);
    double *loss = xmalloc(sizeof(double) * (size_t)rows);
    for (int clip = 0; clip < 2; clip++) {
        moeq_quantized ref = {0};
        double ref_loss = 0;
        CHECK_INT_EQ(moeq_awq_quantize(w, rows, cols, clip ? H : NULL, c, &ref, &ref_loss, &err),
                     MOEQ_OK);
        double t0 = now_seconds();
        must(moeq_cuda_check(moeq_k_awq_clip_quantize(dw.ptr, rows, cols, clip ? dh.ptr : NULL,
                                                      &kq, dc.ptr, dsc.ptr, dz.ptr, rows, dl.ptr,
                                                      ctx.stream),
                             "moeq_k_awq_clip_quantize", __FILE__, __LINE__, &err),
             &err);
        must(moeq_cuda_sync(&ctx, &err), &err);
        double ms = 1e3 * (now_seconds() - t0);
        to_host(codes, &dc);
        to_host(scales, &dsc);
        to_host(zeros, &dz);
        to_host(loss, &dl);
        size_t same_grids = 0, same_codes = 0;
        double total = 0;
        for (int i = 0; i < ng * rows; i++)
            same_grids += scales[i] == ref.scales[i] && zeros[i] == ref.zeros[i];
        for (size_t i = 0; i < count; i++)
            same_codes += codes[i] == ref.codes[i];
        for (int r = 0; r < rows; r++)
            total += loss[r];
        printf("     AWQ rounding %d bits group %d sym %d %s: grids %zu/%d, codes %zu/%zu "
               "identical, loss gpu %.9g cpu %.9g (%.2f ms)\n",
               c->bits, c->group_size, c->sym, clip ? "clipped" : "min/max", same_grids,
               ng * rows, same_codes, count, total, ref_loss, ms);
        if (clip) {
            CHECK((double)same_grids >= 0.999 * ng * rows);
            CHECK_NEAR(total, ref_loss, 0, 1e-5);
            CHECK(ref_loss > 0);
        } else {
            CHECK_INT_EQ(same_grids, ng * rows);
            CHECK_INT_EQ(same_codes, count);
            CHECK(total == 0);
        }
        moeq_quantized_free(&ref);
    }
    moeq_cuda_buf *bufs[] = {&dw, &dh, &dc, &dsc, &dz, &dl};
    for (int i = 0; i < 6; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    free(w);
    free(x);
    free(H);
    free(s);
    free(codes);
    free(scales);
    free(zeros);
    free(loss);
}

static void test_awq_clip_quantize_matches_cpu(void)
{
    moeq_gptq_config c = moeq_gptq_default_config();
    awq_clip_case(&c, 96, 256, 512, 95);
    c.sym = 1;
    c.group_size = 32;
    c.scale_bf16 = 1;
    awq_clip_case(&c, 48, 128, 256, 96);
    c.sym = 0;
    c.bits = 3;
    c.group_size = -1; /* one group per row: e^T H e over the whole row */
    awq_clip_case(&c, 24, 384, 256, 97);
}

/* Per-column sums of |x| (bf16 rows, all of them or listed ones, weighted
 * or not) against moeq_awq_act_abs_sum; then a second call adds to them.
 * Double sums in another order: 1e-12 relative. And the weighted squared
 * error of two fp32 matrices against a double sum on the host. */
static void test_awq_statistics_match_cpu(void)
{
    const int rows = 3000, cols = 200, m = 700;
    test_rng rng = {98};
    moeq_error err = {0};
    float *x = random_floats(&rng, (size_t)rows * cols, 3.0f), *w = random_floats(&rng, rows, 1.0f);
    uint16_t *xb = xmalloc(2 * (size_t)rows * cols);
    round_to_bf16(x, (size_t)rows * cols, xb);
    int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)m);
    float *xs = xmalloc(sizeof(float) * (size_t)m * cols), *ws = xmalloc(sizeof(float) * (size_t)m);
    for (int i = 0; i < rows; i++)
        w[i] = fabsf(w[i]);
    for (int i = 0; i < m; i++) {
        idx[i] = (int32_t)((i * 37 + 11) % rows);
        memcpy(xs + (size_t)i * cols, x + (size_t)idx[i] * cols, sizeof(float) * cols);
        ws[i] = w[i];
    }
    double *ref = calloc((size_t)cols, sizeof(double)), *got = xmalloc(sizeof(double) * cols);
    moeq_awq_act_abs_sum(x, rows, cols, NULL, ref);
    moeq_awq_act_abs_sum(xs, m, cols, ws, ref);
    moeq_cuda_buf dx = to_device(xb, 2 * (size_t)rows * cols), di = to_device(idx, sizeof(int32_t) * m),
                  dw = to_device(w, sizeof(float) * rows), dacc, dpart;
    must(moeq_cuda_alloc(&ctx, &dacc, sizeof(double) * cols, "acc", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dpart, sizeof(double) * MOEQ_K_AWQ_PARTS * cols, "parts", &err),
         &err);
    must(moeq_cuda_check(cudaMemsetAsync(dacc.ptr, 0, dacc.bytes, ctx.stream), "memset", __FILE__,
                         __LINE__, &err),
         &err);
    must(moeq_cuda_check(moeq_k_awq_act_abs_sum(dx.ptr, cols, NULL, NULL, rows, cols, dpart.ptr,
                                                dacc.ptr, ctx.stream),
                         "moeq_k_awq_act_abs_sum", __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_check(moeq_k_awq_act_abs_sum(dx.ptr, cols, di.ptr, dw.ptr, m, cols, dpart.ptr,
                                                dacc.ptr, ctx.stream),
                         "moeq_k_awq_act_abs_sum", __FILE__, __LINE__, &err),
         &err);
    to_host(got, &dacc);
    double worst = 0;
    for (int j = 0; j < cols; j++) {
        double d = fabs(got[j] - ref[j]) / ref[j];
        worst = d > worst ? d : worst;
    }
    printf("     AWQ activation statistics: max relative difference %.3g\n", worst);
    CHECK(worst <= 1e-12);
    /* Weighted squared error of y against r over rows x cols. */
    float *y = random_floats(&rng, (size_t)rows * cols, 1.0f), *r = random_floats(&rng, (size_t)rows * cols, 1.0f);
    double want = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double d = (double)y[(size_t)i * cols + j] - r[(size_t)i * cols + j];
            want += (double)w[i] * d * d;
        }
    moeq_cuda_buf dy = to_device(y, sizeof(float) * (size_t)rows * cols),
                  dr = to_device(r, sizeof(float) * (size_t)rows * cols),
                  dt = to_device(&(double){1.5}, sizeof(double));
    must(moeq_cuda_check(moeq_k_awq_sq_error(dy.ptr, dr.ptr, rows, cols, dw.ptr, dpart.ptr, dt.ptr,
                                             ctx.stream),
                         "moeq_k_awq_sq_error", __FILE__, __LINE__, &err),
         &err);
    double total = 0;
    to_host(&total, &dt);
    printf("     AWQ squared error: gpu %.12g, host %.12g (+ 1.5 already there)\n", total,
           want + 1.5);
    CHECK_NEAR(total, want + 1.5, 0, 1e-12);
    moeq_cuda_buf *bufs[] = {&dx, &di, &dw, &dacc, &dpart, &dy, &dr, &dt};
    for (int i = 0; i < 8; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    free(x);
    free(w);
    free(xb);
    free(idx);
    free(xs);
    free(ws);
    free(ref);
    free(got);
    free(y);
    free(r);
}

/* ---- timings at model shapes */

/* Fills a device buffer of total bytes by repeating a host pattern. */
static void fill_repeating(moeq_cuda_buf *b, const void *pattern, size_t pattern_bytes)
{
    moeq_error err = {0};
    for (size_t off = 0; off < b->bytes; off += pattern_bytes) {
        size_t nb = b->bytes - off < pattern_bytes ? b->bytes - off : pattern_bytes;
        must(moeq_cuda_upload(&ctx, (char *)b->ptr + off, pattern, nb, &err), &err);
    }
    must(moeq_cuda_sync(&ctx, &err), &err);
}

/* Hessian of 262144 tokens x 2048 bf16 (one layer's calibration set of a
 * 2048-wide model): counted as the full GEMM, 2 rows n^2 flops. */
static void test_timing_hessian_bf16_262144x2048(void)
{
    const int rows = 262144, n = 2048, reps = 5;
    test_rng rng = {61};
    moeq_error err = {0};
    size_t block = (size_t)2048 * n;
    float *xf = random_floats(&rng, block, 1.0f);
    uint16_t *xb = xmalloc(sizeof(uint16_t) * block);
    round_to_bf16(xf, block, xb);
    moeq_cuda_buf dx, dH;
    must(moeq_cuda_alloc(&ctx, &dx, sizeof(uint16_t) * (size_t)rows * n, "tokens", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dH, sizeof(float) * (size_t)n * n, "H", &err), &err);
    fill_repeating(&dx, xb, sizeof(uint16_t) * block);
    must(moeq_cuda_check(cudaMemsetAsync(dH.ptr, 0, dH.bytes, ctx.stream), "cudaMemsetAsync",
                         __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_hessian_accumulate(&ctx, dH.ptr, dx.ptr, MOEQ_CUDA_BF16, rows, n, 1.0f, &err),
         &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double t0 = now_seconds();
    for (int k = 0; k < reps; k++)
        must(moeq_cuda_hessian_accumulate(&ctx, dH.ptr, dx.ptr, MOEQ_CUDA_BF16, rows, n, 1.0f,
                                          &err),
             &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double s = (now_seconds() - t0) / reps;
    printf("     TIMING hessian bf16 %d x %d: %.3f ms, %.1f TFLOP/s (2 rows n^2 flops)\n", rows, n,
           s * 1e3, 2.0 * rows * (double)n * n / s / 1e12);
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &dH);
    free(xf);
    free(xb);
}

/* GPTQ of one expert group: 128 experts' gate_proj [768, 2048] sharing one
 * Hessian (router bypassed), 4-bit g128 act-order; prepare, then the sweep
 * of 98304 rows; the first expert's rows checked against the CPU sweep on
 * the same (GPU) preparation. */
static void test_timing_gptq_2048x768x128_experts(void)
{
    const int cols = 2048, expert_rows = 768, experts = 128, rows = expert_rows * experts;
    test_rng rng = {62};
    moeq_error err = {0};
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.desc_act = 1;
    float *H = random_hessian(&rng, 4096, cols, -1);
    float *W = random_floats(&rng, (size_t)expert_rows * cols, 0.05f);
    moeq_cuda_buf dH = to_device(H, sizeof(float) * (size_t)cols * cols), dW;
    must(moeq_cuda_alloc(&ctx, &dW, sizeof(float) * (size_t)rows * cols, "expert weights", &err),
         &err);
    fill_repeating(&dW, W, sizeof(float) * (size_t)expert_rows * cols);
    moeq_cuda_gptq_prepared dprep = {0};
    moeq_cuda_quantized dq = {0};
    size_t peak_before = ctx.peak_bytes;
    double t0 = now_seconds();
    must(moeq_cuda_gptq_prepare(&ctx, dH.ptr, cols, &cfg, &dprep, &err), &err);
    double t_prep = now_seconds() - t0;
    t0 = now_seconds();
    double loss = 0;
    must(moeq_cuda_gptq_sweep(&ctx, &dprep, &cfg, dW.ptr, rows, &dq, &loss, NULL, &err), &err);
    double t_sweep = now_seconds() - t0;
    printf("     TIMING gptq prepare %d: %.2f ms; sweep %d rows x %d cols (%d experts x %d): "
           "%.2f ms (%.1f Mweights/s); device peak %.2f GiB (was %.2f)\n",
           cols, t_prep * 1e3, rows, cols, experts, expert_rows, t_sweep * 1e3,
           (double)rows * cols / t_sweep / 1e6, (double)ctx.peak_bytes / (1 << 30),
           (double)peak_before / (1 << 30));
    moeq_gptq_prepared hprep = {0};
    moeq_quantized qc = {0}, qg = {0};
    download_prepared(&dprep, &hprep);
    double loss_cpu = 0;
    CHECK_INT_EQ(moeq_gptq_sweep(&hprep, &cfg, W, expert_rows, &qc, &loss_cpu, &err), MOEQ_OK);
    must(moeq_cuda_quantized_download(&ctx, &dq, &qg, &err), &err);
    sweep_stats s = {0};
    compare_quantized(&qg, &qc, hprep.perm, cfg.block_size, expert_rows, &s);
    size_t same_last = 0; /* the last expert's rows hold the same weights */
    for (size_t k = 0; k < (size_t)expert_rows * cols; k++)
        same_last += qg.codes[(size_t)(rows - expert_rows) * cols + k] == qc.codes[k];
    printf("     expert 0 vs CPU: identical codes %.5f, grids %.5f, first-block diffs %zu; "
           "expert 127 vs CPU: identical codes %.5f\n",
           (double)s.same_codes / (double)s.codes, (double)s.same_grids / (double)s.grids,
           s.first_block_diff, (double)same_last / (double)s.codes);
    /* With the clipping search the warp sums each candidate's error in
     * another order than grid.c, so a candidate within rounding of the best
     * may win on one side only: a few first-block grids may differ. */
    CHECK(s.first_block_diff <= (cfg.mse > 0 ? (size_t)rows * cfg.block_size / 1000 : 0));
    CHECK((double)s.same_codes / (double)s.codes >= 0.98);
    moeq_quantized_free(&qc);
    moeq_quantized_free(&qg);
    moeq_gptq_prepared_free(&hprep);
    moeq_cuda_quantized_free(&ctx, &dq);
    moeq_cuda_gptq_prepared_free(&ctx, &dprep);
    moeq_cuda_free(&ctx, &dH);
    moeq_cuda_free(&ctx, &dW);
    free(H);
    free(W);
}

/* The delta rule at Qwen3.5-35B-A3B's shape on a batch of 16 windows of
 * 2048 tokens (what the stage runs under the default chunk of 32768
 * tokens): time only (the shape is checked against the CPU above). */
static void test_timing_delta_rule_16x2048_qwen3_5(void)
{
    const int seqs = 16, T = 2048, Hk = 16, Hv = 32, D = 128, tokens = seqs * T;
    const int C = 2 * Hk * D + Hv * D;
    moeq_error err = {0};
    test_rng rng = {99};
    float *q, *k, *v, *g, *beta;
    random_delta_inputs(&rng, T, Hk, Hv, D, D, &q, &k, &v, &g, &beta);
    float *packed = xmalloc(sizeof(float) * (size_t)T * C);
    for (size_t t = 0; t < (size_t)T; t++) {
        memcpy(packed + t * C, q + t * Hk * D, sizeof(float) * Hk * D);
        memcpy(packed + t * C + Hk * D, k + t * Hk * D, sizeof(float) * Hk * D);
        memcpy(packed + t * C + 2 * Hk * D, v + t * Hv * D, sizeof(float) * Hv * D);
    }
    moeq_cuda_buf dp, dg, db, dout;
    must(moeq_cuda_alloc(&ctx, &dp, sizeof(float) * (size_t)tokens * C, "qkv", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dg, sizeof(float) * (size_t)tokens * Hv, "g", &err), &err);
    must(moeq_cuda_alloc(&ctx, &db, sizeof(float) * (size_t)tokens * Hv, "beta", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dout, sizeof(float) * (size_t)tokens * Hv * D, "out", &err),
         &err);
    fill_repeating(&dp, packed, sizeof(float) * (size_t)T * C);
    fill_repeating(&dg, g, sizeof(float) * (size_t)T * Hv);
    fill_repeating(&db, beta, sizeof(float) * (size_t)T * Hv);
    const float *base = dp.ptr;
    moeq_k_delta_args a = {.q = base, .k = base + Hk * D, .v = base + 2 * Hk * D, .ld_qk = C,
                           .ld_v = C, .g = dg.ptr, .beta = db.ptr, .seqs = seqs, .T = T,
                           .Hk = Hk, .Hv = Hv, .Dk = D, .Dv = D, .out = dout.ptr};
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaSuccess); /* warm-up */
    must(moeq_cuda_sync(&ctx, &err), &err);
    double t0 = now_seconds();
    CHECK_INT_EQ(moeq_k_delta_rule(&a, ctx.stream), cudaSuccess);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double s = now_seconds() - t0;
    printf("     TIMING delta rule (recurrent) %d x %d tokens, %d/%d heads of %d: %.2f ms "
           "(%.1f GFLOP/s at 4 Dk Dv flops per token and head)\n",
           seqs, T, Hk, Hv, D, s * 1e3, 4.0 * tokens * Hv * D * D / s / 1e9);
    moeq_cuda_buf *bufs[] = {&dp, &dg, &db, &dout};
    for (int i = 0; i < 4; i++)
        moeq_cuda_free(&ctx, bufs[i]);
    float *host[] = {q, k, v, g, beta, packed};
    for (int i = 0; i < 6; i++)
        free(host[i]);
}

/* AWQ's kernels at a real expert's shape (hidden 4096, intermediate 1536,
 * group 128): one candidate's fake quantization of gate/up, and the
 * clipping search of 256 rows of 4096 columns (a linear's time scales with
 * its rows). */
static void test_timing_awq_4096x1536(void)
{
    const int H = 4096, I = 1536, R = 256;
    moeq_error err = {0};
    moeq_gptq_config c = moeq_gptq_default_config();
    const moeq_k_awq_grid kq = awq_grid(&c);
    test_rng rng = {99};
    float pattern[4096];
    for (int i = 0; i < 4096; i++)
        pattern[i] = 0.02f * test_rng_uniform(&rng);
    moeq_cuda_buf w, s, out, h, codes, scales, zeros, loss;
    must(moeq_cuda_alloc(&ctx, &w, sizeof(float) * 2 * (size_t)I * H, "w", &err), &err);
    must(moeq_cuda_alloc(&ctx, &s, sizeof(float) * H, "s", &err), &err);
    must(moeq_cuda_alloc(&ctx, &out, 2 * 2 * (size_t)I * H, "out", &err), &err);
    must(moeq_cuda_alloc(&ctx, &h, sizeof(float) * (size_t)H * H, "H", &err), &err);
    must(moeq_cuda_alloc(&ctx, &codes, (size_t)I * H, "codes", &err), &err);
    must(moeq_cuda_alloc(&ctx, &scales, sizeof(float) * (size_t)I * H / 128, "scales", &err), &err);
    must(moeq_cuda_alloc(&ctx, &zeros, sizeof(int32_t) * (size_t)I * H / 128, "zeros", &err), &err);
    must(moeq_cuda_alloc(&ctx, &loss, sizeof(double) * I, "loss", &err), &err);
    fill_repeating(&w, pattern, sizeof pattern);
    fill_repeating(&h, pattern, sizeof pattern);
    for (int i = 0; i < 4096; i++)
        pattern[i] = 1.0f + 0.5f * test_rng_uniform(&rng);
    fill_repeating(&s, pattern, sizeof pattern);
    double t0 = now_seconds();
    for (int rep = 0; rep < 10; rep++)
        must(moeq_cuda_check(moeq_k_awq_fake_quant(w.ptr, 0, 2 * I, H, s.ptr, &kq, out.ptr, 1,
                                                   ctx.stream),
                             "fake quant", __FILE__, __LINE__, &err),
             &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double fq = (now_seconds() - t0) / 10;
    t0 = now_seconds();
    must(moeq_cuda_check(moeq_k_awq_clip_quantize(w.ptr, R, H, h.ptr, &kq, codes.ptr, scales.ptr,
                                                  zeros.ptr, R, loss.ptr, ctx.stream),
                         "clip quantize", __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_sync(&ctx, &err), &err);
    double cq = now_seconds() - t0;
    printf("     timing: AWQ fake quantization of gate/up [%d, %d] %.3f ms (%.0f GB/s read); "
           "clipping search of [%d, %d], 80 candidates per group: %.1f ms\n",
           2 * I, H, 1e3 * fq, 4.0 * 2 * I * H / fq / 1e9, R, H, 1e3 * cq);
    moeq_cuda_buf *bufs[] = {&w, &s, &out, &h, &codes, &scales, &zeros, &loss};
    for (int i = 0; i < 8; i++)
        moeq_cuda_free(&ctx, bufs[i]);
}

int main(void)
{
    moeq_error err = {0};
    if (moeq_cuda_init(&ctx, 0, &err)) {
        fprintf(stderr, "no CUDA device: %s\n", err.msg);
        return 2;
    }
    printf("device: %s, %d SMs\n", ctx.device_name, ctx.sm_count);
    RUN(test_hessian_fp32_matches_cpu);
    RUN(test_hessian_bf16_matches_cpu);
    RUN(test_hessian_weighted_fp32_matches_cpu);
    RUN(test_hessian_weighted_bf16_matches_cpu);
    RUN(test_hessian_weighted_rejects_negative_weight_and_keeps_h);
    RUN(test_gptq_prepare_matches_cpu);
    RUN(test_gptq_prepare_raises_damping_as_cpu);
    RUN(test_gptq_prepare_rejects_nonfinite_hessian);
    RUN(test_gptq_prepare_many_matches_single);
    RUN(test_gptq_sweep_matches_cpu_4bit_g128_sym);
    RUN(test_gptq_sweep_matches_cpu_4bit_g128_asym_act_order);
    RUN(test_gptq_sweep_matches_cpu_3bit_g32_static_groups);
    RUN(test_gptq_sweep_matches_cpu_8bit_per_row);
    RUN(test_gptq_sweep_matches_cpu_2bit_g256_spanning_blocks);
    RUN(test_gptq_sweep_matches_cpu_block_96_g64);
    RUN(test_gptq_sweep_matches_cpu_4bit_g128_sym_clipping_search);
    RUN(test_gptq_sweep_matches_cpu_3bit_asym_static_clipping_search);
    RUN(test_gptq_sweep_matches_cpu_per_row_clipping_search_norm_2);
    RUN(test_gptq_sweep_matches_cpu_4bit_g128_asym_act_order_bf16_scales);
    RUN(test_gptq_sweep_matches_cpu_4bit_g32_sym_static_clipping_search_bf16_scales);
    RUN(test_gptq_segmented_sweep_matches_separate_cpu_sweeps);
    RUN(test_gptq_sweep_rejects_blocks_over_128);
    RUN(test_gptq_gpu_pipeline_matches_cpu);
    RUN(test_rmsnorm_matches_cpu);
    RUN(test_l2_norm_without_weight_matches_cpu);
    RUN(test_rmsnorm_over_whole_projection_matches_cpu);
    RUN(test_silu_mul_matches_cpu);
    RUN(test_rope_matches_cpu);
    RUN(test_attention_matches_cpu);
    RUN(test_attention_sliding_window_matches_cpu);
    RUN(test_attention_sinks_match_cpu);
    RUN(test_attention_with_v_head_dim_of_mla_matches_cpu);
    RUN(test_rope_on_the_rope_part_of_mla_heads_matches_cpu);
    RUN(test_mla_split_kv_is_exact);
    RUN(test_attention_chunked_matches_cpu);
    RUN(test_attention_temperature_matches_cpu);
    RUN(test_swiglu_matches_cpu);
    RUN(test_swiglu_clamped_matches_cpu);
    RUN(test_router_topk_matches_cpu);
    RUN(test_router_softmax_group_limited_matches_cpu);
    RUN(test_router_sigmoid_grouped_matches_cpu);
    RUN(test_router_sigmoid_ungrouped_matches_cpu);
    RUN(test_router_llama4_matches_cpu);
    RUN(test_router_rejects_bad_groups);
    RUN(test_dequant_gather_scatter_exact);
    RUN(test_output_gate_matches_cpu);
    RUN(test_delta_rule_matches_cpu_recurrent_and_chunked);
    RUN(test_delta_rule_rejects_heads_it_cannot_hold);
    RUN(test_deltanet_core_matches_cpu);
    RUN(test_memory_accounting_tracks_in_use_and_peak);
    RUN(test_awq_fake_quant_bit_exact);
    RUN(test_awq_clip_quantize_matches_cpu);
    RUN(test_awq_statistics_match_cpu);
    RUN(test_timing_hessian_bf16_262144x2048);
    RUN(test_timing_gptq_2048x768x128_experts);
    RUN(test_timing_delta_rule_16x2048_qwen3_5);
    RUN(test_timing_awq_4096x1536);
    printf("device bytes in use at exit %zu, peak %zu\n", ctx.bytes_in_use, ctx.peak_bytes);
    moeq_cuda_free_ctx(&ctx);
    return test_summary();
}
