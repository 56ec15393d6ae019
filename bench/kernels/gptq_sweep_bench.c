/* gptq_sweep_bench.c: times the CUDA GPTQ sweep (kernels/gptq_sweep.cu with
 * its cuBLAS lazy updates, through moeq_cuda_gptq_sweep) at the shapes a MoE
 * layer gives it, for the settings that change its cost (bits, group size,
 * the clipping search's norm).
 *
 *     bench_gptq_sweep ROWS COLS [MSE_NORM [BITS [GROUP [SEGMENTS [REPS]]]]]
 *
 * ROWS x COLS weights (random, 0.05 scale) against a random positive
 * definite Hessian (4 COLS random tokens); SEGMENTS > 1 splits the rows into
 * that many segments, each with its own copy of the factor, as the
 * down_proj sweep of an expert group runs. Prints the best of REPS runs
 * (default 3) after one warm-up, in ms and weights per second. */
#include "backend/cuda/cuda_ctx.h"
#include "backend/cuda/cuda_gptq.h"
#include "backend/cuda/cuda_hessian.h"
#include "quant/gptq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void must(moeq_code rc, const moeq_error *err)
{
    if (rc) {
        fprintf(stderr, "bench_gptq_sweep: %s\n", err->msg);
        exit(1);
    }
}

/* bf16 bits of a float (round to nearest even). */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static float uniform(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_gptq_sweep ROWS COLS [MSE_NORM [BITS [GROUP [SEGMENTS "
                        "[REPS]]]]]\n");
        return 2;
    }
    const int rows = atoi(argv[1]), cols = atoi(argv[2]);
    moeq_gptq_config cfg = moeq_gptq_default_config();
    if (argc > 3)
        cfg.mse = atof(argv[3]);
    if (argc > 4)
        cfg.bits = atoi(argv[4]);
    if (argc > 5)
        cfg.group_size = atoi(argv[5]);
    const int segments = argc > 6 ? atoi(argv[6]) : 1, reps = argc > 7 ? atoi(argv[7]) : 3;
    if (rows <= 0 || cols <= 0 || segments < 1 || rows % segments || reps < 1) {
        fprintf(stderr, "bench_gptq_sweep: bad arguments\n");
        return 2;
    }
    moeq_error err = {0};
    moeq_cuda_ctx ctx;
    must(moeq_cuda_init(&ctx, 0, &err), &err);
    const int tokens = 4 * cols;
    uint64_t seed = 1;
    uint16_t *x = malloc(sizeof(uint16_t) * (size_t)tokens * cols);
    float *w = malloc(sizeof(float) * (size_t)cols * 1024);
    if (!x || !w)
        return 1;
    for (size_t i = 0; i < (size_t)tokens * cols; i++)
        x[i] = to_bf16(uniform(&seed));
    for (size_t i = 0; i < (size_t)cols * 1024; i++)
        w[i] = 0.05f * uniform(&seed);
    moeq_cuda_buf dx, dH, dW;
    must(moeq_cuda_alloc(&ctx, &dx, sizeof(uint16_t) * (size_t)tokens * cols, "tokens", &err),
         &err);
    must(moeq_cuda_alloc(&ctx, &dH, sizeof(float) * (size_t)cols * cols, "Hessian", &err), &err);
    must(moeq_cuda_alloc(&ctx, &dW, sizeof(float) * (size_t)rows * cols, "weights", &err), &err);
    must(moeq_cuda_upload(&ctx, dx.ptr, x, dx.bytes, &err), &err);
    for (size_t off = 0; off < dW.bytes; off += sizeof(float) * (size_t)cols * 1024) {
        size_t nb = sizeof(float) * (size_t)cols * 1024;
        must(moeq_cuda_upload(&ctx, (char *)dW.ptr + off, w, dW.bytes - off < nb ? dW.bytes - off : nb,
                              &err),
             &err);
    }
    must(moeq_cuda_check(cudaMemsetAsync(dH.ptr, 0, dH.bytes, ctx.stream), "cudaMemsetAsync",
                         __FILE__, __LINE__, &err),
         &err);
    must(moeq_cuda_hessian_accumulate(&ctx, dH.ptr, dx.ptr, MOEQ_CUDA_BF16, tokens, cols,
                                      2.0f / (float)tokens, &err),
         &err);
    moeq_cuda_gptq_prepared prep;
    must(moeq_cuda_gptq_prepare(&ctx, dH.ptr, cols, &cfg, &prep, &err), &err);
    const moeq_cuda_gptq_prepared **preps = malloc(sizeof *preps * (size_t)segments);
    for (int s = 0; s < segments; s++)
        preps[s] = &prep;
    double best = 1e30;
    for (int k = 0; k <= reps; k++) {
        moeq_cuda_quantized q;
        double t = now_seconds();
        if (segments > 1)
            must(moeq_cuda_gptq_sweep_segments(&ctx, preps, segments, &cfg, dW.ptr,
                                               rows / segments, &q, NULL, &err),
                 &err);
        else
            must(moeq_cuda_gptq_sweep(&ctx, &prep, &cfg, dW.ptr, rows, &q, NULL, NULL, &err),
                 &err);
        must(moeq_cuda_sync(&ctx, &err), &err);
        t = now_seconds() - t;
        if (k > 0 && t < best) /* k 0 warms up */
            best = t;
        moeq_cuda_quantized_free(&ctx, &q);
    }
    printf("gptq sweep %d x %d, %d segment(s), %d-bit g%d mse %.2g: %.2f ms, %.0f M weights/s\n",
           rows, cols, segments, cfg.bits, cfg.group_size, cfg.mse, best * 1e3,
           (double)rows * cols / best / 1e6);
    moeq_cuda_gptq_prepared_free(&ctx, &prep);
    moeq_cuda_free(&ctx, &dx);
    moeq_cuda_free(&ctx, &dH);
    moeq_cuda_free(&ctx, &dW);
    moeq_cuda_free_ctx(&ctx);
    free(preps);
    free(x);
    free(w);
    return 0;
}
